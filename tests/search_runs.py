"""A tiny search run twice, as the run-folder tests need it: finished, and stopped after step 2
of 4 by a crash (its checkpoint holds step 2)."""

from pathlib import Path

import pytest
import torch

from sgl_betty.experiment.methods import SEARCH_METHODS

SEARCH = [
    "preset=tiny",
    "hypergrad.type=first_order",
    "search.epochs=2",
    "checkpoint.every_steps=1",
]


def crash_at_step_3(learners, progress):
    if progress >= 0.5:  # before the third of four steps
        raise RuntimeError("simulated crash")


def full_and_stopped_search(main, base: Path) -> tuple[Path, Path]:
    full, stopped = base / "full", base / "stopped"
    assert main("cifar100", [*SEARCH, f"run.dir={full}"]) == 0
    darts = SEARCH_METHODS["darts"]
    darts.on_step = crash_at_step_3
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", [*SEARCH, f"run.dir={stopped}"])
    finally:
        darts.on_step = None
    return full, stopped


def same_architectures(a: Path, b: Path) -> bool:
    left = torch.load(a / "architecture.pt", weights_only=True)
    right = torch.load(b / "architecture.pt", weights_only=True)
    return left.keys() == right.keys() and all(
        torch.equal(left[k][name], right[k][name]) for k in left for name in left[k]
    )
