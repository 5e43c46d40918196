"""What the three SGL stages share: a Betty ImplicitProblem with a role, a learner index and
the engine's per-step batches. The stages themselves only define their loss."""

from __future__ import annotations

import torch
from betty.configs import Config
from betty.problems import ImplicitProblem

from sgl_betty.config import SGLConfig

from .non_finite import NonFiniteWatch


def detach_tree(value):
    """Detach every tensor in what an architecture's ``forward()`` returns."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, dict):
        return {key: detach_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = [detach_tree(item) for item in value]
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    return value


def accuracy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Top-1 accuracy for classification batches; None where it does not apply (regression)."""
    if logits.dim() != 2 or target.dim() != 1 or target.dtype.is_floating_point:
        return None
    return (logits.argmax(dim=-1) == target).float().mean()


class SGLStage(ImplicitProblem):
    """Base of the V, W and architecture stages of one learner."""

    role: str = ""

    def __init__(
        self,
        learner,
        module,
        optimizer,
        scheduler,
        batches,
        sgl: SGLConfig,
        betty_config: Config,
        non_finite: NonFiniteWatch | None = None,
    ):
        super().__init__(
            name=f"{self.role}_{learner}",
            config=betty_config,
            module=module,
            optimizer=optimizer,
            scheduler=scheduler,
        )
        self.learner = learner
        self.batches = batches
        self.sgl = sgl
        # True only while Betty computes this problem's own descent step; solvers that
        # re-evaluate the loss for a hypergradient see False.
        self.descending = False
        # Set by the engine when it runs data-parallel (engine/data_parallel.py): averages the
        # gradients over the processes before each step.
        self.average_gradients = None
        # Metrics stay device tensors: the engine reads them only when asked (``metrics()``).
        self.last_metrics: dict[str, torch.Tensor | float] = {}
        # Where the stage's loss (and the architecture's hypergradient) is watched for NaN/inf.
        self.non_finite = non_finite if non_finite is not None else NonFiniteWatch()
        # Set by the engine where a hypergradient differentiates the step this problem takes:
        # called before each optimizer step, it returns what the solvers need of that step
        # (engine/unrolled.py), kept as ``last_step``.
        self.step_recorder = None
        self.last_step = None
        # torch.compile(module) where SGLConfig.compile is on; used by ``network()``.
        self.compiled_module = None

    def network(self):
        """The network to call: the compiled one in the own descent step (a single backward
        pass), the eager module for every re-evaluation by a hypergradient solver (double
        backward, perturbed or swapped weights)."""
        if self.compiled_module is not None and self.descending:
            return self.compiled_module
        return self.module

    def training_step_exec(self, batch):
        # Mixed precision is for the descent step only: hypergradient solvers re-evaluate this
        # loss in float32 (engine/precision.py). Betty's own switch autocasts on CUDA only; this
        # follows the problem's device.
        if self.sgl.autocast_dtype is None or not self.descending:
            return self.training_step(batch)
        with torch.autocast(
            device_type=torch.device(self.device).type, dtype=self.sgl.autocast_dtype
        ):
            return self.training_step(batch)

    def loss_terms(self, batch) -> list:
        """The loss a hypergradient solver re-evaluates, as terms (callables) whose sum it is;
        a solver may hold one term's graph at a time (``engine/loss_graphs.py``)."""
        return [lambda: self.training_step_exec(batch)]

    def get_loss(self, batch):
        """Betty's ``get_loss`` (the loss of the own descent step) without its ``loss.item()``:
        the loss, its metric and its finiteness stay on the device."""
        self.descending = True
        try:
            loss = self.training_step_exec(batch)
        finally:
            self.descending = False
        self.watch("loss", loss)
        lr = self.optimizer.param_groups[0]["lr"]
        self.last_metrics.update(loss=loss.detach(), lr=lr)
        return loss / self.gas, {"loss": loss.detach()}

    def grad_callback(self):
        # Betty calls this between the backward pass (hypergradient included) and the step.
        if self.average_gradients is not None:
            self.average_gradients()
        if self.step_recorder is not None:
            self.last_step = self.step_recorder(self)

    def clip_grad(self):
        # Betty clips between grad_callback and the optimizer step; the factor applied is part of
        # the step taken, which a hypergradient may differentiate.
        norm = torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), self.gradient_clipping)
        if self.last_step is not None:
            self.last_step.clip_scale = torch.clamp(self.gradient_clipping / (norm + 1e-6), max=1.0)

    def watch(self, what: str, value: torch.Tensor) -> None:
        """Hand a scalar to the non-finite watch (read by ``SGLEngine.check_finite``)."""
        self.non_finite.observe(self.role, self.learner, what, value)

    def record(self, **metrics) -> None:
        """Keep metrics of the own descent step only (not of solver re-evaluations)."""
        if self.descending:
            self.last_metrics.update({k: v.detach() for k, v in metrics.items() if v is not None})

    def architecture_weights(self, architecture) -> object:
        """What ``architecture()`` returns, detached during this stage's own descent: its backward
        never reaches the architecture (Betty's first-order descent), and the forward then saves
        less for it (no op outputs kept for the architecture's gradient)."""
        weights = architecture()
        return detach_tree(weights) if self.descending and self._first_order else weights

    def weight_penalty(self) -> torch.Tensor | float:
        if self.sgl.l2_in_loss == 0:
            return 0.0
        return 0.5 * self.sgl.l2_in_loss * sum(p.pow(2).sum() for p in self.module.parameters())
