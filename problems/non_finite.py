"""Non-finite losses and hypergradients, watched on the device and read only when asked.

Testing each loss with ``torch.isfinite(loss)`` in an ``if`` waits for the GPU to finish
everything queued before it, several times per step. Here the stages only hand their values to
``NonFiniteWatch.observe``; at the end of each engine step one stacked test updates, on the
device, the first step at which each watched value was NaN or infinite (and that value). The
host reads that record in ``check()``: the recipe does so every ``run.log_every`` steps and before
every checkpoint, so a checkpoint never holds a non-finite state, and the error still names the
learner, the stage and the step of the first non-finite value, however many steps later it is
read.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class NonFiniteError(FloatingPointError):
    """A loss or hypergradient became NaN or infinite; the message names learner, stage and step."""


NEVER = torch.iinfo(torch.int64).max


class NonFiniteWatch:
    """Per watched value (a stage's loss, an architecture's hypergradient norm), the first step
    at which it was non-finite, kept on the device."""

    def __init__(self):
        # (role, learner, what) per slot, in the order the values were first observed: the
        # order the problems run in within a step.
        self.slots: list[tuple[str, int, str]] = []
        self._index: dict[tuple[str, int, str], int] = {}
        self._pending: dict[int, torch.Tensor] = {}
        self.first_step: torch.Tensor | None = None
        self.first_value: torch.Tensor | None = None

    def observe(self, role: str, learner: int, what: str, value: torch.Tensor) -> None:
        """Remember ``value`` (a scalar tensor) for this step's test; no host sync."""
        key = (role, learner, what)
        if key not in self._index:
            self._index[key] = len(self.slots)
            self.slots.append(key)
        self._pending[self._index[key]] = value.detach().reshape(()).float()

    def end_step(self, step: int) -> None:
        """Test the values observed during ``step`` (one stacked test, on the device)."""
        if not self._pending:
            return
        device = next(iter(self._pending.values())).device
        self._grow(device)
        finite = torch.zeros((), device=device)
        values = torch.stack([self._pending.get(i, finite) for i in range(len(self.slots))])
        self._pending.clear()
        newly = ~torch.isfinite(values) & (self.first_step == NEVER)
        self.first_step = torch.where(newly, step, self.first_step)
        self.first_value = torch.where(newly, values, self.first_value)

    def _grow(self, device) -> None:
        known = 0 if self.first_step is None else self.first_step.numel()
        missing = len(self.slots) - known
        if missing == 0:
            return
        steps = torch.full((missing,), NEVER, dtype=torch.int64, device=device)
        values = torch.zeros(missing, device=device)
        if self.first_step is None:
            self.first_step, self.first_value = steps, values
        else:
            self.first_step = torch.cat([self.first_step, steps])
            self.first_value = torch.cat([self.first_value, values])

    def check(self, now: int | None = None) -> None:
        """Read the record (one host read; under torchrun one all-reduce, so that every process
        stops together) and raise NonFiniteError for the first non-finite value."""
        if self.first_step is None:
            return
        first = self.first_step
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            first = first.clone()
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        steps = first.tolist()
        earliest = min(steps)
        if earliest == NEVER:
            return
        slot = steps.index(earliest)  # the first problem to run among those of that step
        role, learner, what = self.slots[slot]
        if self.first_step[slot].item() == earliest:
            value = f"{self.first_value[slot].item()}"
        else:
            value = "on another process"
        found = f", found when read at step {now}" if now is not None and now != earliest else ""
        raise NonFiniteError(
            f"non-finite {what} ({value}) in the {role} stage of learner {learner} at step "
            f"{earliest}{found}: lower the learning rate, enable gradient clipping "
            "(search.grad_clip in the recipes, grad_clip_* in SGLConfig), or check the data "
            "for NaN/inf values; checkpoints are written only after this check passed, so the "
            f"last one holds a state from before step {earliest}"
        )
