"""Search spaces for differentiable NAS: the DARTS cell space and its candidate ops."""

from sgl_betty.search_space.darts import (
    Architecture,
    ArchWeights,
    Cell,
    MixedOp,
    SearchNetwork,
    reduction_indices,
    split_arch_weights,
)
from sgl_betty.search_space.ops import OPS, UnknownOperationError, build_op

__all__ = [
    "OPS",
    "ArchWeights",
    "Architecture",
    "Cell",
    "MixedOp",
    "SearchNetwork",
    "UnknownOperationError",
    "build_op",
    "reduction_indices",
    "split_arch_weights",
]
