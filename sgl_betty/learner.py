"""A learner of the small group: architecture A_k and the two weight sets V_k and W_k."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .contracts import ArchitectureModule, SearchableNetwork, check_architecture, check_network

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], object]


def paper_weight_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD for V and W as in the paper's Section 3.2 (and DARTS)."""
    return torch.optim.SGD(params, lr=0.025, momentum=0.9, weight_decay=3e-4)


def paper_arch_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """Adam for the architecture as in the paper (betas as in DARTS)."""
    return torch.optim.Adam(params, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)


@dataclass
class Learner:
    """One learner k.

    ``arch`` is an nn.Module whose ``forward()`` returns the architecture weights; ``v_net`` and
    ``w_net`` are called as ``net(x, arch())`` (the contracts in ``sgl_betty.contracts``, checked
    here). V_k and W_k are separate networks sharing A_k.
    With a single learner (K = 1) there is no V stage and ``v_net`` may be None.
    Optimizer factories take an iterable of parameters; scheduler factories take an optimizer.
    """

    arch: ArchitectureModule
    v_net: SearchableNetwork | None
    w_net: SearchableNetwork
    v_optimizer: OptimizerFactory | None = None
    w_optimizer: OptimizerFactory | None = None
    arch_optimizer: OptimizerFactory | None = None
    v_scheduler: SchedulerFactory | None = None
    w_scheduler: SchedulerFactory | None = None

    def __post_init__(self) -> None:
        for name in ("arch", "w_net"):
            if not isinstance(getattr(self, name), nn.Module):
                raise TypeError(
                    f"Learner.{name} must be an nn.Module, got {type(getattr(self, name))}"
                )
        if self.v_net is not None and not isinstance(self.v_net, nn.Module):
            raise TypeError(f"Learner.v_net must be an nn.Module or None, got {type(self.v_net)}")
        if self.v_net is not None and self.v_net is self.w_net:
            raise ValueError("Learner.v_net and w_net must be two separate networks (V_k and W_k)")
        check_architecture(self.arch, "Learner.arch")
        for name in ("v_net", "w_net"):
            if getattr(self, name) is not None:
                check_network(getattr(self, name), f"Learner.{name}")
        self.v_optimizer = self.v_optimizer or paper_weight_optimizer
        self.w_optimizer = self.w_optimizer or paper_weight_optimizer
        self.arch_optimizer = self.arch_optimizer or paper_arch_optimizer
