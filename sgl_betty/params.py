"""Model size as the DARTS papers report it."""

from __future__ import annotations

from torch import nn


def count_parameters_m(model: nn.Module) -> float:
    """Parameters in millions, leaving out the auxiliary head (any parameter whose name contains
    ``auxiliary``), as the reference DARTS code counts the published model sizes."""
    return (
        sum(param.numel() for name, param in model.named_parameters() if "auxiliary" not in name)
        / 1e6
    )
