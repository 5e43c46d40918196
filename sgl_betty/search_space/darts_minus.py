"""DARTS- (Chu et al., ICLR 2021): what differs from the DARTS search space.

Every edge gets an auxiliary skip connection added to its mixed op, outside the softmax and
weighted by a coefficient beta that decays from 1 to 0 over the search. The skip carries the
residual path that would otherwise make ``skip_connect`` win the architecture weights unfairly;
once beta reaches 0 the network is DARTS's again. The auxiliary skip has no architecture
parameter, so it can never appear in a genotype: the architecture is DARTS's ``Architecture``.

Reference: Meituan-AutoML/DARTS-, ``src/search/model_search.py`` (``MixedOp``) and
``src/utils.py`` (``DecayScheduler``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.search_space.darts import Cell, MixedOp, SearchNetwork
from sgl_betty.search_space.ops import FactorizedReduce
from sgl_betty.search_space.scheduled import register_scalar, set_scalars

AUXILIARY_SKIP_DECAYS: tuple[str, ...] = ("linear", "cosine")


def auxiliary_skip_weight(progress: float, decay: str = "linear") -> float:
    """Beta at ``progress`` in [0, 1] of the search: ``1 - progress`` (linear) or
    ``(1 + cos(pi * progress)) / 2`` (cosine); 1 at the start, 0 at the end."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"search progress must be in [0, 1], got {progress}")
    if decay == "linear":
        return 1.0 - progress
    if decay == "cosine":
        return (1.0 + math.cos(math.pi * progress)) / 2.0
    raise ValueError(
        f"unknown auxiliary skip decay {decay!r}; choose one of: {', '.join(AUXILIARY_SKIP_DECAYS)}"
    )


class AuxiliarySkipMixedOp(MixedOp):
    """A DARTS mixed op plus ``auxiliary_skip_weight * skip(x)``."""

    def __init__(self, channels: int, stride: int, primitives: Sequence[str] = PRIMITIVES):
        super().__init__(channels, stride, primitives)
        # A module of its own, not the candidate skip_connect: the architecture weights must not
        # see (or share parameters with) the auxiliary path.
        if stride == 1:
            self.auxiliary_skip: nn.Module = nn.Identity()
        else:
            self.auxiliary_skip = FactorizedReduce(channels, channels, affine=False)
        # Beta changes every step: a buffer, so that a compiled network reads it as an input.
        register_scalar(self, "beta", 1.0)
        self._beta = 1.0

    @property
    def auxiliary_skip_weight(self) -> float:
        return self._beta

    @auxiliary_skip_weight.setter
    def auxiliary_skip_weight(self, beta: float) -> None:
        set_scalars([self.beta], beta)
        self.note_beta(beta)

    def note_beta(self, beta: float) -> None:
        """Record a beta written into the buffer by someone else (``set_scalars`` over many)."""
        self._beta = float(beta)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return super().forward(x, weights) + self.beta * self.auxiliary_skip(x)


class DartsMinusCell(Cell):
    mixed_op_cls = AuxiliarySkipMixedOp


class DartsMinusSearchNetwork(SearchNetwork):
    """The DARTS search network with an auxiliary skip on every edge. ``set_search_progress``
    (called before every search step) sets beta from the decay schedule."""

    cell_cls = DartsMinusCell

    def __init__(self, *args: Any, auxiliary_skip_decay: str = "linear", **kwargs: Any):
        auxiliary_skip_weight(0.0, auxiliary_skip_decay)  # rejects an unknown decay up front
        super().__init__(*args, **kwargs)
        self.auxiliary_skip_decay = auxiliary_skip_decay

    def auxiliary_ops(self) -> list[AuxiliarySkipMixedOp]:
        return [module for module in self.modules() if isinstance(module, AuxiliarySkipMixedOp)]

    @property
    def auxiliary_skip_weight(self) -> float:
        return self.auxiliary_ops()[0].auxiliary_skip_weight

    def set_auxiliary_skip_weight(self, beta: float) -> None:
        """Beta on every edge (a buffer each, set on the device in one kernel)."""
        ops = self.auxiliary_ops()
        set_scalars([op.beta for op in ops], beta)
        for op in ops:
            op.note_beta(beta)

    def set_search_progress(self, progress: float) -> None:
        self.set_auxiliary_skip_weight(auxiliary_skip_weight(progress, self.auxiliary_skip_decay))
