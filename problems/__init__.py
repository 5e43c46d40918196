"""The three stages of a learner as Betty problems: V (Eq. 1), W (Eq. 2), architecture (Eq. 3)."""

from .arch_stage import ArchStage
from .base import SGLStage
from .non_finite import NonFiniteError, NonFiniteWatch
from .v_stage import VStage
from .w_stage import Peer, WStage

__all__ = [
    "ArchStage",
    "NonFiniteError",
    "NonFiniteWatch",
    "Peer",
    "SGLStage",
    "VStage",
    "WStage",
]
