"""One batch per data split per engine step, shared by every problem that reads that split.

V_k, W_k and the pseudo-labellers all see the same D_tr / D_u batch within a step, so each
split is loaded (and moved to the device) once per step, not once per problem.

A step loads its batches when it starts, before its first problem runs: every split the step
before used (the architecture's D_val only once the architecture trains). The host loads
between two steps, where the GPU can still be running the last step's queued kernels, and the
copies from pinned memory go ahead asynchronously, instead of the host stopping to load in the
middle of the step. A checkpoint between two steps holds no batch loaded ahead.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def _to_device(batch, device, channels_last=False):
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(item, device, channels_last) for item in batch)
    if isinstance(batch, dict):
        return {key: _to_device(item, device, channels_last) for key, item in batch.items()}
    return batch


def _shuffle_generator(source) -> torch.Generator | None:
    generator = getattr(getattr(source, "sampler", None), "generator", None)
    if generator is None:
        generator = getattr(source, "generator", None)
    return generator if isinstance(generator, torch.Generator) else None


class SharedBatches:
    """Restartable per-split iterators with a per-step cache.

    ``sources`` maps a split name to any re-iterable (a DataLoader, a list of batches, ...).
    An exhausted split starts its next epoch; ``epochs[split]`` counts completed passes.
    Labelled splits must yield (x, y); the unlabelled split may yield x or (x, anything).
    """

    LABELED = ("train", "val")

    def __init__(self, sources: dict[str, Iterable], device="cpu", channels_last: bool = False):
        self.sources = {name: src for name, src in sources.items() if src is not None}
        self.device = device
        self.channels_last = channels_last
        self.epochs = {name: 0 for name in self.sources}
        self.batches_in_epoch = {name: 0 for name in self.sources}
        self._iterators = {}
        self._epoch_start_generator = {}
        self._current = {}
        # The splits this step loaded: the next step loads them as it starts.
        self._used: list[str] = []
        self._memo = {}
        self.step = 0

    def advance(self) -> None:
        """Start a new engine step: load its batch of every split the last step used; the
        first ``get`` of any other split loads a fresh one."""
        ahead = [split for split in self.sources if split in self._used]
        self._current.clear()
        self._used = []
        self._memo.clear()
        self.step += 1
        for split in ahead:
            self.get(split)

    def memo(self, key, compute):
        """A value derived from this step's batches, computed once per step (pseudo-labels)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def get(self, split: str):
        if split not in self._current:
            self._current[split] = _to_device(
                self._normalise(split, self._next(split)), self.device, self.channels_last
            )
            self._used.append(split)
        return self._current[split]

    def _start_epoch(self, split: str) -> None:
        source = self.sources[split]
        # A DistributedSampler reshuffles per epoch only when told which epoch it is.
        sampler = getattr(source, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epochs[split])
        # The shuffle of an epoch is drawn from the loader's generator when its iterator is made;
        # its state then is what a resumed run needs to replay the same order.
        generator = _shuffle_generator(source)
        self._epoch_start_generator[split] = (
            generator.get_state() if generator is not None else None
        )
        self._iterators[split] = iter(source)

    def _next(self, split: str):
        if split not in self.sources:
            raise KeyError(f"no data was given for the {split!r} split")
        if split not in self._iterators:
            self._start_epoch(split)
        try:
            batch = next(self._iterators[split])
        except StopIteration:
            self.epochs[split] += 1
            self.batches_in_epoch[split] = 0
            self._start_epoch(split)
            try:
                batch = next(self._iterators[split])
            except StopIteration:
                raise ValueError(
                    f"the {split!r} data yielded no batch after a restart: pass a re-iterable "
                    "(a DataLoader or a list), not a one-shot generator, and check it is not empty"
                ) from None
        self.batches_in_epoch[split] += 1
        return batch

    def state_dict(self) -> dict:
        """The data position: per split the epoch, the batches taken in it and its shuffle seed;
        the splits the next step loads as it starts (a resumed run loads them at the same
        moment, so augmentations draw the same random numbers)."""
        return {
            "step": self.step,
            "ahead": list(self._used),
            "splits": {
                split: {
                    "epochs": self.epochs[split],
                    "batches_in_epoch": self.batches_in_epoch[split],
                    "generator": self._epoch_start_generator.get(split),
                    "started": split in self._iterators,
                }
                for split in self.sources
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Return to a saved data position by replaying the epoch's order up to it."""
        self.step = state["step"]
        self._current.clear()
        self._memo.clear()
        # Checkpoints from before loading ahead: the next step loads lazily, as it then did.
        self._used = list(state.get("ahead", []))
        self._iterators.clear()
        for split, saved in state["splits"].items():
            if split not in self.sources or not saved["started"]:
                continue
            self.epochs[split] = saved["epochs"]
            generator = _shuffle_generator(self.sources[split])
            if generator is not None and saved["generator"] is not None:
                generator.set_state(saved["generator"])
            sampler = getattr(self.sources[split], "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epochs[split])
            self._epoch_start_generator[split] = saved["generator"]
            self._iterators[split] = iter(self.sources[split])
            for _ in range(saved["batches_in_epoch"]):
                next(self._iterators[split])
            self.batches_in_epoch[split] = saved["batches_in_epoch"]

    def _normalise(self, split: str, batch):
        if split in self.LABELED:
            if not (isinstance(batch, (list, tuple)) and len(batch) >= 2):
                raise ValueError(
                    f"the {split!r} data must yield (x, y) pairs, got {type(batch).__name__}"
                )
            return batch[0], batch[1]
        if isinstance(batch, (list, tuple)):
            return batch[0]
        return batch
