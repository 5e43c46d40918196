"""What the recipes in benchmarks/ are made of: run configuration, search methods, the search run."""

from .config import ConfigError, RunConfig, load_config
from .methods import SEARCH_METHODS, build_learners, register_method

__all__ = [
    "SEARCH_METHODS",
    "ConfigError",
    "RunConfig",
    "build_learners",
    "load_config",
    "register_method",
]
