"""The torch files of a run folder (checkpoints, architectures, saved models): CPU tensors and
plain data only, read back without running any code from the file.

Run folders travel (a colleague's search to evaluate, a downloaded checkpoint to resume), and
unpickling a file can run any code its author put there. So every file is written with tensors,
numbers, strings, lists, tuples and dicts only, every tensor on the CPU (the file then loads on
any machine without ``map_location``), and read with ``torch.load(weights_only=True)``.

Checkpoints of earlier versions hold numpy arrays (the numpy RNG state); those, and only those,
are read with numpy's array constructor allowed in the restricted unpickler, which still runs
no code from the file, and the caller converts them. Anything else is refused with a message;
``trust=True`` (the recipes' ``--trust-checkpoint``) loads such a file the old way.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgl_betty.errors import RunFolderError, UnreadableFileError, UnsafeFileError

from .durable import durable_write

TRUST_FLAG = "--trust-checkpoint"


def _numpy_array_globals() -> list:
    # numpy 2 moved numpy.core to numpy._core; files written under either name are accepted.
    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else None
    reconstruct = reconstruct or np.core.multiarray._reconstruct
    allowed = [
        np.ndarray,
        np.dtype,
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        (reconstruct, "numpy.core.multiarray._reconstruct"),
    ]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in ("UInt32DType", "Int64DType")]
    return allowed


LEGACY_GLOBALS = {
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray._reconstruct",
    "numpy.dtypes.UInt32DType",
    "numpy.dtypes.Int64DType",
}


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it detached and on the CPU (containers rebuilt)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        items = ((key, to_cpu(item)) for key, item in value.items())
        copy = OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
        if hasattr(value, "_metadata"):  # a module state_dict's versions, for load_state_dict
            copy._metadata = value._metadata
        return copy
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple needs its class
        return tuple(to_cpu(item) for item in value)
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


def save_torch_file(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (CPU copies of its tensors) to ``path`` atomically and durably."""
    cpu = to_cpu(obj)
    durable_write(path, lambda file: torch.save(cpu, file))


@dataclass
class LoadedFile:
    content: Any
    # Read through the allowance for the numpy arrays of earlier versions: convert, then rewrite.
    legacy: bool = False


def _unsafe_globals(path: Path) -> list[str] | None:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a damaged archive
        return None


def load_torch_file(
    path: str | os.PathLike, what: str, *, fix: str, trust: bool = False
) -> LoadedFile:
    """Read a torch file of a run folder without running code from it.

    ``what`` names the file for the user ("the search checkpoint"); ``fix`` says what to do
    when it cannot be read. ``trust`` unpickles whatever the file holds (only for files whose
    origin the user vouches for).
    """
    path = Path(path)
    try:
        if trust:
            return LoadedFile(torch.load(path, map_location="cpu", weights_only=False))
        if not zipfile.is_zipfile(path):  # torch.save writes zip archives
            raise ValueError("it is not a zip archive, the format torch.save writes")
        try:
            return LoadedFile(torch.load(path, map_location="cpu", weights_only=True))
        except pickle.UnpicklingError:
            unsafe = _unsafe_globals(path)
            if unsafe is None or not set(unsafe) <= LEGACY_GLOBALS:
                raise UnsafeFileError(_unsafe_message(path, what, unsafe)) from None
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return LoadedFile(torch.load(path, map_location="cpu", weights_only=True), legacy=True)
    except RunFolderError:
        raise
    except OSError as error:
        raise RunFolderError(f"cannot read {path} ({what}): {error.strerror or error}") from None
    except Exception as error:  # what a damaged zip or pickle stream raises varies by damage
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UnreadableFileError(
            f"{path} ({what}) cannot be read: {reason}. It is truncated or damaged (a copy cut "
            f"short, a full disk), or not a file sgl-betty wrote; {fix}"
        ) from None


def _unsafe_message(path: Path, what: str, unsafe: list[str] | None) -> str:
    # The globals that caused the refusal come first: the numpy ones are allowed, and the order
    # torch reports them in varies between runs.
    unsafe = sorted(set(unsafe or []), key=lambda name: (name in LEGACY_GLOBALS, name))
    found = f" ({', '.join(unsafe[:4])}{', ...' if len(unsafe) > 4 else ''})" if unsafe else ""
    return (
        f"{path} ({what}) holds Python objects other than tensors and plain data{found}: "
        "unpickling them could run code from the file, so it was not loaded. If the file is your "
        f"own, written by an earlier version of sgl-betty, add {TRUST_FLAG} to load it once the "
        "old way (it is then rewritten in the safe format); otherwise do not use it"
    )
