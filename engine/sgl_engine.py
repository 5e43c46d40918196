"""SGLEngine: Betty's Engine with the project's scheduling, device choice and metrics.

Betty runs the graph: each step it steps the leaves (the V stages, or the W stage when K = 1),
and every problem steps its uppers once all of their lowers have stepped, which is the paper's
Algorithm 1 (all V, then all W, then all A). This class only adds what Betty lacks.

A step never reads a value back to the host (on a GPU that would wait for the device): the
metrics and the non-finite watch stay on the device until ``metrics()`` and ``check_finite()``
read them, which the recipe does on its logging steps and before checkpoints.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from betty.engine import Engine
from betty.logging.logger_base import get_logger

from sgl_betty.problems import NonFiniteWatch
from sgl_betty.runtime import process_device

from .batches import SharedBatches
from .data_parallel import GradientAverage


def launched_distributed() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class SGLEngine(Engine):
    def __init__(
        self,
        problems,
        config,
        dependencies,
        batches: SharedBatches,
        device,
        num_learners: int,
        non_finite: NonFiniteWatch | None = None,
    ):
        self.requested_device = torch.device(device)
        self.batches = batches
        self.non_finite = non_finite if non_finite is not None else NonFiniteWatch()
        self.num_learners = num_learners
        self.distributed = launched_distributed()
        # Betty logs every problem's wiring at INFO; with 3K problems that buries the run's output.
        get_logger().setLevel(logging.WARNING)
        super().__init__(problems, config=config, dependencies=dependencies)
        self.stages = {(p.role, p.learner): p for p in self.problems}
        if self.distributed:
            self._start_data_parallel()

    def configure_systems(self):
        """Device and processes. Under a launcher (torchrun) every process runs the whole graph on
        its shard of each batch, and gradients are averaged across processes before every
        optimizer step. Betty's own strategy wraps modules in DDP, which needs CUDA
        (it divides by the GPU count) and does not see the autograd.grad calls of the
        hypergradient solvers; this works on CPU (gloo) and GPU (nccl) alike."""
        dist_dict = super().configure_systems()
        self.device = self.requested_device
        if self.distributed:
            if not dist.is_initialized():
                backend = "nccl" if self.requested_device.type == "cuda" else "gloo"
                dist.init_process_group(backend=backend)
            self._world_size = dist.get_world_size()
            self._rank = dist.get_rank()
            self._local_rank = int(os.environ.get("LOCAL_RANK", self._rank))
            self.device = process_device(self.requested_device)
            dist_dict.update(
                world_size=self._world_size, rank=self._rank, local_rank=self._local_rank
            )
        self.batches.device = self.device
        return dist_dict

    def _start_data_parallel(self) -> None:
        backend = dist.get_backend()
        for problem in self.problems:
            for tensor in list(problem.module.parameters()) + list(problem.module.buffers()):
                dist.broadcast(tensor.data, src=0)
            problem.average_gradients = GradientAverage(
                problem.trainable_parameters(), self._world_size, backend
            )

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return max(self._world_size, 1)

    def state_dict(self) -> dict:
        """Everything the graph needs to continue exactly: per problem its module, optimizer,
        scheduler and step count; the engine's step; the data position."""
        return {
            "global_step": self.global_step,
            "problems": {p.name: {**p.state_dict(), "count": p._count} for p in self.problems},
            "batches": self.batches.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = state["global_step"]
        for problem in self.problems:
            saved = state["problems"][problem.name]
            problem.load_state_dict(saved)
            problem._count = saved["count"]
        self.batches.load_state_dict(state["batches"])

    def problem(self, role: str, learner: int):
        """The Betty problem of a stage: role in {"v", "w", "arch"}, learner index from 0."""
        try:
            return self.stages[(role, learner)]
        except KeyError:
            raise KeyError(
                f"no {role!r} stage for learner {learner} (K = {self.num_learners})"
            ) from None

    def train_step(self):
        self.batches.advance()
        super().train_step()
        self.non_finite.end_step(self.batches.step)

    def check_finite(self) -> None:
        """Raise NonFiniteError naming the learner, stage and step of the first NaN or infinite
        loss or hypergradient since the engine started (one host read)."""
        self.non_finite.check(now=self.batches.step)

    def run(self):
        """Betty's loop over ``train_iters`` steps, then the non-finite check."""
        super().run()
        self.check_finite()

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
        """The last step's metrics as flat floats: ``learner{k}/{stage}_{name}`` (one host read
        for all of them)."""
        names, values = [], []
        for (role, learner), problem in sorted(
            self.stages.items(), key=lambda item: (item[0][1], item[0][0])
        ):
            for name, value in problem.last_metrics.items():
                names.append(f"learner{learner}/{role}_{name}")
                values.append(value)
        tensors = [v.detach().reshape(()).double() for v in values if isinstance(v, torch.Tensor)]
        read = iter(torch.stack(tensors).tolist() if tensors else [])
        return {
            name: next(read) if isinstance(value, torch.Tensor) else float(value)
            for name, value in zip(names, values)
        }

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
