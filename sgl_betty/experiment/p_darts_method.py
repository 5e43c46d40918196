"""P-DARTS as a search method: its progressive stages, each stage's learners, and what one
stage hands to the next (each learner's strongest ops per edge).

Registered as ``p_darts``; the search loop (``search.py``) knows nothing of it beyond the
``MethodStaging`` it implements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig

from sgl_betty.errors import ConfigError
from sgl_betty.genotypes import genotype_to_dict
from sgl_betty.learner import Learner
from sgl_betty.search_space import (
    PDartsArchitecture,
    PDartsPlan,
    PDartsSearchNetwork,
)
from sgl_betty.search_space.p_darts import PerEdgePrimitives

from .methods import (
    LearnerModules,
    MethodStaging,
    SearchStage,
    StageEnd,
    learner_modules,
    register_method,
    set_search_progress,
)

# One learner's (normal, reduce) per-edge op lists in a P-DARTS stage.
OpSubsets = tuple[PerEdgePrimitives, PerEdgePrimitives]


def p_darts_plan(cfg: DictConfig) -> PDartsPlan:
    """The P-DARTS stages the config describes (ConfigError naming an inconsistent setting)."""
    search = cfg.search
    try:
        return PDartsPlan.build(
            layers=search.layers,
            add_layers=list(search.pdarts_add_layers),
            ops_kept=list(search.pdarts_ops_kept),
            skip_dropout=list(search.pdarts_skip_dropout),
            epochs=search.epochs,
            arch_frozen_epochs=search.arch_warmup_epochs,
            dropout_decay=search.pdarts_dropout_decay,
            max_skip_connects=search.pdarts_max_skip_connects,
        )
    except ValueError as error:
        raise ConfigError(f"P-DARTS stages: {error}") from None


def p_darts_stage_modules(
    cfg: DictConfig,
    num_classes: int,
    with_v: bool,
    stage: int,
    normal_primitives: Sequence[Sequence[str]] | None = None,
    reduce_primitives: Sequence[Sequence[str]] | None = None,
) -> LearnerModules:
    """One learner's modules for P-DARTS stage ``stage`` (0-based) over its per-edge op subsets
    (None: every op on every edge, the first stage): the stage's depth, a fresh architecture,
    the stage's skip dropout schedule, and in the last stage the skip-connect limit."""
    search = cfg.search
    plan = p_darts_plan(cfg)
    if not 0 <= stage < len(plan.stages):
        raise ValueError(f"stage {stage} does not exist; the plan has {len(plan.stages)} stages")
    current = plan.stages[stage]
    schedule = current.skip_dropout_schedule()

    def network():
        return PDartsSearchNetwork(
            search.init_channels,
            num_classes,
            current.layers,
            steps=search.steps,
            multiplier=search.steps,
            normal_primitives=normal_primitives,
            reduce_primitives=reduce_primitives,
            skip_dropout_schedule=schedule,
            primitives=plan.primitives,
        )

    arch = PDartsArchitecture(
        steps=search.steps,
        multiplier=search.steps,
        normal_primitives=normal_primitives,
        reduce_primitives=reduce_primitives,
        primitives=plan.primitives,
        max_skip_connects=plan.max_skip_connects if current.is_last else None,
    )
    return learner_modules(arch, network, with_v)


def _as_lists(per_edge) -> list[list[str]]:
    """Per-edge op lists as JSON has them (the returned summary equals summary.json)."""
    return [list(ops) for ops in per_edge]


class PDartsStaging(MethodStaging):
    """P-DARTS's stages of growing depth over shrinking op subsets; as a builder, the first
    stage's modules (every op on every edge, search.layers cells)."""

    staged = True

    def __call__(self, cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
        return p_darts_stage_modules(cfg, num_classes, with_v, stage=0)

    def stages(self, cfg: DictConfig) -> list[SearchStage]:
        plan = p_darts_plan(cfg).stages
        return [
            SearchStage(
                stage.index,
                stage.epochs,
                stage.arch_frozen_epochs,
                first_epoch=sum(before.epochs for before in plan[: stage.index]),
                is_last=stage.is_last,
                plan=stage,
            )
            for stage in plan
        ]

    def stage_modules(
        self, cfg: DictConfig, num_classes: int, stage: SearchStage, state: list | None
    ) -> list[LearnerModules]:
        """Each learner's network and architecture over its own op subsets (None: every op)."""
        op_subsets: Sequence[OpSubsets | None] = state or [None] * cfg.learners
        return [
            p_darts_stage_modules(
                cfg, num_classes, cfg.learners > 1, stage.index, *(ops or (None, None))
            )
            for ops in op_subsets
        ]

    def end_stage(
        self,
        stage: SearchStage,
        learners: list[Learner],
        val_acc: list[float],
        steps: int,
        architecture_file: str,
        agree: Callable[[Any], Any],
    ) -> StageEnd:
        """Unless the stage is the last, each learner's strongest ``ops_kept`` ops per edge go
        on (rank 0's, even where a near-tie ranked ops otherwise on another process)."""
        drops = [None] * len(learners)
        if not stage.is_last:
            drops = agree(
                [learner.arch.drop_weakest_ops(stage.plan.ops_kept) for learner in learners]
            )
        record = {
            "index": stage.index,
            "cells": stage.plan.layers,
            "ops_per_edge": stage.plan.ops_per_edge,
            "ops_kept": None if stage.is_last else stage.plan.ops_kept,
            "skip_dropout": stage.plan.skip_dropout,
            "epochs": stage.epochs,
            "steps": steps,
            "architecture": architecture_file,
            "learners": [
                self._learner_record(learner, drop, acc)
                for learner, drop, acc in zip(learners, drops, val_acc, strict=True)
            ],
        }
        if stage.is_last:
            return StageEnd(record)
        return StageEnd(record, [(normal.kept, reduce.kept) for normal, reduce in drops])

    @staticmethod
    def _learner_record(learner: Learner, drop, val_acc: float) -> dict:
        return {
            "ops": {
                "normal": _as_lists(learner.arch.normal_primitives),
                "reduce": _as_lists(learner.arch.reduce_primitives),
            },
            "dropped": None
            if drop is None
            else {"normal": _as_lists(drop[0].dropped), "reduce": _as_lists(drop[1].dropped)},
            "genotype": genotype_to_dict(learner.arch.genotype()),
            "val_acc": val_acc,
        }


register_method("p_darts", on_step=set_search_progress)(PDartsStaging())
