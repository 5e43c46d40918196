"""Search methods by name: each builds one learner's architecture and its V and W networks.

A method is looked up in ``SEARCH_METHODS`` (the ``search.method`` config field); a new one
registers a builder with ``@register_method("name")`` (a name taken already is refused unless
``replace=True``). The paper composes SGL with four: ``darts``, ``pc_darts``, ``darts_minus``
here and ``p_darts`` in ``p_darts_method``.

A search runs in stages (``search_stages``), each with fresh learners (``stage_learners``). A
method's builder says how: a plain builder is one stage over the whole search; a builder that
is a ``MethodStaging`` (P-DARTS's) plans several stages, builds each stage's learners and
decides at the end of a stage what the next one starts from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

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
    SearchNetwork,
)


@dataclass
class LearnerModules:
    arch: nn.Module  # forward() -> architecture weights; genotype() -> Genotype
    v_net: nn.Module | None
    w_net: nn.Module


MethodBuilder = Callable[[DictConfig, int, bool], LearnerModules]
# Called before every search step with the learners and the search progress in [0, 1)
# (e.g. DARTS-'s decaying auxiliary skip weight, P-DARTS's skip dropout schedule).
StepHook = Callable[[list[Learner], float], None]


@dataclass(frozen=True)
class SearchStage:
    """A stretch of the search with fresh learners (networks, architectures, optimizers and
    cosine schedules): the whole search for most methods, one of P-DARTS's stages for p_darts.
    The step hook sees the progress through the current stage."""

    index: int
    epochs: int
    arch_warmup_epochs: int
    first_epoch: int  # the epochs of the stages before this one
    is_last: bool = True
    plan: Any = None  # the method's own description of the stage (P-DARTS: a PDartsStage)

    @property
    def p_darts(self) -> Any:
        """The stage's PDartsStage under p_darts, None under the other methods (``plan``)."""
        return self.plan


@dataclass
class StageEnd:
    """What a stage leaves: a record for stages.json (None: the method keeps none) and, unless
    it was the last stage, each learner's state for the next one (saved in checkpoints)."""

    record: dict | None = None
    next_state: list | None = None


class MethodStaging:
    """How a method's search runs in stages; the default: one stage, the method's builder.

    ``state``: per learner what its next stage starts from (P-DARTS: its op subsets), None
    in the first stage; plain data, as it goes into checkpoints."""

    # Whether the run records its stages (the "stage" of every metrics and genotypes row,
    # stages.json, architecture-stage<i>.pt).
    staged = False

    def stages(self, cfg: DictConfig) -> list[SearchStage]:
        search = cfg.search
        return [SearchStage(0, search.epochs, search.arch_warmup_epochs, first_epoch=0)]

    def stage_modules(
        self, cfg: DictConfig, num_classes: int, stage: SearchStage, state: list | None
    ) -> list[LearnerModules] | None:
        """Each learner's modules in ``stage``; None: the method's builder makes them."""
        return None

    def end_stage(
        self,
        stage: SearchStage,
        learners: list[Learner],
        val_acc: list[float],
        steps: int,
        architecture_file: str,
        agree: Callable[[Any], Any],
    ) -> StageEnd:
        """After ``stage`` (``steps`` steps; the architectures are in ``architecture_file``):
        its record and the next stage's state. ``agree(value)`` is rank 0's ``value`` on
        every process."""
        return StageEnd()


SINGLE_STAGE = MethodStaging()


@dataclass
class SearchMethod:
    name: str
    build: MethodBuilder
    on_step: StepHook | None = None

    @property
    def staging(self) -> MethodStaging:
        # A staged method's builder is its staging (it builds the first stage's modules), so
        # that a method rebuilt from its builder keeps its stages.
        return self.build if isinstance(self.build, MethodStaging) else SINGLE_STAGE


SEARCH_METHODS: dict[str, SearchMethod] = {}


def register_method(name: str, on_step: StepHook | None = None, *, replace: bool = False):
    """Register the decorated builder as search method ``name``; a name that is taken already
    is refused (ValueError) unless ``replace=True`` says that replacing it is meant."""

    def decorate(builder: MethodBuilder) -> MethodBuilder:
        if name in SEARCH_METHODS and not replace:
            taken = SEARCH_METHODS[name].build
            raise ValueError(
                f"search method {name!r} is registered already (by "
                f"{getattr(taken, '__module__', '?')}.{getattr(taken, '__qualname__', taken)}); "
                f"register yours under another name, or pass replace=True to replace it"
            )
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


def learner_modules(arch: nn.Module, network: Callable[[], nn.Module], with_v: bool):
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
    return learner_modules(arch, network, with_v)


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
    return learner_modules(arch, network, with_v)


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
    return learner_modules(arch, network, with_v)


def search_stages(cfg: DictConfig) -> list[SearchStage]:
    """The stages of the search ``cfg`` describes."""
    return search_method(cfg.search.method).staging.stages(cfg)


def stage_learners(
    cfg: DictConfig,
    num_classes: int,
    stage: SearchStage,
    total_steps: int,
    state: list | None = None,
) -> list[Learner]:
    """The learners of ``stage``, their cosine schedules over its ``total_steps``; ``state``:
    per learner what the method carries from the stage before (None: the first stage)."""
    staging = search_method(cfg.search.method).staging
    modules = staging.stage_modules(cfg, num_classes, stage, state)
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
