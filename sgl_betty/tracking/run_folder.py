"""The run folder: every file a user opens after a run, written so that nothing is half-written.

Whole files (config, summary, checkpoints) go to a temporary file in the same folder and are
renamed into place; line files (metrics, genotypes) are appended one complete line at a time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class RunFolder:
    """``runs/<name>/``: config.yaml, metrics.jsonl, genotypes.jsonl, architecture.pt, summary.json."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        # Only one process of a multi-process run writes (rank 0); the others get a no-op folder.
        self.enabled = enabled
        if enabled:
            self.path.mkdir(parents=True, exist_ok=True)

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
        with open(self.file(name), "a", encoding="utf-8") as file:
            file.write(line)

    def save_torch(self, name: str, obj: Any) -> None:
        if self.enabled:
            atomic_torch_save(obj, self.file(name))


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.strip()]
