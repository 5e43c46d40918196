"""Values a search changes as it runs (DARTS-'s auxiliary skip weight, P-DARTS's skip dropout
rate), held by the modules as 0-dim buffers.

A compiled network (``SGLConfig.compile``) reads a buffer as an input; a Python float would be a
constant of the compiled graph and each new value a recompilation. Setting the buffers costs no
host sync, and one fused kernel however many modules hold one. They are not part of the
``state_dict`` (the search sets them before every step), so checkpoints and saved networks are
as before.
"""

from __future__ import annotations

import torch
from torch import nn


def register_scalar(module: nn.Module, name: str, value: float) -> None:
    """A 0-dim float buffer ``name`` on ``module``, left out of its state_dict."""
    module.register_buffer(name, torch.tensor(float(value)), persistent=False)


def set_scalars(buffers: list[torch.Tensor], value: float) -> None:
    """Set every 0-dim buffer of ``buffers`` (one dtype and device) to ``value``."""
    if buffers:
        source = torch.full((), float(value), dtype=buffers[0].dtype, device=buffers[0].device)
        torch._foreach_copy_(buffers, [source] * len(buffers))


def inverted_dropout(x: torch.Tensor, rate: torch.Tensor, mask_shape=None) -> torch.Tensor:
    """Zero each element (or each slice of ``mask_shape``, broadcast over ``x``) with
    probability ``rate`` and scale the rest by 1 / (1 - rate); ``rate`` a tensor, so no branch
    on its value (rate 1 zeroes everything)."""
    keep = 1.0 - rate
    mask_shape = x.shape if mask_shape is None else mask_shape
    kept = torch.rand(mask_shape, device=x.device, dtype=x.dtype) < keep
    return torch.where(kept, x / keep, torch.zeros((), device=x.device, dtype=x.dtype))


class ScheduledDropout(nn.Module):
    """Inverted dropout at a rate the search sets (``p``), kept in the buffer ``rate``.

    While the rate is 0 the module is the identity and draws no random numbers (as
    ``nn.Dropout(0)``); the switch between the two is a Python flag, so a compiled network
    recompiles only when the rate crosses 0, not when it changes."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        register_scalar(self, "rate", p)
        self.active = p > 0
        self._p = float(p)

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self.note_rate(value)
        set_scalars([self.rate], value)

    def note_rate(self, value: float) -> None:
        """Record a rate written into ``rate`` by someone else (``set_scalars`` over many)."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"dropout rate must be in [0, 1], got {value}")
        self._p = float(value)
        self.active = value > 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.active):
            return x
        return inverted_dropout(x, self.rate)

    def extra_repr(self) -> str:
        return f"p={self._p}"
