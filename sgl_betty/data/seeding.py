"""Independent, reproducible random streams derived from one seed."""

from __future__ import annotations

import numpy as np
import torch


def seeded_generator(seed: int, *stream: int) -> torch.Generator:
    """A torch.Generator for the stream ``(seed, *stream)``.

    Distinct streams are statistically independent (NumPy's SeedSequence mixing), so
    seeds like ``seed`` and ``seed + 1`` never share draws across purposes.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    high, low = np.random.SeedSequence([seed, *stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(high) << 32 | int(low))
