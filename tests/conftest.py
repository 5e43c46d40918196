"""Test-suite settings: the networks here are tiny, where one thread beats two (no contention)."""

import torch

torch.set_num_threads(1)
