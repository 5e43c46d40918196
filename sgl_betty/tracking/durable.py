"""Whole-file writes that survive a crash or a power loss: the old file or the new one, never half.

A write goes to a temporary file in the target's folder (a rename is atomic only within one
file system), is flushed and fsynced, renamed over the target, and the folder is fsynced so
that the rename itself is on disk. The file gets the permissions of the process's umask, as
``open()`` would give it (``mkstemp`` alone makes it private, 0600), so that collaborators on a
shared cluster can read the run folders they are meant to read.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from sgl_betty.errors import RunFolderError

TEMPORARY_SUFFIX = ".tmp"
# What mkstemp makes of temporary_prefix(name) + TEMPORARY_SUFFIX: 8 random characters between.
_TEMPORARY_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def temporary_prefix(name: str) -> str:
    """The prefix of the temporary files written on the way to file ``name``."""
    return f".{name}."


def current_umask() -> int:
    # /proc tells the umask without setting it; os.umask() would change it for an instant,
    # under the feet of any thread that creates a file meanwhile.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename, a new file) durable."""
    try:
        descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open folders (Windows): nothing more to do
        return
    try:
        os.fsync(descriptor)
    except OSError:  # a file system that does not sync folders
        pass
    finally:
        os.close(descriptor)


def describe_os_error(error: OSError) -> str:
    return error.strerror or str(error)


def durable_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Replace ``path`` by what ``write(file)`` writes, atomically and durably.

    A failure leaves the previous file untouched and no temporary file behind; a file-system
    error becomes a ``RunFolderError`` naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=temporary_prefix(path.name), suffix=TEMPORARY_SUFFIX
        )
    except OSError as error:
        raise RunFolderError(
            f"cannot write {path}: {describe_os_error(error)}; choose a folder you can write to"
        ) from None
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise RunFolderError(
                f"cannot write {path}: {describe_os_error(error)} (the previous version, if any, "
                "is kept); free space or choose a folder you can write to"
            ) from None
        raise
    fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    durable_write(path, lambda file: file.write(data))


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed process left in ``folder`` (``.<name>.*.tmp``)."""
    removed = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        if _TEMPORARY_NAME.fullmatch(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
