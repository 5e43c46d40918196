"""Process-level device settings shared by the engine, the search and the evaluation.

Two questions every run on a GPU answers before its first kernel: which GPU this process uses
(``cuda_device_index``, ``process_device``), and whether it trades speed for run-to-run
identical results (``configure_backends``). And two a computation asks of the process state:
which random numbers it draws (``RandomState``, to draw them again) and which arithmetic its
float32 work gets (``float32_arithmetic``: autocast and TF32-style switches).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager

import torch

# cuBLAS needs a fixed workspace to be deterministic (the value the CUDA docs and PyTorch name).
CUBLAS_DETERMINISTIC_WORKSPACE = ":4096:8"


def cuda_device_index(
    environ: Mapping[str, str] | None = None, device_count: int | None = None
) -> int:
    """The index, among the GPUs this process sees, of the GPU it should use.

    The process's position on its node is ``LOCAL_RANK`` (torchrun) or ``SLURM_LOCALID`` (srun),
    0 without either. When every process sees all of the node's GPUs that position is the
    index. When a launcher or the user gives each process its own ``CUDA_VISIBLE_DEVICES``
    (SLURM's ``--gpus-per-task``, for one), the process sees fewer GPUs than there are
    processes and the position modulo the visible count is the index: 0 with one GPU each.
    """
    environ = os.environ if environ is None else environ
    count = torch.cuda.device_count() if device_count is None else device_count
    if count < 1:
        raise RuntimeError(
            "no CUDA GPU is visible to this process (check CUDA_VISIBLE_DEVICES); "
            "use device=cpu or device=auto"
        )
    position = environ.get("LOCAL_RANK", environ.get("SLURM_LOCALID", "0"))
    try:
        position = int(position)
    except ValueError:
        raise RuntimeError(
            f"LOCAL_RANK / SLURM_LOCALID must be an integer, got {position!r}"
        ) from None
    return position % count


def process_device(requested: torch.device | str) -> torch.device:
    """The device this process computes on: for CUDA without an index, this process's GPU
    (``cuda_device_index``), made the current device so that collectives and new tensors use it;
    an explicit ``cuda:N`` or a CPU device is kept."""
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", cuda_device_index())
    torch.cuda.set_device(device)
    return device


def configure_backends(device: torch.device, deterministic: bool) -> None:
    """Set PyTorch's global algorithm choices for a run on ``device``.

    ``deterministic``: the same inputs give bitwise the same results on the same hardware and
    software (``torch.use_deterministic_algorithms``; cuDNN's deterministic convolutions without
    benchmarking; cuBLAS's fixed workspace, which has to be in the environment before the first
    cuBLAS call). An op without a deterministic CUDA kernel warns instead of stopping the run.
    Otherwise cuDNN benchmarks each convolution shape once on CUDA and keeps the fastest
    algorithm, which may differ from run to run.
    """
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic


class RandomState:
    """The random number generators' state of a device (and the CPU's) at one moment, to draw
    the same numbers (dropout masks) again: ``replay()`` returns the generators to it; inside
    ``replayed()`` they are there and afterwards back where they were."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(self.device) if self.cuda else None

    def replay(self) -> None:
        torch.set_rng_state(self.cpu_state)
        if self.cuda:
            torch.cuda.set_rng_state(self.cuda_state, self.device)

    @contextmanager
    def replayed(self):
        now = RandomState(self.device)
        self.replay()
        try:
            yield
        finally:
            now.replay()


# The switches that decide a float32 convolution's or matrix product's arithmetic, per device type.
_FLOAT32_BACKENDS = {"cuda": ("cudnn.conv", "cuda.matmul"), "cpu": ("mkldnn.conv", "mkldnn.matmul")}


def float32_arithmetic(device_type: str) -> tuple:
    """What decides the numbers float32 work on ``device_type`` gives right now: autocast (off, or
    its dtype) and the float32 precision of the device's convolution and matmul backends. Two
    computations with equal values compute the same numbers."""
    try:
        autocast = torch.is_autocast_enabled(device_type)
    except TypeError:  # PyTorch < 2.4
        autocast = torch.is_autocast_enabled() if device_type == "cuda" else False
    dtype = str(torch.get_autocast_dtype(device_type)) if autocast else None
    if not hasattr(torch.backends, "fp32_precision"):  # PyTorch < 2.9: the legacy flags
        legacy = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        return (dtype, *(legacy if device_type == "cuda" else ()))
    return (dtype, *(_effective_precision(name) for name in _FLOAT32_BACKENDS.get(device_type, ())))


def _effective_precision(name: str) -> str:
    """A backend's fp32_precision, "none" resolved through its parents (IEEE when none is set)."""
    parts = name.split(".")
    while parts:
        node = torch.backends
        for part in parts:
            node = getattr(node, part, None)
        value = getattr(node, "fp32_precision", "none")
        if value != "none":
            return value
        parts.pop()
    root = torch.backends.fp32_precision
    return "ieee" if root == "none" else root
