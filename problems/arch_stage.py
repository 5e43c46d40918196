"""Stage 3, the paper's Eq. 3: min_A sum_j L(W_j*(...), A_j, D_val).

Architecture k's loss is the sum over all learners: the terms j != k carry no direct gradient
to A_k, but they are what make the paths v_k -> w_j -> arch_k exist (the paper's Eq. 7, 10, 11).
Every architecture shares that objective, so the engine computes all their gradients in one
sweep per step (``engine/hypergradient.py``); this problem takes its part of it.
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

    def __init__(self, learner, architecture, group: list[ValidatedLearner], **kwargs):
        super().__init__(learner, architecture, **kwargs)
        self.group = group
        self.last_hypergrad: list[torch.Tensor] | None = None
        # Set by the engine: the per-step sweep that computes every architecture's gradient.
        self.hypergradient = None

    def get_batch(self):
        return self.batches.get("val")

    def training_step(self, batch):
        if self.hypergradient is None:
            return self.objective(batch)
        own = self.hypergradient.result().metrics[self.learner]
        self.record(**own)
        return own["val_loss"]

    def objective(self, batch):
        """F = sum_j L(W_j, A_j, D_val), as a differentiable loss (Betty's path-by-path use)."""
        x, y = batch
        total = 0.0
        for member in self.group:
            logits = member.w_net(x, member.architecture())
            loss = self.sgl.labeled_loss(logits, y)
            if member.learner == self.learner:
                self.record(val_loss=loss, val_acc=accuracy(logits, y))
            total = total + loss
        return total

    def backward(
        self, loss, params, paths, create_graph=False, retain_graph=True, allow_unused=True
    ):
        if self.hypergradient is None:
            return super().backward(loss, params, paths, create_graph, retain_graph, allow_unused)
        # The sweep already followed every path of this problem (and of the other architectures).
        self.set_grads(params, self.hypergradient.result().arch_grads[self.learner])

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
