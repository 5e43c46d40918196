"""The run folder: every file a user opens after a run, written so that nothing is half-written.

A run folder belongs to one run. ``claim_run_folder`` gives a new run a folder nobody used
(refusing a used one, or numbering a default name until it is free) and writes ``run.json``,
which says what kind of run it is; resuming reads that small JSON file, never a pickle.

Whole files (config, summary, checkpoints) are written durably (``durable.durable_write``);
line files (metrics, genotypes) are appended one complete line at a time and synced before
each checkpoint, which records their lengths.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from sgl_betty.errors import RunFolderError

from .durable import atomic_write_bytes, describe_os_error, remove_stale_temporaries
from .torch_files import save_torch_file

RUN_FILE = "run.json"
RUN_KINDS = ("search", "eval", "seeds")
# The version of the files a run folder holds; 2: run.json, checkpoints of plain data only.
FOLDER_FORMAT = 2
# The files that make a folder a run folder of this project (earlier versions had no run.json).
RUN_MARKERS = (RUN_FILE, "config.yaml", "checkpoint.pt", "summary.json", "metrics.jsonl")


def _json_default(value: Any):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "_asdict"):
        return value._asdict()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _finite(value: Any):
    # JSON has no NaN/inf; write null so that every line parses with a strict reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def _make_folder(path: Path, exist_ok: bool) -> None:
    try:
        path.mkdir(parents=True, exist_ok=exist_ok)
    except FileExistsError:
        if exist_ok or not path.is_dir():
            raise RunFolderError(
                f"cannot use {path} as a run folder: it exists and is not a folder; choose "
                "another run.dir"
            ) from None
        raise
    except OSError as error:
        raise RunFolderError(
            f"cannot create the run folder {path}: {describe_os_error(error)}; choose a run.dir "
            "on a disk you can write to"
        ) from None


class RunFolder:
    """``runs/<name>/``: run.json, config.yaml, metrics.jsonl, genotypes.jsonl, checkpoints,
    summary.json. Only one process of a multi-process run writes (rank 0); the others get a
    folder whose writes do nothing."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            _make_folder(self.path, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str) -> None:
        if self.enabled:
            atomic_write_bytes(self.file(name), text.encode())

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(_finite(obj), indent=2, default=_json_default) + "\n")

    def append_jsonl(self, name: str, obj: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps(_finite(obj), default=_json_default, allow_nan=False) + "\n"
        try:
            with open(self.file(name), "a", encoding="utf-8") as file:
                file.write(line)
        except OSError as error:
            raise RunFolderError(
                f"cannot append to {self.file(name)}: {describe_os_error(error)}; free space or "
                "choose a run.dir you can write to, then resume from the last checkpoint"
            ) from None

    def save_torch(self, name: str, obj: Any) -> None:
        if self.enabled:
            save_torch_file(obj, self.file(name))

    def line_file_sizes(self, names) -> dict[str, int]:
        """The lengths of line files, synced to disk first: a checkpoint records them."""
        sizes = {}
        for name in names:
            path = self.file(name)
            if not path.exists():
                sizes[name] = 0
                continue
            if self.enabled:
                with open(path, "rb") as file:
                    os.fsync(file.fileno())
            sizes[name] = path.stat().st_size
        return sizes

    def truncate_line_files(self, sizes: dict[str, int]) -> None:
        """Cut line files back to a checkpoint's lengths: later lines describe steps that will
        be run again. A file already shorter (lost with the page cache) is left as it is."""
        if not self.enabled:
            return
        for name, size in sizes.items():
            path = self.file(name)
            if path.exists() and path.stat().st_size > size:
                with open(path, "r+b") as file:
                    file.truncate(size)

    def remove_stale_temporaries(self) -> list[Path]:
        """Temporary files a killed run left behind (``.checkpoint.pt.*.tmp``, figures')."""
        if not self.enabled:
            return []
        return remove_stale_temporaries(self.path) + remove_stale_temporaries(self.path / "figures")

    def write_run_file(self, kind: str) -> None:
        if kind not in RUN_KINDS:
            raise ValueError(f"unknown run kind {kind!r}; one of {', '.join(RUN_KINDS)}")
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.write_json(RUN_FILE, {"kind": kind, "format": FOLDER_FORMAT, "created": created})


def read_run_kind(path: str | os.PathLike) -> str | None:
    """The kind of run in ``path`` ('search', 'eval' or 'seeds') from its run.json; None when
    the folder has none (a folder of an earlier version, or no run folder)."""
    file = Path(path) / RUN_FILE
    if not file.is_file():
        return None
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(
            f"{file} cannot be read ({error}); it says what kind of run the folder holds. "
            f'Write {{"kind": "search"}} (or "eval", "seeds") into it, or start a new run'
        ) from None
    kind = record.get("kind") if isinstance(record, dict) else None
    if kind not in RUN_KINDS:
        raise RunFolderError(
            f"{file} names no known kind of run ({kind!r}; one of {', '.join(RUN_KINDS)}); "
            "it is not a run folder of this sgl-betty version"
        )
    return kind


def holds_run(path: str | os.PathLike) -> bool:
    path = Path(path)
    return any((path / name).exists() for name in RUN_MARKERS)


def _check_unused(path: Path) -> None:
    if not path.exists():
        return
    if not path.is_dir():
        raise RunFolderError(
            f"run.dir={path} is a file, not a folder; choose another run.dir for the new run"
        )
    if holds_run(path):
        kind = read_run_kind(path) or "run"
        raise RunFolderError(
            f"run.dir={path} already holds a {kind} run, and a run folder belongs to one run: "
            f"continue that run with --resume {path}, or give the new run another run.dir "
            "(or leave run.dir unset for a fresh name)"
        )
    entries = sorted(entry.name for entry in path.iterdir())
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise RunFolderError(
            f"run.dir={path} is not empty ({shown}); a new run needs a new or empty folder: "
            "choose another run.dir"
        )


def claim_run_folder(path: str | os.PathLike, kind: str, *, numbered: bool = False) -> Path:
    """A folder for a new run of ``kind``, with its run.json written.

    ``path`` must be unused: absent or an empty folder (RunFolderError naming ``--resume``
    otherwise). With ``numbered`` (a default name), a used name becomes ``<path>-2``,
    ``<path>-3``, ...: the folder is created exclusively, so that two runs started in the same
    second never share one.
    """
    path = Path(path)
    if numbered:
        candidate, number = path, 1
        while True:
            try:
                _make_folder(candidate, exist_ok=False)
                break
            except FileExistsError:
                number += 1
                candidate = path.with_name(f"{path.name}-{number}")
        path = candidate
    else:
        _check_unused(path)
        _make_folder(path, exist_ok=True)
        try:  # exclusively: of two runs started into one folder at once, one gets it
            os.close(os.open(path / RUN_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            _check_unused(path)
            raise
        except OSError as error:
            raise RunFolderError(
                f"cannot write into the run folder {path}: {describe_os_error(error)}; choose a "
                "run.dir on a disk you can write to"
            ) from None
    RunFolder(path).write_run_file(kind)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
