"""The life of one run in its folder, shared by search and evaluation (torchtune's recipe shape).

- setup: ``load_checkpoint`` (on a resume, the checkpoint to continue from, or a note that the
  run starts again), ``open_folder`` (claim a new folder or reopen the run's own, config.yaml,
  line files cut back to the checkpoint), ``start_tracker``, ``start_clock``;
- train: ``stop_requests`` (SIGINT/SIGTERM become a request that every process honours at the
  same step, ``should_stop``), ``restore_rng``;
- save_checkpoint: every process's RNG state, the line files' sizes and the elapsed time go
  in with the loop's own state; rank 0 writes;
- cleanup: ``finish`` writes summary.json and ends the tracker.

The loops themselves (``search.py``, ``evaluate.py``) decide what their checkpoint holds and
when to take one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from sgl_betty.tracking import RunFolder, Tracker, build_tracker
from sgl_betty.tracking.summaries import SUMMARY_FILE, RunSummary

from .checkpoints import KIND_NAMES, read_checkpoint, write_checkpoint
from .config import to_yaml
from .interruption import CHECKPOINT, StopRequests, StopVote, rng_state, set_rng_state
from .run_dirs import claim_for_run, discarded_on_failed_start


def resume_command(kind: str, path: Path, world_size: int = 1) -> str:
    """The recipe arguments that continue the ``kind`` run in ``path``."""
    if kind == "search":
        return f"--resume {path}"
    command = f"--stage eval --resume {path}"
    if world_size > 1:
        command += f" (under torchrun with --nproc_per_node {world_size}, as before)"
    return command


class RunLifecycle:
    """One run of ``kind`` ('search' or 'eval') in ``cfg.run.dir``: its folder, checkpoint,
    RNG states, stop vote, resume messages and summary.

    ``line_files``: the JSON-lines files the run appends to, cut back to the checkpoint on a
    resume (their later lines describe steps that run again). ``keep_checkpoint``: whether
    checkpoint.pt stays once summary.json is written.
    """

    def __init__(
        self,
        cfg: DictConfig,
        kind: str,
        context,
        *,
        line_files: tuple[str, ...],
        resume: bool = False,
        trust_checkpoint: bool = False,
        keep_checkpoint: bool = True,
    ):
        self.cfg, self.kind, self.context = cfg, kind, context
        self.line_files = line_files
        self.resume, self.trust_checkpoint = resume, trust_checkpoint
        self.keep_checkpoint = keep_checkpoint
        self.folder: RunFolder | None = None
        self.tracker: Tracker = Tracker()
        self.started = time.perf_counter()
        self._stop: StopRequests | None = None
        self._vote: StopVote | None = None

    @property
    def what(self) -> str:
        return KIND_NAMES[self.kind]

    # ---- setup -------------------------------------------------------------------------------

    def load_checkpoint(self, path: Path | None = None) -> dict | None:
        """The checkpoint of the run in ``path`` (default ``cfg.run.dir``), read as plain data;
        None when the run stopped before its first one: it starts again from its first step,
        in its folder."""
        path = Path(self.cfg.run.dir if path is None else path)
        if not (path / CHECKPOINT).is_file():
            if self.context.is_main:
                print(
                    f"note: {path} has no checkpoint yet (the {self.what} stopped before its "
                    "first one); it starts again from its first step",
                    file=sys.stderr,
                )
            return None
        return read_checkpoint(
            path, self.kind, trust=self.trust_checkpoint, writer=self.context.is_main
        )

    def open_folder(self, default: Path, saved: dict | None) -> RunFolder:
        """A resumed run's own folder, else a new one (``cfg.run.dir`` or ``default``, claimed;
        ``cfg.run.dir`` is set to it). config.yaml is written, with the overrides that apply on
        a resume; the line files are cut back to ``saved`` (to nothing without it)."""
        if self.resume:
            folder = RunFolder(self.cfg.run.dir, enabled=self.context.is_main)
            folder.remove_stale_temporaries()
        else:
            folder = claim_for_run(self.cfg, self.kind, self.context, default)
        folder.write_text("config.yaml", to_yaml(self.cfg))
        sizes = saved["line_files"] if saved is not None else dict.fromkeys(self.line_files, 0)
        folder.truncate_line_files(sizes)
        self.folder = folder
        return folder

    @contextmanager
    def first_steps(self) -> Iterator[None]:
        """A new run that stops on a user error before it got anywhere leaves no folder."""
        with discarded_on_failed_start(self.folder, claimed=not self.resume):
            yield

    def start_tracker(self, config: dict) -> Tracker:
        self.tracker = build_tracker(self.cfg, self.folder)
        self.tracker.start(config, kind=self.kind)
        return self.tracker

    def start_clock(self, saved: dict | None) -> None:
        """The run's clock, continued from ``saved`` (the time before it stopped counts)."""
        self.started = time.perf_counter() - (saved["elapsed_seconds"] if saved else 0.0)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    # ---- train -------------------------------------------------------------------------------

    @contextmanager
    def stop_requests(self) -> Iterator[RunLifecycle]:
        """While inside, SIGINT and SIGTERM ask the run to stop after the current step."""
        with StopRequests() as stop:
            self._stop, self._vote = stop, StopVote(self.context, stop)
            try:
                yield self
            finally:
                self._stop = self._vote = None

    def should_stop(self) -> bool:
        """Whether a signal reached any process (every process gets the same answer)."""
        return self._vote()

    def stop_message(self, where: str) -> str:
        """What stopped the run, ``where`` it stopped (without the resume command)."""
        received = self._stop.received if self._stop is not None else None
        signal = received if received is not None else "on another process"
        return f"{self.what} stopped by signal {signal} after {where}"

    def resume_command(self) -> str:
        return resume_command(self.kind, self.folder.path, self.context.world_size)

    def restore_rng(self, saved: dict, key: str = "rng") -> None:
        """This process's RNG states from ``saved[key]`` (one entry per process)."""
        set_rng_state(saved[key][self.context.rank])

    # ---- save_checkpoint ---------------------------------------------------------------------

    def save_checkpoint(self, state: dict) -> None:
        """Atomically replace checkpoint.pt with ``state``, every process's RNG states, the
        line files' sizes and the elapsed time (a collective: every process calls it; rank 0
        writes)."""
        rng = self.context.gather(rng_state())
        if not self.folder.enabled:
            return
        write_checkpoint(
            self.folder,
            self.kind,
            {
                **state,
                "rng": rng,
                "line_files": self.folder.line_file_sizes(self.line_files),
                "elapsed_seconds": self.elapsed(),
            },
        )

    # ---- cleanup -----------------------------------------------------------------------------

    def finish(self, summary: RunSummary) -> RunSummary:
        """summary.json, then (unless kept) no checkpoint: the summary and the run's files say
        all it would; then the tracker's end."""
        data = summary.to_dict()
        self.folder.write_json(SUMMARY_FILE, data)
        if not self.keep_checkpoint and self.folder.enabled:
            self.folder.file(CHECKPOINT).unlink(missing_ok=True)
        self.tracker.finish(data)
        return summary
