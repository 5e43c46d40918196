"""What SGL needs of a learner's networks and architecture, as ``typing.Protocol`` classes.

SGL is not tied to the DARTS cell: any ``nn.Module`` pair that keeps these contracts works.

- A network (V_k, W_k) is called as ``net(x, arch_weights)``, with ``arch_weights`` whatever the
  architecture's ``forward()`` returned (a tensor, a tuple, a dict ...), and returns logits.
- An architecture (A_k) is called with no argument and returns those weights; its
  ``parameters()`` are what the architecture stage optimises.
- Optional: a network whose behaviour changes over the search (DARTS-'s decaying skip, P-DARTS's
  skip dropout) has ``set_search_progress(progress)`` with progress in [0, 1]; an architecture
  whose weights are not a softmax per edge (PC-DARTS's edge normalisation) has
  ``normalized_weights()``, which the recipes record instead of the softmax.

The protocols are ``runtime_checkable``, so ``isinstance`` checks that the methods exist;
``check_network`` and ``check_architecture`` also check that ``forward`` accepts the call SGL
makes, and say what to change where it does not.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class SearchableNetwork(Protocol):
    """V_k or W_k: ``net(x, arch_weights) -> logits``."""

    def __call__(self, x: torch.Tensor, arch_weights: Any) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


@runtime_checkable
class ProgressAwareNetwork(SearchableNetwork, Protocol):
    """A network that changes over the search; the recipes call this once per step."""

    def set_search_progress(self, progress: float) -> None: ...


@runtime_checkable
class ArchitectureModule(Protocol):
    """A_k: ``arch() -> arch_weights``, trained through ``parameters()``."""

    def __call__(self) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


@runtime_checkable
class NormalizedArchitecture(ArchitectureModule, Protocol):
    """An architecture with its own normalisation of the weights: name -> tensor."""

    def normalized_weights(self) -> dict[str, torch.Tensor]: ...


def _accepts(module: nn.Module, positional: int) -> bool:
    try:
        signature = inspect.signature(module.forward)
    except (TypeError, ValueError):  # a builtin or scripted forward: nothing to inspect
        return True
    try:
        signature.bind(*([None] * positional))
    except TypeError:
        return False
    return True


def _forward_text(module: nn.Module) -> str:
    try:
        return f"{type(module).__name__}.forward{inspect.signature(module.forward)}"
    except (TypeError, ValueError):
        return f"{type(module).__name__}.forward"


def check_network(net: nn.Module, name: str) -> None:
    """Raise TypeError unless ``net`` can be called as ``net(x, arch_weights)``."""
    if not _accepts(net, 2):
        raise TypeError(
            f"{name}: SGL calls each network as net(x, arch_weights) "
            f"(sgl_betty.contracts.SearchableNetwork), but {_forward_text(net)} does not take "
            "two arguments; add the architecture weights as forward's second argument"
        )


def check_architecture(arch: nn.Module, name: str) -> None:
    """Raise TypeError unless ``arch()`` can be called and ``arch`` has parameters to train."""
    if not _accepts(arch, 0):
        raise TypeError(
            f"{name}: SGL calls the architecture as arch() to get the weights it passes to the "
            f"networks (sgl_betty.contracts.ArchitectureModule), but {_forward_text(arch)} "
            "needs arguments; make forward() take none and return the architecture weights"
        )
    if not any(True for _ in arch.parameters()):
        raise TypeError(
            f"{name}: {type(arch).__name__} has no parameters, so the architecture stage has "
            "nothing to learn; register the architecture weights as nn.Parameter"
        )
