"""What a run takes from its machine: CPU threads, and memory that may run out.

Threads: torch starts one intra-op thread per core. Data-loader workers, other processes of a
torchrun launch, the run's own Python work (batches, logging, W&B) and the rest of the machine
then compete for the same cores, and OpenMP threads that wait by spinning slow every operator
down when one of them is descheduled: the smoke search on a busy 2-core machine took 886 s for a
step with two threads against 15 s with one. ``choose_threads`` gives torch the cores of this
process's share minus its data-loader workers and one core for everything else, unless the user
chose (``run.threads`` or ``OMP_NUM_THREADS``).

Memory: an allocation that does not fit raises torch's OutOfMemoryError on a GPU and a
RuntimeError on the CPU; ``out_of_memory`` turns both into a message naming the settings that
size the run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from sgl_betty.errors import OutOfMemoryError

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(cores, 1)


def choose_threads(requested: int | None, data_workers: int) -> tuple[int, str]:
    """Set torch's intra-op threads; return them and the line that says why.

    ``requested`` (run.threads) or OMP_NUM_THREADS win; otherwise the cores of this process's
    share (the processes torchrun started on this machine split them) minus its data-loader
    workers and minus one core for the rest, at least one.
    """
    if requested is not None:
        torch.set_num_threads(requested)
        return requested, f"torch threads: {requested} (run.threads)"
    for variable in THREAD_VARIABLES:
        if os.environ.get(variable):
            threads = torch.get_num_threads()
            return threads, f"torch threads: {threads} ({variable}={os.environ[variable]})"
    cores = available_cores()
    processes = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    threads = max(1, cores // processes - data_workers - 1)
    torch.set_num_threads(threads)
    share = f"{cores} cores" + (f" / {processes} processes" if processes > 1 else "")
    return threads, (
        f"torch threads: {threads} ({share}, {data_workers} data-loader workers, one core for "
        "the rest; set run.threads or OMP_NUM_THREADS to choose)"
    )


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text.lower()
    )


@contextmanager
def out_of_memory(what: str, settings: str) -> Iterator[None]:
    """Within the block, running out of memory is an OutOfMemoryError saying ``what`` did not
    fit and which ``settings`` size it."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not _is_out_of_memory(error):
            raise
        first_line = str(error).splitlines()[0]
        raise OutOfMemoryError(
            f"out of memory while {what} ({first_line}); lower {settings}, or run on a device "
            "with more memory"
        ) from None
