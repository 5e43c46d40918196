"""P-DARTS (Chen et al., ICCV 2019): what differs from the DARTS search space.

P-DARTS searches in stages of growing depth (5, 11, 17 cells) while shrinking every edge's
candidate ops (8, 5, 3), so each edge ends up with its own op subset; it puts a dropout after
``skip_connect`` whose rate decays within a stage, and it keeps at most two skip-connects in
the final normal cell. This module holds the pieces; the stage loop (new learners per stage)
lives with the search run (``sgl_betty.experiment.search``):

- ``PDartsSearchNetwork`` / ``PDartsArchitecture``: per-edge op subsets, settable skip dropout;
- ``drop_weakest_ops``: the op subsets of the next stage;
- ``skip_dropout_rate`` / ``SkipDropoutSchedule``: the dropout rate within a stage;
- ``limit_skip_connects``: the final normal cell with at most M skip-connects;
- ``PDartsPlan``: the stages (cells, ops kept, dropout, epochs).

Reference: chenxin061/pdarts, ``model_search.py`` and ``train_search.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sgl_betty.genotypes import PRIMITIVES, Genotype, derive_genotype, num_edges
from sgl_betty.search_space.darts import (
    ArchWeights,
    Cell,
    MixedOp,
    SearchNetwork,
    split_arch_weights,
)
from sgl_betty.search_space.ops import OPS
from sgl_betty.search_space.scheduled import ScheduledDropout, set_scalars

PerEdgePrimitives = tuple[tuple[str, ...], ...]


def full_op_set(steps: int, primitives: Sequence[str] = PRIMITIVES) -> PerEdgePrimitives:
    """Every edge with every candidate op: the op subsets of the first stage."""
    return tuple(tuple(primitives) for _ in range(num_edges(steps)))


def check_per_edge_primitives(per_edge: Sequence[Sequence[str]], steps: int) -> PerEdgePrimitives:
    """``per_edge`` as tuples, after checking it has one non-empty list of known ops per edge and
    the same number of ops on every edge (the architecture is one edges x ops table)."""
    per_edge = tuple(tuple(ops) for ops in per_edge)
    if len(per_edge) != num_edges(steps):
        raise ValueError(
            f"per-edge op lists: got {len(per_edge)}, a cell with {steps} nodes has "
            f"{num_edges(steps)} edges"
        )
    counts = {len(ops) for ops in per_edge}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(
            f"every edge needs the same, non-zero number of candidate ops; got {sorted(counts)}"
        )
    for edge, ops in enumerate(per_edge):
        for name in ops:
            OPS[name]  # raises UnknownOperationError naming the known ops
        if len(set(ops)) != len(ops):
            raise ValueError(f"edge {edge} lists an op twice: {ops}")
        if all(name == "none" for name in ops):
            raise ValueError(f"edge {edge} has no op other than 'none'; a genotype needs one")
    return per_edge


class SkipDropoutMixedOp(MixedOp):
    """A DARTS mixed op whose stride-1 ``skip_connect`` is followed by a dropout (rate 0 until
    set), as in P-DARTS; the strided skip (FactorizedReduce) has none, as in the reference."""

    def build_op(self, name: str, channels: int, stride: int) -> nn.Module:
        op = super().build_op(name, channels, stride)
        if name == "skip_connect" and stride == 1:
            op = nn.Sequential(op, ScheduledDropout(0.0))
        return op


class PDartsCell(Cell):
    """A DARTS cell whose edges each have their own candidate ops: ``primitives`` is one op list
    per edge, in cell edge order."""

    mixed_op_cls = SkipDropoutMixedOp

    def __init__(
        self,
        steps: int,
        multiplier: int,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        primitives: Sequence[Sequence[str]],
    ):
        self.edge_primitives = check_per_edge_primitives(primitives, steps)
        # The base constructor calls build_edge once per edge, in edge order.
        self._unbuilt_edges = iter(self.edge_primitives)
        super().__init__(
            steps,
            multiplier,
            prev_prev_channels,
            prev_channels,
            channels,
            reduction,
            reduction_prev,
            self.edge_primitives,
        )
        del self._unbuilt_edges

    def build_edge(self, channels: int, stride: int, primitives: Any) -> nn.Module:
        return self.mixed_op_cls(channels, stride, next(self._unbuilt_edges))


def skip_dropout_rate(
    initial_rate: float, epoch: int, epochs: int, arch_frozen_epochs: int, decay: float = 0.2
) -> float:
    """The rate of the dropout after skip_connect in ``epoch`` (0-based) of a stage, as the
    reference's ``train_search.py``: while the architecture is frozen it decays linearly,
    ``initial_rate * (epochs - epoch - 1) / epochs``; from the first architecture epoch on it
    restarts at ``initial_rate`` and decays as ``initial_rate * exp(-decay * (epoch -
    arch_frozen_epochs))``."""
    if epoch < arch_frozen_epochs:
        return initial_rate * (epochs - epoch - 1) / epochs
    return initial_rate * math.exp(-(epoch - arch_frozen_epochs) * decay)


@dataclass(frozen=True)
class SkipDropoutSchedule:
    """``skip_dropout_rate`` of one stage, by epoch or by progress through the stage."""

    initial_rate: float
    epochs: int
    arch_frozen_epochs: int
    decay: float = 0.2

    def rate_at_epoch(self, epoch: int) -> float:
        return skip_dropout_rate(
            self.initial_rate, epoch, self.epochs, self.arch_frozen_epochs, self.decay
        )

    def rate_at_progress(self, progress: float) -> float:
        """The rate during the epoch that ``progress`` (in [0, 1)) falls in: the reference sets the
        rate once per epoch."""
        # The epsilon keeps progress = epoch / epochs, computed as step / total_steps, in `epoch`.
        epoch = min(int(math.floor(progress * self.epochs + 1e-9)), self.epochs - 1)
        return self.rate_at_epoch(max(epoch, 0))


class PDartsSearchNetwork(SearchNetwork):
    """The DARTS search network with per-edge op subsets (one list per edge, for the normal and
    the reduction cells) and a dropout after skip_connect. Called as
    ``net(x, PDartsArchitecture(...)())``."""

    cell_cls = PDartsCell

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        steps: int = 4,
        multiplier: int = 4,
        stem_multiplier: int = 3,
        *,
        normal_primitives: Sequence[Sequence[str]] | None = None,
        reduce_primitives: Sequence[Sequence[str]] | None = None,
        skip_dropout_schedule: SkipDropoutSchedule | None = None,
        primitives: Sequence[str] = PRIMITIVES,
    ):
        # Read by build_cell, which the base constructor calls.
        self.normal_primitives = check_per_edge_primitives(
            normal_primitives or full_op_set(steps, primitives), steps
        )
        self.reduce_primitives = check_per_edge_primitives(
            reduce_primitives or full_op_set(steps, primitives), steps
        )
        super().__init__(
            C, num_classes, layers, steps, multiplier, stem_multiplier, primitives=primitives
        )
        self.skip_dropout_schedule = skip_dropout_schedule
        if skip_dropout_schedule is not None:
            self.set_skip_dropout(skip_dropout_schedule.rate_at_epoch(0))

    def cell_primitives(self, reduction: bool):
        return self.reduce_primitives if reduction else self.normal_primitives

    def cell_weights(self, arch_weights: Any) -> tuple[torch.Tensor, torch.Tensor]:
        alpha_normal, alpha_reduce = split_arch_weights(arch_weights)
        for name, alpha, per_edge in (
            ("normal", alpha_normal, self.normal_primitives),
            ("reduce", alpha_reduce, self.reduce_primitives),
        ):
            expected = (len(per_edge), len(per_edge[0]))
            if tuple(alpha.shape) != expected:
                raise ValueError(
                    f"architecture weights for the {name} cell have shape {tuple(alpha.shape)}; "
                    f"this network has {expected[1]} ops on each of its {expected[0]} edges: "
                    "build PDartsArchitecture with the network's per-edge op lists"
                )
        return F.softmax(alpha_normal, dim=-1), F.softmax(alpha_reduce, dim=-1)

    def skip_dropouts(self) -> list[ScheduledDropout]:
        return [module for module in self.modules() if isinstance(module, ScheduledDropout)]

    @property
    def skip_dropout(self) -> float:
        dropouts = self.skip_dropouts()
        return dropouts[0].p if dropouts else 0.0

    def set_skip_dropout(self, rate: float) -> None:
        """Every skip dropout's rate (a buffer each, set on the device: nothing recompiles)."""
        dropouts = self.skip_dropouts()
        for dropout in dropouts:
            dropout.note_rate(rate)
        set_scalars([dropout.rate for dropout in dropouts], rate)

    def set_search_progress(self, progress: float) -> None:
        """Sets the skip dropout for ``progress`` through the current stage (the step hook)."""
        if self.skip_dropout_schedule is not None:
            self.set_skip_dropout(self.skip_dropout_schedule.rate_at_progress(progress))


