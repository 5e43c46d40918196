"""SGLEngine: Betty's Engine with the project's scheduling, device choice and metrics.

Betty runs the graph: each step it steps the leaves (the V stages, or the W stage when K = 1),
and every problem steps its uppers once all of their lowers have stepped, which is the paper's
Algorithm 1 (all V, then all W, then all A). This class only adds what Betty lacks.
"""

from __future__ import annotations

import logging

import torch
from betty.engine import Engine
from betty.logging.logger_base import get_logger

from .batches import SharedBatches


class SGLEngine(Engine):
    def __init__(self, problems, config, dependencies, batches: SharedBatches, device, num_learners: int):
        self.requested_device = torch.device(device)
        self.batches = batches
        self.num_learners = num_learners
        # Betty logs every problem's wiring at INFO; with 3K problems that buries the run's output.
        get_logger().setLevel(logging.WARNING)
        super().__init__(problems, config=config, dependencies=dependencies)
        self.stages = {(p.role, p.learner): p for p in self.problems}

    def configure_systems(self):
        dist_dict = super().configure_systems()
        if self._strategy in ("default", "cpu", "gpu"):
            self.device = self.requested_device
        self.batches.device = self.device
        return dist_dict

    def problem(self, role: str, learner: int):
        """The Betty problem of a stage: role in {"v", "w", "arch"}, learner index from 0."""
        try:
            return self.stages[(role, learner)]
        except KeyError:
            raise KeyError(f"no {role!r} stage for learner {learner} (K = {self.num_learners})") from None

    def train_step(self):
        self.batches.advance()
        super().train_step()

    def step(self) -> None:
        """One SGL iteration: every V, W and architecture problem steps once."""
        self.train()
        self.global_step += 1
        self.train_step()

    @property
    def last_hypergrad(self) -> dict[int, list[torch.Tensor] | None]:
        """Per learner, the gradient last applied to its architecture (before the optimizer step)."""
        return {k: self.problem("arch", k).last_hypergrad for k in range(self.num_learners)}

    def metrics(self) -> dict[str, float]:
        """The last step's metrics as flat floats: ``learner{k}/{stage}_{name}``."""
        flat: dict[str, float] = {}
        for (role, learner), problem in sorted(self.stages.items(), key=lambda item: (item[0][1], item[0][0])):
            for name, value in problem.last_metrics.items():
                value = value.item() if isinstance(value, torch.Tensor) else float(value)
                flat[f"learner{learner}/{role}_{name}"] = value
        return flat

    @torch.no_grad()
    def validation(self):
        """Accuracy of every learner's W network on one validation batch, in eval mode."""
        x, y = self.batches.get("val")
        stats = {}
        for k in range(self.num_learners):
            w_stage = self.problem("w", k)
            logits = w_stage.module(x, w_stage.architecture())
            stats[f"learner{k}/val_acc"] = (logits.argmax(-1) == y).float().mean().item()
        return stats
