"""The DARTS search space: mixed ops, search cells, the search network, its architecture.

The architecture parameters live in ``Architecture``, outside the network, because in SGL two
networks (V_k and W_k) share one architecture A_k: the network is called as
``net(x, arch_weights)`` with ``arch_weights = architecture()``.

Variants (PC-DARTS, DARTS-, P-DARTS) extend this by overriding what differs: the op list
(``primitives=``), ``MixedOp.build_op``, ``Cell.mixed_op_cls`` / ``Cell.edge_forward``,
``SearchNetwork.cell_cls`` / ``SearchNetwork.cell_weights``, and ``Architecture.forward``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sgl_betty.genotypes import PRIMITIVES, Genotype, derive_genotype, num_edges
from sgl_betty.search_space.ops import OPS, FactorizedReduce, ReLUConvBN, Zero
from sgl_betty.search_space.second_order_conv import use_second_order_convolutions


class ArchWeights(NamedTuple):
    """Raw (pre-softmax) architecture parameters of the normal and the reduction cell."""

    normal: torch.Tensor
    reduce: torch.Tensor


def reduction_indices(layers: int) -> tuple[int, int]:
    """The cells that halve the resolution and double the channels, as in DARTS."""
    return layers // 3, 2 * layers // 3


class MixedOp(nn.Module):
    """One edge of the search cell: the softmax-weighted sum of every candidate op."""

    def __init__(self, channels: int, stride: int, primitives: Sequence[str] = PRIMITIVES):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleList(self.build_op(name, channels, stride) for name in self.primitives)
        # `none` adds weight * 0 to the sum: it is not computed (nor its zeros stored for the
        # backward). Its weight still normalises the others' through the softmax, so its
        # architecture parameter keeps its gradient. An edge of `none` only keeps it.
        computed = [i for i, op in enumerate(self.ops) if not isinstance(op, Zero)]
        self.computed_ops = tuple(computed or range(len(self.ops)))

    def build_op(self, name: str, channels: int, stride: int) -> nn.Module:
        op = OPS[name](channels, stride, False)
        if "pool" in name:
            # Pooling outputs are not normalised like the conv ops' outputs; a parameter-free BN
            # puts them on the same scale so that the architecture weights compare like with like.
            op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
        return op

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if len(weights) != len(self.ops):
            raise ValueError(f"{len(weights)} op weights for an edge of {len(self.ops)} ops")
        weights = weights.unbind(0)
        return sum(weights[i] * self.ops[i](x) for i in self.computed_ops)


class Cell(nn.Module):
    """A DARTS search cell: two preprocessed inputs, ``steps`` nodes, every earlier state feeds
    every node through a ``MixedOp``; the output concatenates the last ``multiplier`` nodes."""

    mixed_op_cls: type[MixedOp] = MixedOp

    def __init__(
        self,
        steps: int,
        multiplier: int,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[str] = PRIMITIVES,
    ):
        super().__init__()
        self.steps = steps
        self.multiplier = multiplier
        self.reduction = reduction
        if reduction_prev:
            # The cell two back has twice this cell's input resolution.
            self.preprocess0 = FactorizedReduce(prev_prev_channels, channels, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(prev_prev_channels, channels, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(prev_channels, channels, 1, 1, 0, affine=False)

        self.edges = nn.ModuleList()
        for node in range(steps):
            for source in range(2 + node):
                stride = 2 if reduction and source < 2 else 1
                self.edges.append(self.build_edge(channels, stride, primitives))

    def build_edge(self, channels: int, stride: int, primitives: Sequence[str]) -> nn.Module:
        return self.mixed_op_cls(channels, stride, primitives)

    def edge_forward(self, edge: int, x: torch.Tensor, weights: Any) -> torch.Tensor:
        return self.edges[edge](x, weights[edge])

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Any) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        first_edge = 0
        for _ in range(self.steps):
            node = sum(
                self.edge_forward(first_edge + source, state, weights)
                for source, state in enumerate(states)
            )
            first_edge += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


class SearchNetwork(nn.Module):
    """The DARTS search network (reference: DARTS ``model_search.Network``), minus the
    architecture parameters, which are passed to ``forward``."""

    cell_cls: type[Cell] = Cell

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        *,
        primitives: Sequence[str] = PRIMITIVES,
    ):
        super().__init__()
        self.C = C
        self.num_classes = num_classes
        self.layers = layers
        self.steps = steps
        self.multiplier = multiplier
        self.primitives = tuple(primitives)

        stem_channels = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
        )
        prev_prev_channels, prev_channels, channels = stem_channels, stem_channels, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for index in range(layers):
            reduction = index in reduction_indices(layers)
            if reduction:
                channels *= 2
            self.cells.append(
                self.build_cell(
                    prev_prev_channels, prev_channels, channels, reduction, reduction_prev
                )
            )
            reduction_prev = reduction
            prev_prev_channels, prev_channels = prev_channels, multiplier * channels
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev_channels, num_classes)
        # Hypergradients differentiate the convolutions' backward (second_order_conv.py).
        use_second_order_convolutions(self)

    def build_cell(
        self,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> nn.Module:
        return self.cell_cls(
            self.steps,
            self.multiplier,
            prev_prev_channels,
            prev_channels,
            channels,
            reduction,
            reduction_prev,
            self.cell_primitives(reduction),
            **self.cell_options(),
        )

    def cell_primitives(self, reduction: bool):
        """The candidate ops of a cell's edges (variants with per-edge op subsets override)."""
        return self.primitives

    def cell_options(self) -> dict[str, Any]:
        """Extra constructor arguments of ``cell_cls`` (e.g. PC-DARTS's partial channels)."""
        return {}

    def cell_weights(self, arch_weights: Any) -> tuple[Any, Any]:
        """What the normal and the reduction cells receive: softmax over each edge's ops."""
        alpha_normal, alpha_reduce = split_arch_weights(arch_weights)
        expected = (num_edges(self.steps), len(self.primitives))
        for name, alpha in (("normal", alpha_normal), ("reduce", alpha_reduce)):
            if tuple(alpha.shape) != expected:
                raise ValueError(
                    f"architecture weights for the {name} cell have shape {tuple(alpha.shape)}; "
                    f"this network needs {expected} (steps={self.steps}, "
                    f"{len(self.primitives)} ops): build Architecture(steps={self.steps}, "
                    f"primitives=...) with the network's primitives"
                )
        return F.softmax(alpha_normal, dim=-1), F.softmax(alpha_reduce, dim=-1)

    def forward(self, x: torch.Tensor, arch_weights: Any) -> torch.Tensor:
        weights_normal, weights_reduce = self.cell_weights(arch_weights)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, weights_reduce if cell.reduction else weights_normal)
        return self.classifier(self.global_pooling(s1).flatten(1))