class OpDrop(NamedTuple):
    """Per-edge op lists after dropping: the ``kept`` ops (in their original order) and the
    ``dropped`` ones (weakest first)."""

    kept: PerEdgePrimitives
    dropped: PerEdgePrimitives


def drop_weakest_ops(
    weights: Any,
    per_edge_primitives: Sequence[Sequence[str]],
    keep: int,
    *,
    remove_none: bool = False,
) -> OpDrop:
    """Keeps the ``keep`` strongest ops of every edge, as P-DARTS does between stages.

    ``weights`` is the (edges x ops) table of one cell type, softmaxed or raw (the ranking within
    an edge is the same), columns in each edge's op order. Ties drop the earlier op first (the
    reference's argmin). With ``remove_none`` (the reference's last stage) ``none`` is dropped
    first whatever its weight, and the remaining drops go to the weakest other ops.
    """
    per_edge = tuple(tuple(ops) for ops in per_edge_primitives)
    table = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    if table.dim() != 2 or table.shape[0] != len(per_edge):
        raise ValueError(
            f"weights have shape {tuple(table.shape)}; expected one row per edge "
            f"({len(per_edge)} edges)"
        )
    kept, dropped = [], []
    for edge, (ops, row) in enumerate(zip(per_edge, table.tolist(), strict=True)):
        if len(row) != len(ops):
            raise ValueError(f"edge {edge} has {len(ops)} ops {ops} but {len(row)} weights")
        if not 1 <= keep <= len(ops):
            raise ValueError(f"keep={keep} ops per edge, but edge {edge} has {len(ops)} ops")
        to_drop = len(ops) - keep
        forced = [ops.index("none")] if remove_none and "none" in ops else []
        if len(forced) > to_drop:
            raise ValueError(f"remove_none needs keep < {len(ops)} (edge {edge} has {ops})")
        # sorted is stable: among equal weights the earlier op is dropped first.
        by_strength = sorted((k for k in range(len(ops)) if k not in forced), key=lambda k: row[k])
        drop = forced + by_strength[: to_drop - len(forced)]
        kept.append(tuple(name for k, name in enumerate(ops) if k not in drop))
        dropped.append(tuple(ops[k] for k in drop))
    return OpDrop(tuple(kept), tuple(dropped))


