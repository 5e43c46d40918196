"""Test-suite settings, set before torch initialises CUDA.

- No GPU: CUDA_VISIBLE_DEVICES="" hides every GPU from this process and from the processes the
  tests start (torchrun, the recipes), so ``device=auto`` resolves to the CPU on a GPU machine
  too and the CPU figures and bitwise comparisons the tests assert hold everywhere. The GPU is
  checked by ``make gpu-check`` (benchmarks/gpu_check.py).
- One thread: the networks here are tiny, where one thread beats two (no contention).
"""

import os

os.environ["CUDA_VISIBLE_DEVICES"] = ""

import torch  # noqa: E402  (after the environment it reads)

torch.set_num_threads(1)
# The recipes respect it (they choose threads themselves otherwise), and subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
