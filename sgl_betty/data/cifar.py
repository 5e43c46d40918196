"""CIFAR-10 / CIFAR-100 through torchvision, with clear errors when the files are absent.

Real archives are loaded by torchvision's own classes and checked against torchvision's
md5 values. A folder written by a generator (the tests' tiny archives) carries a
manifest, ``LOCAL_CHECKSUMS_FILE``, with the md5 of each generated file. Only when asked
explicitly (``local_checksums=True``, the recipes' ``data.local_checksums=true``) is such a
folder verified against the manifest's values instead of torchvision's: CIFAR files are
pickles, and a data folder from elsewhere must not swap torchvision's check for its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torchvision import datasets

from sgl_betty.errors import UserError

LOCAL_CHECKSUMS_FILE = "sgl_betty_local_checksums.json"


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset's files are not on disk and downloading was not requested."""


class DatasetCorruptedError(UserError, RuntimeError):
    """The dataset's files are on disk but fail their checksum."""


@dataclass(frozen=True)
class CifarSpec:
    name: str
    torchvision_class: type[datasets.CIFAR10]
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def folder(self) -> str:
        return self.torchvision_class.base_folder

    @property
    def url(self) -> str:
        return self.torchvision_class.url

    @property
    def expected_files(self) -> list[str]:
        cls = self.torchvision_class
        return [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


# Normalization statistics of each training set, as used by the DARTS family of code.
CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        name="cifar10",
        torchvision_class=datasets.CIFAR10,
        num_classes=10,
        mean=(0.49139968, 0.48215827, 0.44653124),
        std=(0.24703233, 0.24348505, 0.26158768),
    ),
    "cifar100": CifarSpec(
        name="cifar100",
        torchvision_class=datasets.CIFAR100,
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


def cifar_spec(name: str) -> CifarSpec:
    if name not in CIFAR_SPECS:
        raise ValueError(f"unknown CIFAR dataset {name!r}; allowed: {', '.join(CIFAR_SPECS)}")
    return CIFAR_SPECS[name]


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_local_checksums(folder: str | os.PathLike, generator: str) -> Path:
    """Record the md5 of every file in a generated dataset folder.

    Only for data written by a program (tests, smoke runs): it makes that folder load
    through torchvision's classes while still detecting later corruption or edits.
    """
    folder = Path(folder)
    checksums = {
        path.name: file_md5(path)
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != LOCAL_CHECKSUMS_FILE
    }
    manifest = folder / LOCAL_CHECKSUMS_FILE
    manifest.write_text(json.dumps({"generator": generator, "md5": checksums}, indent=2))
    return manifest


class _VerifiedAgainstManifest:
    """Mixin: torchvision's loading code, with md5 values taken from a local manifest."""

    local_checksums = True

    def __init__(self, root: str, checksums: dict[str, str], **kwargs) -> None:
        # Instance attributes shadow torchvision's class-level md5 tables; its
        # _check_integrity and _load_meta then verify the files against the manifest.
        self.train_list = [[name, checksums[name]] for name, _ in type(self).train_list]
        self.test_list = [[name, checksums[name]] for name, _ in type(self).test_list]
        self.meta = {**type(self).meta, "md5": checksums[type(self).meta["filename"]]}
        super().__init__(root, **kwargs)


class LocallyGeneratedCIFAR10(_VerifiedAgainstManifest, datasets.CIFAR10):
    pass


class LocallyGeneratedCIFAR100(_VerifiedAgainstManifest, datasets.CIFAR100):
    pass


_LOCALLY_GENERATED = {"cifar10": LocallyGeneratedCIFAR10, "cifar100": LocallyGeneratedCIFAR100}


def _manifest_checksums(spec: CifarSpec, folder: Path) -> dict[str, str]:
    manifest_file = folder / LOCAL_CHECKSUMS_FILE
    try:
        manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetCorruptedError(
            f"{manifest_file} cannot be read ({error}); write it again with "
            "sgl_betty.data.write_local_checksums, or set data.local_checksums=false to check "
            "the files against torchvision's md5 values"
        ) from None
    checksums = manifest.get("md5") if isinstance(manifest, dict) else None
    if not isinstance(checksums, dict) or not all(
        isinstance(value, str) for value in checksums.values()
    ):
        raise DatasetCorruptedError(
            f"{manifest_file} has no 'md5' mapping of file names to md5 strings; write it again "
            "with sgl_betty.data.write_local_checksums"
        )
    unlisted = [name for name in spec.expected_files if name not in checksums]
    if unlisted:
        raise DatasetCorruptedError(f"{manifest_file} lists no checksum for {', '.join(unlisted)}")
    return checksums


def _missing_dataset_message(spec: CifarSpec, root: Path, missing: list[str]) -> str:
    folder = root / spec.folder
    return (
        f"{spec.name} not found in {folder} (download=False).\n"
        f"  expected files: {', '.join(spec.expected_files)}\n"
        f"  missing: {', '.join(missing)}\n"
        "  to get them: set data.download=true on a machine with internet access, or "
        f"download {spec.url} and extract it into {root} (it creates {spec.folder}/)."
    )


def load_cifar(
    name: str,
    root: str | os.PathLike,
    train: bool,
    transform: Callable | None = None,
    download: bool = False,
    local_checksums: bool = False,
) -> datasets.CIFAR10:
    """Return torchvision's CIFAR10/CIFAR100 dataset (train or test split) under ``root``.

    ``local_checksums``: verify a generated folder against its ``LOCAL_CHECKSUMS_FILE``
    manifest instead of torchvision's md5 values (only for data generated on this machine).
    """
    spec = cifar_spec(name)
    root = Path(root).expanduser()
    folder = root / spec.folder
    if not download:
        missing = [f for f in spec.expected_files if not (folder / f).is_file()]
        if missing:
            raise DatasetNotFoundError(_missing_dataset_message(spec, root, missing))
    kwargs = {"train": train, "transform": transform, "download": download}
    has_manifest = (folder / LOCAL_CHECKSUMS_FILE).is_file()
    if local_checksums and has_manifest:
        checksums = _manifest_checksums(spec, folder)
        construct = partial(_LOCALLY_GENERATED[spec.name], str(root), checksums, **kwargs)
    else:
        construct = partial(spec.torchvision_class, str(root), **kwargs)
    try:
        return construct()
    except OSError as error:
        if not download:
            raise
        # With download=True the network is the usual culprit (URLError is an OSError).
        raise DatasetNotFoundError(
            f"{spec.name}: could not download {spec.url} into {root} ({error}). Without internet "
            f"access, extract that archive into {root} (it creates {spec.folder}/) and set "
            "data.download=false."
        ) from error
    except RuntimeError as error:
        hint = (
            f" {folder} has a {LOCAL_CHECKSUMS_FILE}: if you generated these files yourself, "
            "set data.local_checksums=true to check them against it instead."
            if has_manifest and not local_checksums
            else ""
        )
        raise DatasetCorruptedError(
            f"{spec.name} files in {folder} fail their md5 check ({error}). Delete the folder "
            f"and download again (data.download=true), or extract {spec.url} into {root}.{hint}"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
        # Files whose md5 matched a manifest written after they were damaged.
        raise DatasetCorruptedError(
            f"{spec.name} files in {folder} cannot be read as CIFAR batches ({type(error).__name__}: "
            f"{error}); they are truncated or not CIFAR files. Delete the folder and download "
            f"again (data.download=true), or extract {spec.url} into {root}."
        ) from None


def is_locally_generated(dataset: object) -> bool:
    return bool(getattr(dataset, "local_checksums", False))
