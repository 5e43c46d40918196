"""PC-DARTS (Xu et al., ICLR 2020): what differs from the DARTS search space.

- Partial channel connections: an edge runs its candidate ops on the first 1/K of its input
  channels only; the other channels bypass the ops (max-pooled on reduction edges, to match the
  ops' stride), and a channel shuffle with K groups mixes the two parts so that the next edge
  sees different channels through its ops.
- Edge normalization: every edge also has an architecture parameter beta; each node softmaxes
  the betas of its incoming edges and scales each edge's output by its normalized beta.
- Genotype: edges are ranked, and ops chosen, on softmax(alpha) * normalized beta.

Reference: yuhuixu1993/PC-DARTS, ``model_search.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from sgl_betty.genotypes import PRIMITIVES, Genotype, derive_genotype, num_edges
from sgl_betty.search_space.darts import Architecture, Cell, MixedOp, SearchNetwork


class PCDartsArchWeights(NamedTuple):
    """Raw architecture parameters: op weights (edges x ops) and edge weights (edges,) per cell
    type. The first two fields are DARTS's ``ArchWeights``, so DARTS helpers still apply."""

    alpha_normal: torch.Tensor
    alpha_reduce: torch.Tensor
    beta_normal: torch.Tensor
    beta_reduce: torch.Tensor


