"""The paper's D_tr / D_val split of a training set, and views over datasets."""

from __future__ import annotations

import math

from torch.utils.data import Dataset, Subset


def darts_split(num_examples: int, train_portion: float = 0.5) -> tuple[range, range]:
    """D_tr = the first ``floor(train_portion * n)`` training images, D_val = the rest.

    Deterministic and unshuffled, as in DARTS (indices[:split], indices[split:]).
    """
    if not 0.0 < train_portion < 1.0:
        raise ValueError(f"train_portion must be in (0, 1), got {train_portion}")
    split = int(math.floor(train_portion * num_examples))
    return range(0, split), range(split, num_examples)


def first(indices: range, limit: int | None) -> range:
    """The first ``limit`` indices (all of them when limit is None)."""
    if limit is None:
        return indices
    if limit <= 0:
        raise ValueError(f"limit must be a positive number of examples, got {limit}")
    return indices[:limit]


def subset(dataset: Dataset, indices: range) -> Subset:
    return Subset(dataset, list(indices))


class WithoutLabels(Dataset):
    """Yields only the image of each (image, label) pair of a labeled dataset."""

    def __init__(self, labeled: Dataset) -> None:
        self.labeled = labeled

    def __len__(self) -> int:
        return len(self.labeled)

    def __getitem__(self, index: int):
        return self.labeled[index][0]