def dense_weights(
    weights: Any, per_edge_primitives: Sequence[Sequence[str]], primitives: Sequence[str]
) -> torch.Tensor:
    """The (edges x len(primitives)) table of per-edge weights; ops an edge does not have get
    -inf, so DARTS's genotype rule can never choose them."""
    table = torch.as_tensor(weights).detach().to("cpu", torch.float64)
    dense = torch.full((table.shape[0], len(primitives)), -math.inf, dtype=torch.float64)
    for edge, ops in enumerate(per_edge_primitives):
        for k, name in enumerate(ops):
            dense[edge, list(primitives).index(name)] = table[edge, k]
    return dense


def _cell_gene(table: torch.Tensor, steps: int, primitives: Sequence[str]) -> list[tuple[str, int]]:
    # derive_genotype derives both cells; this needs one.
    return derive_genotype(
        table, table, steps=steps, multiplier=steps, primitives=primitives
    ).normal


def _edge_row(position: int, source: int) -> int:
    """Row of the table for the ``position``-th gene entry (two per node) reading ``source``."""
    return num_edges(position // 2) + source


def limit_skip_connects(
    weights: Any,
    per_edge_primitives: Sequence[Sequence[str]],
    *,
    steps: int = 4,
    max_skips: int = 2,
    primitives: Sequence[str] = PRIMITIVES,
) -> list[tuple[str, int]]:
    """One cell's gene with at most ``max_skips`` skip-connects, as P-DARTS restricts its final
    normal cell: derive the cell (DARTS's rule: per node the two edges with the strongest
    non-``none`` op); while it has too many skip-connects, remove the weakest chosen skip-connect
    from its edge's candidates and derive again, so that edge falls back to its next op or loses
    its place to another edge.

    ``weights`` is the (edges x ops) softmaxed table, columns in each edge's op order.
    """
    if max_skips < 0:
        raise ValueError(f"max_skips={max_skips} must be >= 0")
    per_edge = check_per_edge_primitives(per_edge_primitives, steps)
    table = dense_weights(weights, per_edge, primitives)
    skip = list(primitives).index("skip_connect")
    while True:
        gene = _cell_gene(table, steps, primitives)
        for position, (op, source) in enumerate(gene):
            if table[_edge_row(position, source), list(primitives).index(op)] == -math.inf:
                raise ValueError(
                    f"cannot keep {max_skips} skip-connects: node {position // 2} has fewer than "
                    "two edges with an op other than none and skip_connect"
                )
        skip_rows = [
            _edge_row(position, source)
            for position, (op, source) in enumerate(gene)
            if op == "skip_connect"
        ]
        if len(skip_rows) <= max_skips:
            return gene
        # min returns the first of equal weights: the lowest edge, as the reference's argmin.
        weakest = min(skip_rows, key=lambda row: table[row, skip].item())
        table[weakest, skip] = -math.inf


def derive_p_darts_genotype(
    weights_normal: Any,
    weights_reduce: Any,
    normal_primitives: Sequence[Sequence[str]],
    reduce_primitives: Sequence[Sequence[str]],
    *,
    steps: int = 4,
    multiplier: int = 4,
    primitives: Sequence[str] = PRIMITIVES,
    max_skip_connects: int | None = None,
) -> Genotype:
    """DARTS's genotype rule on per-edge op subsets (softmaxed weights), the normal cell limited
    to ``max_skip_connects`` skip-connects when given (the final stage)."""
    genotype = derive_genotype(
        dense_weights(weights_normal, normal_primitives, primitives),
        dense_weights(weights_reduce, reduce_primitives, primitives),
        steps=steps,
        multiplier=multiplier,
        primitives=primitives,
    )
    if max_skip_connects is None:
        return genotype
    normal = limit_skip_connects(
        weights_normal,
        normal_primitives,
        steps=steps,
        max_skips=max_skip_connects,
        primitives=primitives,
    )
    return genotype._replace(normal=normal)


class PDartsArchitecture(nn.Module):
    """The architecture of one P-DARTS stage: an (edges x ops) alpha table per cell type over
    per-edge op subsets (1e-3 * randn: the reference starts every stage afresh).

    ``max_skip_connects`` (the final stage) limits the skip-connects of the genotype's normal
    cell."""

    def __init__(
        self,
        steps: int = 4,
        *,
        multiplier: int = 4,
        normal_primitives: Sequence[Sequence[str]] | None = None,
        reduce_primitives: Sequence[Sequence[str]] | None = None,
        primitives: Sequence[str] = PRIMITIVES,
        max_skip_connects: int | None = None,
        init_scale: float = 1e-3,
    ):
        super().__init__()
        self.steps = steps
        self.multiplier = multiplier
        self.primitives = tuple(primitives)
        self.normal_primitives = check_per_edge_primitives(
            normal_primitives or full_op_set(steps, primitives), steps
        )
        self.reduce_primitives = check_per_edge_primitives(
            reduce_primitives or full_op_set(steps, primitives), steps
        )
        self.max_skip_connects = max_skip_connects
        for name, per_edge in (
            ("alpha_normal", self.normal_primitives),
            ("alpha_reduce", self.reduce_primitives),
        ):
            shape = (len(per_edge), len(per_edge[0]))
            setattr(self, name, nn.Parameter(init_scale * torch.randn(shape)))

    def forward(self) -> ArchWeights:
        return ArchWeights(self.alpha_normal, self.alpha_reduce)

    @torch.no_grad()
    def genotype(self) -> Genotype:
        return derive_p_darts_genotype(
            F.softmax(self.alpha_normal, dim=-1),
            F.softmax(self.alpha_reduce, dim=-1),
            self.normal_primitives,
            self.reduce_primitives,
            steps=self.steps,
            multiplier=self.multiplier,
            primitives=self.primitives,
            max_skip_connects=self.max_skip_connects,
        )

    @torch.no_grad()
    def drop_weakest_ops(self, keep: int, *, remove_none: bool = False) -> tuple[OpDrop, OpDrop]:
        """The (normal, reduce) op subsets for the next stage: ``drop_weakest_ops`` on this
        stage's softmaxed alphas."""
        return (
            drop_weakest_ops(
                F.softmax(self.alpha_normal, dim=-1),
                self.normal_primitives,
                keep,
                remove_none=remove_none,
            ),
            drop_weakest_ops(
                F.softmax(self.alpha_reduce, dim=-1),
                self.reduce_primitives,
                keep,
                remove_none=remove_none,
            ),
        )


@dataclass(frozen=True)
class PDartsStage:
    """One search stage: a fresh network of ``layers`` cells with ``ops_per_edge`` candidate ops
    on every edge, trained ``epochs`` epochs (architecture frozen for ``arch_frozen_epochs``);
    afterwards ``ops_kept`` ops per edge go on to the next stage."""

    index: int
    layers: int
    ops_per_edge: int
    ops_kept: int
    skip_dropout: float
    epochs: int
    arch_frozen_epochs: int
    dropout_decay: float
    is_last: bool

    def skip_dropout_schedule(self) -> SkipDropoutSchedule:
        return SkipDropoutSchedule(
            self.skip_dropout, self.epochs, self.arch_frozen_epochs, self.dropout_decay
        )


@dataclass(frozen=True)
class PDartsPlan:
    """The P-DARTS stages and the final skip-connect limit."""

    stages: tuple[PDartsStage, ...]
    max_skip_connects: int
    primitives: tuple[str, ...] = PRIMITIVES

    @classmethod
    def build(
        cls,
        *,
        layers: int,
        add_layers: Sequence[int],
        ops_kept: Sequence[int],
        skip_dropout: Sequence[float],
        epochs: int,
        arch_frozen_epochs: int,
        dropout_decay: float = 0.2,
        max_skip_connects: int = 2,
        primitives: Sequence[str] = PRIMITIVES,
    ) -> PDartsPlan:
        """Stage ``s`` has ``layers + add_layers[s]`` cells (the reference's ``--layers 5
        --add_layers 6 --add_layers 12``), starts with every op of ``primitives`` (stage 0) or
        the ``ops_kept[s - 1]`` ops the previous stage kept, and an initial skip dropout of
        ``skip_dropout[s]``. ValueError names an inconsistent setting."""
        primitives = tuple(primitives)
        lengths = {len(add_layers), len(ops_kept), len(skip_dropout)}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "pdarts_add_layers, pdarts_ops_kept and pdarts_skip_dropout need one entry per "
                f"stage, and the same number of entries; got {list(add_layers)}, "
                f"{list(ops_kept)}, {list(skip_dropout)}"
            )
        ops_per_edge = [len(primitives), *ops_kept[:-1]]
        for index, (before, after) in enumerate(zip(ops_per_edge, ops_kept, strict=True)):
            last = index == len(ops_kept) - 1
            # Before the last stage a lone kept op could be `none`, leaving an edge with nothing.
            low = 1 if last else 2
            if not low <= after < before:
                raise ValueError(
                    f"pdarts_ops_kept={list(ops_kept)}: stage {index} has {before} ops per edge "
                    f"and must keep between {low} and {before - 1}"
                )
        if any(not 0.0 <= rate <= 1.0 for rate in skip_dropout):
            raise ValueError(f"pdarts_skip_dropout={list(skip_dropout)}: rates must be in [0, 1]")
        if any(layers + extra < 3 for extra in add_layers):
            raise ValueError(
                f"search.layers + pdarts_add_layers = {[layers + e for e in add_layers]}: every "
                "stage needs >= 3 cells (two reduction cells)"
            )
        if max_skip_connects < 0:
            raise ValueError(f"pdarts_max_skip_connects={max_skip_connects} must be >= 0")
        if not 0 <= arch_frozen_epochs <= epochs:
            raise ValueError(
                f"arch_warmup_epochs={arch_frozen_epochs} must be in [0, epochs={epochs}]"
            )
        stages = tuple(
            PDartsStage(
                index=index,
                layers=layers + add_layers[index],
                ops_per_edge=ops_per_edge[index],
                ops_kept=ops_kept[index],
                skip_dropout=float(skip_dropout[index]),
                epochs=epochs,
                arch_frozen_epochs=arch_frozen_epochs,
                dropout_decay=dropout_decay,
                is_last=index == len(ops_kept) - 1,
            )
            for index in range(len(ops_kept))
        )
        return cls(stages, max_skip_connects, primitives)
