"""Test-suite settings: the networks here are tiny, where one thread beats two (no contention)."""

import os

import torch

torch.set_num_threads(1)
# The recipes respect it (they choose threads themselves otherwise), and subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