def split_arch_weights(arch_weights: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(alpha_normal, alpha_reduce)`` from an ``ArchWeights``, a pair, or a dict with keys
    ``normal`` and ``reduce``."""
    if isinstance(arch_weights, Mapping):
        return arch_weights["normal"], arch_weights["reduce"]
    if isinstance(arch_weights, torch.Tensor) or len(arch_weights) < 2:
        raise TypeError(
            "arch_weights must be what Architecture() returns: (alpha_normal, alpha_reduce), "
            f"got {type(arch_weights).__name__}"
        )
    return arch_weights[0], arch_weights[1]


class Architecture(nn.Module):
    """The architecture parameters A of one learner: an alpha table per cell type, one row per
    edge, one column per candidate op. ``forward()`` returns them raw; the network applies the
    softmax."""

    def __init__(
        self,
        steps: int = 4,
        num_ops: int | None = None,
        *,
        multiplier: int = 4,
        primitives: Sequence[str] = PRIMITIVES,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.steps = steps
        self.multiplier = multiplier
        self.primitives = tuple(primitives)
        if num_ops is not None and num_ops != len(self.primitives):
            raise ValueError(
                f"num_ops={num_ops} but primitives has {len(self.primitives)} ops; pass "
                "primitives= with the op names of this search space"
            )
        shape = (num_edges(steps), len(self.primitives))
        self.alpha_normal = nn.Parameter(init_scale * torch.randn(shape))
        self.alpha_reduce = nn.Parameter(init_scale * torch.randn(shape))

    def forward(self) -> ArchWeights:
        return ArchWeights(self.alpha_normal, self.alpha_reduce)

    @torch.no_grad()
    def genotype(self) -> Genotype:
        return derive_genotype(
            F.softmax(self.alpha_normal, dim=-1),
            F.softmax(self.alpha_reduce, dim=-1),
            steps=self.steps,
            multiplier=self.multiplier,
            primitives=self.primitives,
        )
