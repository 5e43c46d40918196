"""Stopping a run between two steps and continuing it later: what search and evaluation share.

A signal (Ctrl-C, SIGTERM) becomes a request that the run honours after the current step, so a
checkpoint always holds the state of whole steps; under torchrun the processes vote so that all
of them stop at the same step. The RNG states go into checkpoints so that a resumed run draws
the same random numbers as an uninterrupted one.
"""

from __future__ import annotations

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
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
