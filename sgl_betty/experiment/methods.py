"""Search methods by name: each builds one learner's architecture and its V and W networks.

A method is looked up in ``SEARCH_METHODS`` (the ``search.method`` config field); a new one
registers a builder with ``@register_method("name")``. The paper composes SGL with four:
``darts``, ``pc_darts``, ``darts_minus`` and ``p_darts``.

A search runs in stages (``search_stages``), each with fresh learners (``stage_learners``):
one stage for most methods, P-DARTS's progressive stages for ``p_darts``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from sgl_betty.errors import ConfigError
from sgl_betty.learner import Learner
from sgl_betty.search_space import (
    AUXILIARY_SKIP_DECAYS,
    Architecture,
    DartsMinusSearchNetwork,
    PCDartsArchitecture,
    PCDartsSearchNetwork,
    PDartsArchitecture,
    PDartsPlan,
    PDartsSearchNetwork,
    PDartsStage,
    SearchNetwork,
)
from sgl_betty.search_space.p_darts import PerEdgePrimitives


@dataclass
class LearnerModules:
    arch: nn.Module  # forward() -> architecture weights; genotype() -> Genotype
    v_net: nn.Module | None
    w_net: nn.Module


MethodBuilder = Callable[[DictConfig, int, bool], LearnerModules]
# Called before every search step with the learners and the search progress in [0, 1)
# (e.g. DARTS-'s decaying auxiliary skip weight, P-DARTS's skip dropout schedule).
StepHook = Callable[[list[Learner], float], None]


@dataclass
class SearchMethod:
    name: str
    build: MethodBuilder
    on_step: StepHook | None = None


SEARCH_METHODS: dict[str, SearchMethod] = {}


def register_method(name: str, on_step: StepHook | None = None):
    def decorate(builder: MethodBuilder) -> MethodBuilder:
        SEARCH_METHODS[name] = SearchMethod(name, builder, on_step)
        return builder

    return decorate


def set_search_progress(learners: list[Learner], progress: float) -> None:
    """Step hook of the methods whose networks change over the search: every V and W network's
    ``set_search_progress(progress)``."""
    for learner in learners:
        for net in (learner.v_net, learner.w_net):
            if net is not None:
                net.set_search_progress(progress)


def _learner_modules(arch: nn.Module, network: Callable[[], nn.Module], with_v: bool):
    # The architecture first, then V, then W: the order the random initialisations are drawn in.
    return LearnerModules(arch, network() if with_v else None, network())


@register_method("darts")
def darts_modules(cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
    search = cfg.search

    # DARTS concatenates all intermediate nodes: multiplier = steps.
    def network():
        return SearchNetwork(
            search.init_channels,
            num_classes,
            search.layers,
            steps=search.steps,
            multiplier=search.steps,
        )

    arch = Architecture(steps=search.steps, multiplier=search.steps)
    return _learner_modules(arch, network, with_v)


@register_method("pc_darts")
def pc_darts_modules(cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
    search = cfg.search
    parts = search.pc_partial_channels
    if parts < 1 or search.init_channels % parts:
        raise ConfigError(
            f"search.pc_partial_channels={parts} must be >= 1 and divide "
            f"search.init_channels={search.init_channels}: every edge splits its channels into "
            f"{parts} parts"
        )

    def network():
        return PCDartsSearchNetwork(
            search.init_channels,
            num_classes,
            search.layers,
            steps=search.steps,
            multiplier=search.steps,
            partial_channels=parts,
        )

    arch = PCDartsArchitecture(steps=search.steps, multiplier=search.steps)
    return _learner_modules(arch, network, with_v)


@register_method("darts_minus", on_step=set_search_progress)
def darts_minus_modules(cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
    search = cfg.search
    if search.darts_minus_decay not in AUXILIARY_SKIP_DECAYS:
        raise ConfigError(
            f"search.darts_minus_decay={search.darts_minus_decay!r} is not allowed; choose one "
            f"of: {', '.join(AUXILIARY_SKIP_DECAYS)}"
        )

    def network():
        return DartsMinusSearchNetwork(
            search.init_channels,
            num_classes,
            search.layers,
            steps=search.steps,
            multiplier=search.steps,
            auxiliary_skip_decay=search.darts_minus_decay,
        )

    # The auxiliary skip has no architecture parameter: DARTS's architecture and genotype.
    arch = Architecture(steps=search.steps, multiplier=search.steps)
    return _learner_modules(arch, network, with_v)


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
    return _learner_modules(arch, network, with_v)


@register_method("p_darts", on_step=set_search_progress)
def p_darts_modules(cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
    """P-DARTS's first stage (every op on every edge, search.layers cells); the later stages are
    built by ``stage_learners``."""
    return p_darts_stage_modules(cfg, num_classes, with_v, stage=0)


# One learner's (normal, reduce) per-edge op lists in a P-DARTS stage.
OpSubsets = tuple[PerEdgePrimitives, PerEdgePrimitives]


@dataclass(frozen=True)
class SearchStage:
    """A stretch of the search with fresh learners (networks, architectures, optimizers and
    cosine schedules): the whole search for most methods, one of P-DARTS's stages for p_darts.
    The step hook sees the progress through the current stage."""

    index: int
    epochs: int
    arch_warmup_epochs: int
    first_epoch: int  # the epochs of the stages before this one
    p_darts: PDartsStage | None = None  # cells, ops per edge, ops kept, skip dropout

    @property
    def is_last(self) -> bool:
        return self.p_darts is None or self.p_darts.is_last


def search_stages(cfg: DictConfig) -> list[SearchStage]:
    """The stages of the search ``cfg`` describes (P-DARTS: ``p_darts_plan``)."""
    search = cfg.search
    if search.method != "p_darts":
        return [SearchStage(0, search.epochs, search.arch_warmup_epochs, first_epoch=0)]
    plan = p_darts_plan(cfg).stages
    return [
        SearchStage(
            stage.index,
            stage.epochs,
            stage.arch_frozen_epochs,
            first_epoch=sum(before.epochs for before in plan[: stage.index]),
            p_darts=stage,
        )
        for stage in plan
    ]


def stage_learners(
    cfg: DictConfig,
    num_classes: int,
    stage: SearchStage,
    total_steps: int,
    op_subsets: Sequence[OpSubsets | None] | None = None,
) -> list[Learner]:
    """The learners of ``stage``, their cosine schedules over its ``total_steps``; in a P-DARTS
    stage each learner's network and architecture over its own op subsets (None: every op)."""
    if stage.p_darts is None:
        return build_learners(cfg, num_classes, total_steps)
    if op_subsets is None:
        op_subsets = [None] * cfg.learners
    modules = [
        p_darts_stage_modules(
            cfg, num_classes, cfg.learners > 1, stage.index, *(ops or (None, None))
        )
        for ops in op_subsets
    ]
    return build_learners(cfg, num_classes, total_steps, modules)