class PCDartsCellWeights(NamedTuple):
    """What one cell receives: softmaxed op weights and node-normalized edge weights."""

    ops: torch.Tensor
    edges: torch.Tensor


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleaves ``groups`` equal channel blocks: channel ``g * n + i`` moves to ``i * groups + g``
    (ShuffleNet's shuffle, as PC-DARTS applies it)."""
    return rearrange(x, "b (g c) h w -> b (c g) h w", g=groups)


def normalize_edge_weights(betas: torch.Tensor, steps: int) -> torch.Tensor:
    """Softmax of the edge parameters over each node's incoming edges (node i has 2 + i), in cell
    edge order."""
    if tuple(betas.shape) != (num_edges(steps),):
        raise ValueError(
            f"edge weights have shape {tuple(betas.shape)}; a cell with {steps} nodes needs "
            f"({num_edges(steps)},), one per edge"
        )
    sizes = [2 + node for node in range(steps)]
    return torch.cat([F.softmax(chunk, dim=-1) for chunk in betas.split(sizes)])


class PartialChannelMixedOp(MixedOp):
    """A DARTS mixed op on the first ``1/partial_channels`` of the input channels; the rest bypass
    it, and a channel shuffle merges both."""

    def __init__(
        self,
        channels: int,
        stride: int,
        primitives: Sequence[str] = PRIMITIVES,
        partial_channels: int = 4,
    ):
        if partial_channels < 1 or channels % partial_channels:
            raise ValueError(
                f"PC-DARTS splits an edge's {channels} channels into {partial_channels} parts; "
                "choose search.pc_partial_channels dividing every cell's channel count "
                "(init_channels, 2 * init_channels, 4 * init_channels)"
            )
        super().__init__(channels // partial_channels, stride, primitives)
        self.partial_channels = partial_channels
        # The bypassed channels must shrink like the ops' output on a reduction edge.
        self.bypass = nn.MaxPool2d(2, 2) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.partial_channels == 1:  # every channel goes through the ops: DARTS's mixed op
            return super().forward(x, weights)
        active = x.shape[1] // self.partial_channels
        through_ops = super().forward(x[:, :active], weights)
        bypassed = self.bypass(x[:, active:])
        return channel_shuffle(torch.cat([through_ops, bypassed], dim=1), self.partial_channels)


class PCDartsCell(Cell):
    """A DARTS cell whose edges are partial-channel mixed ops scaled by their edge weight."""

    mixed_op_cls = PartialChannelMixedOp

    def __init__(self, *args: Any, partial_channels: int = 4, **kwargs: Any):
        # Read by build_edge, which the base constructor calls.
        self.partial_channels = partial_channels
        super().__init__(*args, **kwargs)

    def build_edge(self, channels: int, stride: int, primitives: Sequence[str]) -> nn.Module:
        return self.mixed_op_cls(channels, stride, primitives, self.partial_channels)

    def edge_forward(self, edge: int, x: torch.Tensor, weights: PCDartsCellWeights) -> torch.Tensor:
        return weights.edges[edge] * self.edges[edge](x, weights.ops[edge])


class PCDartsSearchNetwork(SearchNetwork):
    """The PC-DARTS search network; called as ``net(x, PCDartsArchitecture()())``."""

    cell_cls = PCDartsCell

    def __init__(self, *args: Any, partial_channels: int = 4, **kwargs: Any):
        # Read by build_cell, which the base constructor calls.
        self.partial_channels = partial_channels
        super().__init__(*args, **kwargs)

    def cell_options(self) -> dict[str, Any]:
        return {"partial_channels": self.partial_channels}

    def cell_weights(self, arch_weights: Any) -> tuple[PCDartsCellWeights, PCDartsCellWeights]:
        if isinstance(arch_weights, torch.Tensor) or len(arch_weights) != 4:
            raise TypeError(
                "a PC-DARTS network needs (alpha_normal, alpha_reduce, beta_normal, beta_reduce), "
                "what PCDartsArchitecture() returns"
            )
        ops_normal, ops_reduce = super().cell_weights(arch_weights)
        return (
            PCDartsCellWeights(ops_normal, normalize_edge_weights(arch_weights[2], self.steps)),
            PCDartsCellWeights(ops_reduce, normalize_edge_weights(arch_weights[3], self.steps)),
        )


def pc_darts_genotype(
    alpha_normal: torch.Tensor,
    alpha_reduce: torch.Tensor,
    beta_normal: torch.Tensor,
    beta_reduce: torch.Tensor,
    *,
    steps: int = 4,
    multiplier: int = 4,
    primitives: Sequence[str] = PRIMITIVES,
) -> Genotype:
    """The PC-DARTS genotype from raw parameters: DARTS's rule applied to
    softmax(alpha) * normalized beta, so that an edge's beta weighs its ops when edges compete."""
    with torch.no_grad():
        weighted = [
            F.softmax(alpha, dim=-1) * normalize_edge_weights(beta, steps).unsqueeze(-1)
            for alpha, beta in ((alpha_normal, beta_normal), (alpha_reduce, beta_reduce))
        ]
    return derive_genotype(*weighted, steps=steps, multiplier=multiplier, primitives=primitives)


class PCDartsArchitecture(Architecture):
    """DARTS's alphas plus one edge-normalization parameter per edge and cell type (1e-3 * randn,
    as the reference)."""

    def __init__(
        self,
        steps: int = 4,
        num_ops: int | None = None,
        *,
        multiplier: int = 4,
        primitives: Sequence[str] = PRIMITIVES,
        init_scale: float = 1e-3,
    ):
        super().__init__(
            steps, num_ops, multiplier=multiplier, primitives=primitives, init_scale=init_scale
        )
        self.beta_normal = nn.Parameter(init_scale * torch.randn(num_edges(steps)))
        self.beta_reduce = nn.Parameter(init_scale * torch.randn(num_edges(steps)))

    def forward(self) -> PCDartsArchWeights:
        return PCDartsArchWeights(
            self.alpha_normal, self.alpha_reduce, self.beta_normal, self.beta_reduce
        )

    def genotype(self) -> Genotype:
        return pc_darts_genotype(
            *self(), steps=self.steps, multiplier=self.multiplier, primitives=self.primitives
        )

    @torch.no_grad()
    def normalized_weights(self) -> dict[str, torch.Tensor]:
        """Op weights softmaxed per edge, edge weights softmaxed per node (for logging)."""
        return {
            "alpha_normal": F.softmax(self.alpha_normal, dim=-1),
            "alpha_reduce": F.softmax(self.alpha_reduce, dim=-1),
            "beta_normal": normalize_edge_weights(self.beta_normal, self.steps),
            "beta_reduce": normalize_edge_weights(self.beta_reduce, self.steps),
        }
