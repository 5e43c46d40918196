"""The process a run lives in, shared by the engine, the search and the evaluation.

Questions every run answers before its first kernel: which device it computes on
(``resolve_device``; on a GPU machine, which GPU: ``cuda_device_index``, ``process_device``),
whether it trades speed for run-to-run identical results (``configure_backends``), how its
random streams start (``seed_everything``), what hardware it ran on (``machine_description``),
and which processes it shares the work with (``DistributedContext``, ``init_distributed``).

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment; with a world of
more than one process the run joins a process group (gloo on CPU, nccl on CUDA) and every
collective of the context reaches all ranks. Without those variables everything is a
single-process no-op, so the same code runs unchanged on one device.

Two more a computation asks of the process state: which random numbers it draws
(``RandomState``, to draw them again) and which arithmetic its float32 work gets
(``float32_arithmetic``: autocast and TF32-style switches).
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from sgl_betty.errors import ConfigError

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


def resolve_device(name: str) -> torch.device:
    """The device of a run's ``device`` setting: ``auto`` (a GPU when one is visible), ``cpu``,
    ``cuda``; ``cuda`` without a visible GPU is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random streams (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def machine_description(device: torch.device) -> str:
    """The hardware a run computes on, as a summary records it (the GPU's name, or the CPU's
    architecture and torch's thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the processes of a run, and the collectives between them."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float] | torch.Tensor) -> list[float]:
        """The sums over every rank of ``values`` (floats, or a 1-d tensor on any device: then
        the only host sync is the final read)."""
        tensor = torch.as_tensor(values, dtype=torch.float64)
        if self.enabled:
            tensor = tensor.to(self._collective_device)
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()

    def gather(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere.

        DDP keeps parameters equal through the averaged gradients, but each rank updates its
        running statistics from its own batches after the last broadcast; this makes every rank
        test, save and checksum one and the same network.
        """
        if not self.enabled:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @property
    def _collective_device(self) -> torch.device:
        # nccl only moves CUDA tensors; gloo takes CPU ones.
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def launched_distributed() -> bool:
    """True when started by torchrun (or another launcher) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """The context of this process; joins the process group on first use under torchrun.

    ``device`` is the device type the run asked for; under torchrun a CUDA run takes this
    process's GPU (``cuda_device_index``).
    """
    if not launched_distributed():
        return DistributedContext(rank=0, world_size=1, local_rank=0, device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # all_gather_object and nccl collectives use the current device, which this sets.
    device = process_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 of every parameter and buffer, by name: equal only for bitwise-equal weights
    (what every rank of a data-parallel run must hold)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


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
