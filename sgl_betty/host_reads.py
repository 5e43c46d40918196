"""Counting the host's reads of tensor values: on a GPU each one waits for the device.

A training step that never reads a value back keeps the GPU's queue full; one ``loss.item()``
drains it. ``count_host_reads`` counts, while its block runs, every read a CPU run can show:

- the Python-level reads (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``, ``float``, ``int``,
  ``index``), patched on ``torch.Tensor``;
- below them, what the dispatcher sees (``TorchDispatchMode``): ``aten._local_scalar_dense``
  (every scalar read, also from C++), device-to-host copies, and the ops whose output size depends
  on the values (``nonzero``, boolean-mask indexing, ``unique``...), which wait for the device
  to know how much memory to allocate.

What is not counted: reads of tensors that live on the host whatever the device (``ignore``:
PyTorch keeps an optimizer's ``step`` counters on the CPU, see ``host_resident_tensors``), and,
on a GPU run, reads of any CPU tensor. On a GPU, ``torch.cuda.set_sync_debug_mode`` sees the
rest (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

PYTHON_READS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
)
_aten = torch.ops.aten
# Ops whose output size is only known once the values are: on a GPU the host waits for them.
_VALUE_SHAPED = {
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten._unique2.default,
    _aten.unique_dim.default,
    _aten.unique_consecutive.default,
    _aten.repeat_interleave.Tensor,
}
_PACKAGE = Path(torch.__file__).parent
_HERE = Path(__file__)


@dataclass
class HostReads:
    """The reads seen: ``count`` and, per read, what read and where (the first frame outside
    torch), e.g. ``"item at problems/base.py:88"``."""

    events: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.events)


def host_resident_tensors(optimizers: Iterable[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The optimizers' per-parameter ``step`` counters kept on the CPU (Adam's, unless
    ``capturable`` or ``fused``): the optimizer reads them every step, and that waits for
    nothing."""
    found = []
    for optimizer in optimizers:
        for state in optimizer.state.values():
            step = state.get("step")
            if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                found.append(step)
    return found


def _caller() -> str:
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = Path(frame.filename)
        if path == _HERE or _PACKAGE in path.parents:
            continue
        return f"{path.name}:{frame.lineno} ({frame.name})"
    return "?"


Ignored = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


class _Counter(TorchDispatchMode):
    def __init__(self, reads: HostReads, device: torch.device, ignore: Ignored):
        super().__init__()
        self.reads = reads
        self.device_run = device.type != "cpu"
        self.ignore = ignore if callable(ignore) else (lambda tensors=tuple(ignore): tensors)
        # Inside a counted Python-level read, the dispatcher's view of it is the same read.
        self.depth = 0

    def waits(self, tensor) -> bool:
        if not isinstance(tensor, torch.Tensor):
            return False
        if self.device_run and tensor.device.type == "cpu":
            return False
        return not any(tensor is ignored for ignored in self.ignore())

    def record(self, what: str) -> None:
        self.reads.events.append(f"{what} at {_caller()}")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth == 0:
            source = args[0] if args else None
            if func is _aten._local_scalar_dense.default and self.waits(source):
                self.record("scalar read")
            elif func in _VALUE_SHAPED and self.waits(source):
                self.record(func.__name__)
            elif func is _aten.index.Tensor and self.waits(source):
                if any(i is not None and i.dtype == torch.bool for i in args[1]):
                    self.record("boolean-mask index")
            elif self._device_to_host(func, args, kwargs):
                self.record("device-to-host copy")
        return func(*args, **kwargs)

    @staticmethod
    def _device_to_host(func, args, kwargs) -> bool:
        if func is _aten._to_copy.default:
            target = kwargs.get("device")
            return (
                target is not None
                and torch.device(target).type == "cpu"
                and args[0].device.type != "cpu"
            )
        if func is _aten.copy_.default:
            return args[0].device.type == "cpu" and args[1].device.type != "cpu"
        return False


@contextlib.contextmanager
def count_host_reads(
    device: torch.device | str = "cpu", ignore: Ignored = ()
) -> Iterator[HostReads]:
    """Count the host's reads of tensor values while the block runs (see the module's doc).
    ``device``: the run's device (on a GPU run reads of CPU tensors are free); ``ignore``:
    tensors whose reads are not counted, or a function returning them when a read happens
    (for tensors made inside the block, such as an optimizer's first ``step`` counters)."""
    reads = HostReads()
    counter = _Counter(reads, torch.device(device), ignore)
    originals = {name: getattr(torch.Tensor, name) for name in PYTHON_READS}

    def counted(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            if counter.depth == 0 and counter.waits(self):
                counter.record(name.strip("_"))
            counter.depth += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                counter.depth -= 1

        return read

    for name in PYTHON_READS:
        setattr(torch.Tensor, name, counted(name))
    try:
        with counter:
            yield reads
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
