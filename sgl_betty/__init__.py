"""sgl-betty: small-group learning (SGL) for differentiable NAS as a Betty multilevel graph."""

from .config import HypergradConfig, SGLConfig
from .learner import Learner
from .params import count_parameters_m

__all__ = ["HypergradConfig", "Learner", "SGLConfig", "build_sgl_engine", "count_parameters_m"]
__version__ = "0.1.0"


def __getattr__(name):
    # The engine imports Betty and the problems; load it on first use, not on `import sgl_betty`.
    if name == "build_sgl_engine":
        from sgl_betty.engine import build_sgl_engine

        return build_sgl_engine
    raise AttributeError(f"module 'sgl_betty' has no attribute {name!r}")
