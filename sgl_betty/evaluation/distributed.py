"""Data-parallel training across processes started by ``torchrun``.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK in each process's environment; with a world of
more than one process the run joins a process group (gloo on CPU, nccl on CUDA) and every
collective below reaches all ranks. Without those variables everything is a single-process
no-op, so the same code runs unchanged on one device.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from sgl_betty.runtime import process_device


@dataclass(frozen=True)
class DistributedContext:
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
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """The context of this process; joins the process group on first use under torchrun.

    ``device`` is the device type the run asked for; under torchrun a CUDA run takes this
    process's GPU (``sgl_betty.runtime.cuda_device_index``).
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
    """SHA-256 of every parameter and buffer, by name: equal only for bitwise-equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()
