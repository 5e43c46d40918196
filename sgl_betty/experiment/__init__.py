"""What the recipes in benchmarks/ are made of: run configuration, search methods, the search run."""

from . import p_darts_method  # noqa: F401  (registers p_darts)
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
