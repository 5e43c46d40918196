"""SharedBatches loads a step's batches as the step starts, and resumes to the same batches and
the same random numbers as a run that never stopped."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from sgl_betty.engine.batches import SharedBatches


class Augmented(Dataset):
    """12 items whose augmentation draws from torch's global RNG, as the recipes' transforms do
    in the main process (num_workers=0)."""

    def __init__(self, offset: float):
        self.offset = offset

    def __len__(self):
        return 12

    def __getitem__(self, index):
        return torch.full((2,), self.offset + index) + torch.rand(2), index


def loaders(seed: int = 0) -> dict[str, DataLoader]:
    def loader(offset, stream):
        generator = torch.Generator().manual_seed(seed + stream)
        return DataLoader(
            Augmented(offset), batch_size=4, shuffle=True, drop_last=True, generator=generator
        )

    return {"train": loader(0.0, 0), "val": loader(100.0, 1), "unlabeled": loader(200.0, 2)}


class Recorded:
    """A source that logs each batch it hands out."""

    def __init__(self, name, source, log):
        self.name, self.source, self.log = name, source, log

    def __iter__(self):
        for batch in self.source:
            self.log.append(self.name)
            yield batch


def test_a_step_loads_what_the_last_step_used_before_its_problems_ask():
    log: list[str] = []
    batches = SharedBatches({name: Recorded(name, src, log) for name, src in loaders().items()})
    batches.advance()
    assert log == []  # the first step knows nothing yet: it loads on demand
    batches.get("train")
    batches.get("val")
    assert log == ["train", "val"]

    log.clear()
    batches.advance()
    assert log == ["train", "val"]  # loaded as the step starts; D_u was not used
    first = batches.get("train")
    assert batches.get("train") is first and log == ["train", "val"]  # once per step
    batches.get("unlabeled")  # a split the last step did not use loads when first asked for
    assert log == ["train", "val", "unlabeled"]

    log.clear()
    batches.advance()
    assert log == ["train", "val", "unlabeled"]


def one_step(batches: SharedBatches) -> tuple:
    """A step that draws random numbers between its reads of two splits (dropout, drop path)."""
    batches.advance()
    x, _ = batches.get("train")
    noise = torch.rand(3)
    v, _ = batches.get("val")
    return x.clone(), noise, v.clone()


def test_resume_loads_the_same_batches_at_the_same_moment_as_the_uninterrupted_run():
    torch.manual_seed(0)
    full = SharedBatches(loaders())
    steps = [one_step(full) for _ in range(4)]
    state, rng = full.state_dict(), torch.get_rng_state()
    # Past the end of an epoch (3 batches each).
    steps += [one_step(full) for _ in range(4)]

    resumed = SharedBatches(loaders())
    torch.manual_seed(123)  # the resumed process starts elsewhere; its checkpoint restores both
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    again = [one_step(resumed) for _ in range(4)]

    for expected, got in zip(steps[4:], again, strict=True):
        for a, b in zip(expected, got, strict=True):
            assert torch.equal(a, b)
    assert positions(resumed) == positions(full)
    assert state["ahead"] == ["train", "val"]


def positions(batches: SharedBatches) -> dict:
    splits = batches.state_dict()["splits"]
    return {name: (s["epochs"], s["batches_in_epoch"]) for name, s in splits.items()}


def test_a_checkpoint_from_before_loading_ahead_still_resumes():
    batches = SharedBatches(loaders())
    one_step(batches)
    state = batches.state_dict()
    del state["ahead"]
    resumed = SharedBatches(loaders())
    resumed.load_state_dict(state)
    resumed.advance()
    assert resumed.state_dict()["splits"]["train"]["batches_in_epoch"] == 1  # lazily, as then
