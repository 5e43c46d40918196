"""Search methods by name: each builds one learner's architecture and its V and W networks.

A method is looked up in ``SEARCH_METHODS`` (the ``search.method`` config field); a new one
registers a builder with ``@register_method("name")``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import nn

from sgl_betty.learner import Learner
from sgl_betty.search_space import Architecture, SearchNetwork


@dataclass
class LearnerModules:
    arch: nn.Module  # forward() -> architecture weights; genotype() -> Genotype
    v_net: nn.Module | None
    w_net: nn.Module


MethodBuilder = Callable[[DictConfig, int, bool], LearnerModules]
SEARCH_METHODS: dict[str, MethodBuilder] = {}


def register_method(name: str):
    def decorate(builder: MethodBuilder) -> MethodBuilder:
        SEARCH_METHODS[name] = builder
        return builder

    return decorate


@register_method("darts")
def darts_modules(cfg: DictConfig, num_classes: int, with_v: bool) -> LearnerModules:
    search = cfg.search

    # DARTS concatenates all intermediate nodes: multiplier = steps.
    def network():
        return SearchNetwork(
            search.init_channels, num_classes, search.layers, steps=search.steps, multiplier=search.steps
        )

    arch = Architecture(steps=search.steps, multiplier=search.steps)
    return LearnerModules(arch, network() if with_v else None, network())


def method_builder(name: str) -> MethodBuilder:
    if name not in SEARCH_METHODS:
        raise ValueError(f"unknown search method {name!r}; available: {', '.join(sorted(SEARCH_METHODS))}")
    return SEARCH_METHODS[name]


def build_learners(cfg: DictConfig, num_classes: int, total_steps: int) -> list[Learner]:
    """K learners with the configured optimizers: SGD + per-step cosine for V and W, Adam for A."""
    search = cfg.search
    builder = method_builder(search.method)

    def weight_optimizer(params):
        return torch.optim.SGD(
            params, lr=search.weight_lr, momentum=search.weight_momentum, weight_decay=search.weight_decay
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

    learners = []
    for _ in range(cfg.learners):
        modules = builder(cfg, num_classes, cfg.learners > 1)
        learners.append(
            Learner(
                arch=modules.arch,
                v_net=modules.v_net,
                w_net=modules.w_net,
                v_optimizer=weight_optimizer,
                w_optimizer=weight_optimizer,
                arch_optimizer=arch_optimizer,
                v_scheduler=cosine,
                w_scheduler=cosine,
            )
        )
    return learners
