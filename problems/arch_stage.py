"""Stage 3, the paper's Eq. 3: min_A sum_j L(W_j*(...), A_j, D_val).

Every architecture minimises the same objective F (the sum of all learners' validation losses;
``engine/hypergradient.py`` owns it), so the engine computes every architecture's gradient of F
in one sweep per step. This problem applies its part: its loss is the value the sweep computed
for its learner, its gradient the sweep's dF/dA_k.
"""

from __future__ import annotations

import torch

from .base import SGLStage


class ArchStage(SGLStage):
    role = "arch"

    def __init__(self, learner, architecture, hypergradient, **kwargs):
        super().__init__(learner, architecture, **kwargs)
        # The engine's strategy for dF/dA (one sweep, or Betty's own path-by-path backward).
        self.hypergradient = hypergradient
        self.last_hypergrad: list[torch.Tensor] | None = None

    def get_batch(self):
        return self.batches.get("val")

    def training_step(self, batch):
        return self.hypergradient.loss(self, batch)

    def backward(
        self, loss, params, paths, create_graph=False, retain_graph=True, allow_unused=True
    ):
        self.hypergradient.backward(self, loss, params, paths, create_graph, retain_graph)

    def betty_backward(self, loss, params, paths, create_graph, retain_graph):
        """Betty's own backward: the direct gradient, then each path's solvers in turn."""
        super().backward(loss, params, paths, create_graph, retain_graph, allow_unused=True)

    def grad_callback(self):
        super().grad_callback()
        self.last_hypergrad = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in self.trainable_parameters()
        ]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in self.last_hypergrad))
        self.watch("hypergradient", norm)
        self.last_metrics["hypergrad_norm"] = norm
