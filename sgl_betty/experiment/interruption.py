"""Stopping a run between two steps and continuing it later: what search and evaluation share.

A signal (Ctrl-C, SIGTERM) becomes a request that the run honours after the current step, so a
checkpoint always holds the state of whole steps; under torchrun the processes vote so that all
of them stop at the same step. The RNG states go into checkpoints so that a resumed run draws
the same random numbers as an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import signal
import threading

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT = "checkpoint.pt"


class RunInterrupted(Exception):
    """A signal stopped the run after a checkpoint; the message says how to resume."""


class StopRequests:
    """Turns SIGINT and SIGTERM into a request honoured between two steps."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None:  # a second Ctrl-C: stop now, the last checkpoint stands
            raise KeyboardInterrupt
        self.received = signum
        # At once, not when the step ends (a step can take many seconds). os.write: the main
        # thread may be inside a buffered write to stderr (the progress bar) right now.
        name = signal.Signals(signum).name
        os.write(
            2,
            f"\n{name} received: the run stops after the current step, with a checkpoint "
            "(Ctrl-C again stops at once, from the last checkpoint)\n".encode(),
        )

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StopVote:
    """Whether to stop after this step: a signal to any process stops every process at the same
    step (each has to take part in writing the checkpoint, a collective)."""

    def __init__(self, context, stop: StopRequests):
        self.context, self.stop = context, stop
        self.group = None
        if context.enabled and dist.get_backend() != "gloo":
            # Vote on the CPU, so that the vote after every step never waits for the GPU.
            self.group = dist.new_group(backend="gloo")

    def __call__(self) -> bool:
        requested = self.stop.received is not None
        if not self.context.enabled:
            return requested
        flag = torch.tensor([int(requested)])
        dist.all_reduce(flag, group=self.group)
        return bool(flag.item())


def rng_state() -> dict:
    """This process's RNG states as plain data and tensors (a checkpoint loads them without
    unpickling objects). CUDA: the current device's generator only, the one this process
    draws from, so that a run can resume on a machine with fewer GPUs."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            **numpy_state,
            "state": {
                "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                "pos": int(numpy_state["state"]["pos"]),
            },
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = state["numpy"]
    key = numpy_state["state"]["key"]
    np.random.set_state(
        {
            **numpy_state,
            "state": {**numpy_state["state"], "key": np.asarray(key, dtype=np.uint32)},
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def upgrade_rng_state(state: dict) -> dict:
    """An RNG state of an earlier checkpoint format in today's: numpy's legacy tuple (with a
    numpy array) as a dict of plain values, and of the CUDA states of every device the one of
    the current device (``rng_state`` keeps only that one)."""
    state = dict(state)
    numpy_state = state["numpy"]
    if isinstance(numpy_state, tuple):
        name, keys, pos, has_gauss, gauss = numpy_state
        state["numpy"] = {
            "bit_generator": str(name),
            "state": {"key": torch.as_tensor(np.asarray(keys, dtype=np.int64)), "pos": int(pos)},
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        }
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        if cuda and torch.cuda.is_available() and torch.cuda.current_device() < len(cuda):
            state["cuda"] = cuda[torch.cuda.current_device()]
        elif cuda:
            state["cuda"] = cuda[0]
        else:
            state.pop("cuda")
    return state
