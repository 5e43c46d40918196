"""Orchestration of SGL: the Betty graph of 3K problems, its engine and solvers."""

from .batches import SharedBatches
from .build import build_sgl_engine
from .sgl_engine import SGLEngine
from .solvers import CONJUGATE_GRADIENT, register_solvers, solve_cg

__all__ = [
    "CONJUGATE_GRADIENT",
    "SGLEngine",
    "SharedBatches",
    "build_sgl_engine",
    "register_solvers",
    "solve_cg",
]
