"""checkpoint.pt of a search or an evaluation: written as plain data, read without running code.

A checkpoint holds tensors, numbers, strings, lists, tuples and dicts only (``format`` 2): the
engine's or trainer's state dicts, RNG states as tensors, positions and sizes. It is read with
``torch.load(weights_only=True)`` (``tracking.torch_files``). A checkpoint of an earlier
version (numpy RNG states, no ``format``) is converted once on the safe path and rewritten;
one that holds other objects is refused unless the user vouches for it (``--trust-checkpoint``).

What kind of run a folder holds comes from its run.json; a folder of an earlier version gets
one when its checkpoint is converted.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from sgl_betty.errors import RunFolderError
from sgl_betty.tracking import RunFolder, load_torch_file, read_run_kind
from sgl_betty.tracking.torch_files import UnreadableFileError

from .interruption import CHECKPOINT, upgrade_rng_state

CHECKPOINT_FORMAT = 2
KIND_NAMES = {"search": "search", "eval": "evaluation"}
# The entries every checkpoint of a kind has: a file without them is not one.
REQUIRED = {
    "search": ("engine", "position", "rng", "line_files", "elapsed_seconds"),
    "eval": ("genotype", "network", "world_size", "trainer", "position", "rng", "line_files"),
}
PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def write_checkpoint(folder: RunFolder, kind: str, state: dict) -> None:
    """Atomically replace the folder's checkpoint with ``state`` (CPU tensors, plain data)."""
    folder.save_torch(CHECKPOINT, {"format": CHECKPOINT_FORMAT, "kind": kind, **state})


def _fix(path: Path) -> str:
    return (
        f"the run in {path} cannot continue from it: put back a good copy of the file, or start "
        "the run again without --resume (into another run.dir)"
    )


def read_checkpoint(path: str | Path, kind: str, *, trust: bool = False, writer: bool = True):
    """The checkpoint of the ``kind`` run ('search' or 'eval') in folder ``path``.

    An earlier version's checkpoint is converted to today's format and, by the ``writer``
    process, rewritten in place (once). RunFolderError naming the file and the fix when it is
    missing, unreadable, unsafe or of another kind of run.
    """
    path = Path(path)
    file = path / CHECKPOINT
    what = f"the {KIND_NAMES[kind]} checkpoint"
    state = _load_current(path, what, trust=trust, writer=writer)
    found = checkpoint_kind(state)
    if found != kind:
        raise RunFolderError(
            f"{file} is the checkpoint of {'a' if found == 'search' else 'an'} "
            f"{KIND_NAMES.get(found, 'unknown')} run, not of {'a' if kind == 'search' else 'an'} "
            f"{KIND_NAMES[kind]}; resume it with "
            f"--stage {'eval' if found == 'eval' else 'search'} --resume {path}"
        )
    missing = [key for key in REQUIRED[kind] if key not in state]
    if missing:
        raise UnreadableFileError(
            f"{file} lacks {', '.join(missing)}: it is not a complete {KIND_NAMES[kind]} "
            f"checkpoint; {_fix(path)}"
        )
    return state


def _load_current(path: Path, what: str, *, trust: bool, writer: bool) -> dict:
    """The checkpoint in folder ``path`` in today's format (converted and, by the ``writer``,
    rewritten when it is of an earlier version)."""
    file = path / CHECKPOINT
    state = load_torch_file(file, what, fix=_fix(path), trust=trust).content
    if not isinstance(state, dict):
        raise UnreadableFileError(f"{file} is not a checkpoint of sgl-betty; {_fix(path)}")
    if state.get("format") != CHECKPOINT_FORMAT:
        state = upgrade_checkpoint(state, file)
        if writer:
            RunFolder(path).save_torch(CHECKPOINT, state)
            print(f"note: converted {file} to the current checkpoint format", file=sys.stderr)
    return state


def checkpoint_kind(state: dict) -> str | None:
    if state.get("kind") in KIND_NAMES:
        return state["kind"]
    # Search checkpoints of earlier versions had no kind.
    return "search" if "engine" in state else None


def upgrade_checkpoint(state: dict, file: Path) -> dict:
    """An earlier version's checkpoint in today's format: RNG states without numpy arrays, CUDA
    states of the current device, configs as plain containers."""
    upgraded = _upgrade(state)
    upgraded["format"] = CHECKPOINT_FORMAT
    upgraded.setdefault("kind", checkpoint_kind(upgraded))
    leftover = _foreign_types(upgraded)
    if leftover:
        raise RunFolderError(
            f"{file} holds {', '.join(sorted(leftover))} objects, which this version cannot "
            f"convert to plain data; {_fix(file.parent)}"
        )
    return upgraded


def _upgrade(value: Any) -> Any:
    import numpy as np
    from omegaconf import Container, OmegaConf

    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=False)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        if {"python", "numpy", "torch"} <= set(value):
            value = upgrade_rng_state(value)
        return {key: _upgrade(item) for key, item in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_upgrade(item) for item in value)
    if isinstance(value, list):
        return [_upgrade(item) for item in value]
    return value


def _foreign_types(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_foreign_types(v) for v in (*value.keys(), *value.values())))
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return set().union(*(_foreign_types(item) for item in value))
    return set() if isinstance(value, PLAIN) else {type(value).__name__}


def folder_kind(path: str | Path, *, trust: bool = False, writer: bool = True) -> str | None:
    """What kind of run folder ``path`` is: its run.json, read as JSON. A folder of an earlier
    version (no run.json) is told by its summary.json, its checkpoint (converted to today's
    format on the way, never unpickled beyond plain data) or its seed folders, and gets a
    run.json. None: no run this version can tell."""
    path = Path(path)
    kind = read_run_kind(path)
    if kind is not None or not path.is_dir():
        return kind
    kind = _summary_kind(path / "summary.json")
    if kind is None and (path / CHECKPOINT).is_file():
        kind = checkpoint_kind(_load_current(path, "the checkpoint", trust=trust, writer=writer))
    if kind is None and any(child.is_dir() for child in path.glob("seed-*")):
        kind = "seeds"
    if kind is not None and writer:
        RunFolder(path).write_run_file(kind)
    return kind


def _summary_kind(file: Path) -> str | None:
    if not file.is_file():
        return None
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(summary, dict):
        return None
    if summary.get("kind") in ("eval", "seeds"):
        return summary["kind"]
    return "search" if isinstance(summary.get("genotypes"), list) else None