def search_method(name: str) -> SearchMethod:
    if name not in SEARCH_METHODS:
        raise ValueError(
            f"unknown search method {name!r}; available: {', '.join(sorted(SEARCH_METHODS))}"
        )
    return SEARCH_METHODS[name]


def build_learners(
    cfg: DictConfig,
    num_classes: int,
    total_steps: int,
    modules: Sequence[LearnerModules] | None = None,
) -> list[Learner]:
    """K learners with the configured optimizers: SGD + per-step cosine for V and W, Adam for A.

    ``modules`` (one per learner) replaces the method's builder, e.g. P-DARTS's later stages,
    whose learners each have their own op subsets."""
    search = cfg.search
    builder = search_method(search.method).build

    def weight_optimizer(params):
        return torch.optim.SGD(
            params,
            lr=search.weight_lr,
            momentum=search.weight_momentum,
            weight_decay=search.weight_decay,
        )

    def arch_optimizer(params):
        return torch.optim.Adam(
            params,
            lr=search.arch_lr,
            betas=(search.arch_beta1, search.arch_beta2),
            weight_decay=search.arch_weight_decay,
        )

    def cosine(optimizer):
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(total_steps, 1), eta_min=search.weight_lr_min
        )

    if modules is None:
        modules = [builder(cfg, num_classes, cfg.learners > 1) for _ in range(cfg.learners)]
    elif len(modules) != cfg.learners:
        raise ValueError(f"got modules for {len(modules)} learners; learners={cfg.learners}")
    return [
        Learner(
            arch=learner.arch,
            v_net=learner.v_net,
            w_net=learner.w_net,
            v_optimizer=weight_optimizer,
            w_optimizer=weight_optimizer,
            arch_optimizer=arch_optimizer,
            v_scheduler=cosine,
            w_scheduler=cosine,
        )
        for learner in modules
    ]
