"""Orchestration of SGL: the Betty graph of 3K problems, its engine and solvers."""

from .batches import SharedBatches
from .build import SGLStages, build_sgl_engine, build_sgl_problems, engine_from_problems
from .sgl_engine import SGLEngine
from .solvers import CONJUGATE_GRADIENT, register_solvers, solve_cg

__all__ = [
    "CONJUGATE_GRADIENT",
    "SGLEngine",
    "SGLStages",
    "SharedBatches",
    "build_sgl_engine",
    "build_sgl_problems",
    "engine_from_problems",
    "register_solvers",
    "solve_cg",
]
