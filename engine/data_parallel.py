"""Gradient averaging across processes (torchrun): one collective per problem per step.

Every process runs the whole SGL graph on its shard of each batch; before each optimizer step a
problem's gradients (hypergradients included) are averaged over the processes. Averaging each
of the supernet's hundreds of parameter tensors with its own all-reduce costs a collective's
latency per tensor; here a problem copies its gradients into one persistent flat buffer per
dtype and device (one, in practice), reduces it once, and copies the averages back into the
gradients, which keep their own layout (channels-last included).

NCCL averages in the collective (``ReduceOp.AVG``); gloo has no AVG, so there the buffer is
summed and divided once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# Backends whose all-reduce averages (ReduceOp.AVG); the others sum, then divide.
AVERAGING_BACKENDS = ("nccl",)


class GradientAverage:
    """Averages the gradients of ``params`` over ``world_size`` processes when called."""

    def __init__(self, params, world_size: int, backend: str):
        self.params = list(params)
        self.world_size = world_size
        self.averages = backend in AVERAGING_BACKENDS
        self._groups: list[tuple[list[torch.nn.Parameter], torch.Tensor, list[torch.Tensor]]] = []

    def _build_groups(self) -> None:
        by_kind: dict[tuple, list[torch.nn.Parameter]] = {}
        for param in self.params:
            by_kind.setdefault((param.dtype, param.device), []).append(param)
        for (dtype, device), params in by_kind.items():
            flat = torch.empty(sum(p.numel() for p in params), dtype=dtype, device=device)
            views = [
                view.view(p.shape)
                for view, p in zip(flat.split([p.numel() for p in params]), params)
            ]
            self._groups.append((params, flat, views))

    def __call__(self) -> None:
        if not self._groups:
            self._build_groups()
        for params, flat, views in self._groups:
            for param in params:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            grads = [param.grad for param in params]
            torch._foreach_copy_(views, grads)
            if self.averages:
                dist.all_reduce(flat, op=dist.ReduceOp.AVG)
            else:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat.div_(self.world_size)
            torch._foreach_copy_(grads, views)
