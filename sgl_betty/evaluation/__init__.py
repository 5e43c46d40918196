"""Training a searched cell from scratch: the evaluation networks."""

from sgl_betty.evaluation.networks import (
    AuxiliaryHeadCIFAR,
    AuxiliaryHeadImageNet,
    EvalCell,
    NetworkCIFAR,
    NetworkImageNet,
    drop_path,
)

__all__ = [
    "AuxiliaryHeadCIFAR",
    "AuxiliaryHeadImageNet",
    "EvalCell",
    "NetworkCIFAR",
    "NetworkImageNet",
    "drop_path",
]
