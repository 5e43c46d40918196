"""Stage 3, the paper's Eq. 3: min_A sum_j L(W_j*(...), A_j, D_val).

Architecture k's loss is the sum over all learners: the terms j != k carry no direct gradient
to A_k, but they are what make the paths v_k -> w_j -> arch_k exist (the paper's Eq. 7, 10, 11).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SGLStage, accuracy


@dataclass
class ValidatedLearner:
    learner: int
    w_net: nn.Module
    architecture: nn.Module


class ArchStage(SGLStage):
    role = "arch"

    def __init__(
        self, learner, architecture, group: list[ValidatedLearner], own_loss_only: bool, **kwargs
    ):
        super().__init__(learner, architecture, **kwargs)
        self.group = group
        # Without upper-to-lower edges (first-order) only learner k's own term has a gradient
        # with respect to A_k, so the other K - 1 forward passes would be wasted.
        self.own_loss_only = own_loss_only
        self.last_hypergrad: list[torch.Tensor] | None = None

    def get_batch(self):
        return self.batches.get("val")

    def training_step(self, batch):
        x, y = batch
        total = 0.0
        for member in self.group:
            if self.own_loss_only and member.learner != self.learner:
                continue
            logits = member.w_net(x, member.architecture())
            loss = self.sgl.labeled_loss(logits, y)
            if member.learner == self.learner:
                self.record(val_loss=loss, val_acc=accuracy(logits, y))
            total = total + loss
        return total

    def grad_callback(self):
        super().grad_callback()
        self.last_hypergrad = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self.trainable_parameters()
        ]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in self.last_hypergrad))
        if not torch.isfinite(norm):
            self.fail_non_finite("hypergradient", norm.item())
        self.last_metrics["hypergrad_norm"] = norm
