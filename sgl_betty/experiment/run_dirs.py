"""Where a new run goes: ``run.dir`` when given (unused, or the run is refused), else a default
name that says what ran, with which seed, numbered until no other run has it."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from omegaconf import DictConfig

from sgl_betty.errors import RunFolderError, UserError
from sgl_betty.tracking import RunFolder, claim_run_folder

RUNS = Path("runs")


def _stamp() -> str:
    return dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def seeds_label(cfg: DictConfig) -> str:
    if cfg.seeds:
        seeds = list(cfg.seeds)
        return "seeds" + ("-".join(map(str, seeds)) if len(seeds) <= 5 else f"{len(seeds)}")
    return f"seed{cfg.seed}"


def default_search_dir(cfg: DictConfig) -> Path:
    name = f"{_stamp()}-{cfg.search.method}-{cfg.hypergrad.type}-k{cfg.learners}"
    return RUNS / f"{name}-{seeds_label(cfg)}"


def default_eval_dir(cfg: DictConfig, label: str) -> Path:
    from .evaluate import eval_dataset

    return RUNS / f"{_stamp()}-eval-{eval_dataset(cfg)}-{label}-{seeds_label(cfg)}"


def claim_for_run(cfg: DictConfig, kind: str, context, default: Path) -> RunFolder:
    """The folder of a new ``kind`` run: ``cfg.run.dir`` (which must be unused) or ``default``
    (numbered when taken); ``cfg.run.dir`` is set to it. Under torchrun rank 0 claims it and
    every process gets rank 0's folder, or its error."""
    outcome = None
    if context.is_main:
        requested = cfg.run.dir
        try:
            path = claim_run_folder(
                requested if requested is not None else default,
                kind,
                numbered=requested is None,
            )
            outcome = ("ok", str(path))
        except RunFolderError as error:
            outcome = ("error", str(error))
    status, value = context.gather(outcome)[0]
    if status == "error":
        raise RunFolderError(value)
    cfg.run.dir = value
    return RunFolder(value, enabled=context.is_main)


def _has_progress(path: Path) -> bool:
    """Whether a run in ``path`` got anywhere: a checkpoint, a result, a logged step, a run
    nested in it."""
    if any((path / name).exists() for name in ("checkpoint.pt", "summary.json", "model.pt")):
        return True
    metrics = path / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        return True
    return any(
        child.is_dir() for pattern in ("seed-*", "eval-learner*") for child in path.glob(pattern)
    )


@contextmanager
def discarded_on_failed_start(folder: RunFolder, claimed: bool) -> Iterator[None]:
    """A new run that stops on a user error before its first step (a network that does not fit
    into memory, data that cannot be read) leaves no folder behind: the same command, fixed,
    can use the same run.dir."""
    try:
        yield
    except UserError:
        if claimed and folder.enabled and not _has_progress(folder.path):
            shutil.rmtree(folder.path, ignore_errors=True)
        raise
