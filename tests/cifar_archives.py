"""Tiny CIFAR-10 / CIFAR-100 folders in the real on-disk format of the python archives.

They contain what ``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz`` extract to
(pickled dicts with a flat uint8 ``data`` array in R, G, B planes), so torchvision's
CIFAR classes parse them exactly as the real files. Being generated, their md5 differs
from torchvision's table; each folder gets a local checksum manifest
(``sgl_betty.data.write_local_checksums``) that the project's loader verifies instead.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sgl_betty.data import write_local_checksums

CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@dataclass
class WrittenCifar:
    folder: Path
    train_images: np.ndarray  # (N, 32, 32, 3) uint8, the layout torchvision exposes as .data
    train_labels: list[int]
    test_images: np.ndarray
    test_labels: list[int]


def _random_images(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8)


def _dump(path: Path, content: dict) -> None:
    with open(path, "wb") as handle:
        pickle.dump(content, handle, protocol=2)


def _as_hwc(chw: np.ndarray) -> np.ndarray:
    return chw.transpose(0, 2, 3, 1)


def write_cifar10(
    root: str | Path,
    images_per_batch: int = 20,
    test_images: int = 20,
    seed: int = 0,
    with_manifest: bool = True,
) -> WrittenCifar:
    """Write ``root/cifar-10-batches-py`` with 5 training batches and a test batch."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_chunks, train_labels = [], []
    for batch in range(1, 6):
        images = _random_images(rng, images_per_batch)
        labels = rng.integers(0, 10, size=images_per_batch).tolist()
        _dump(
            folder / f"data_batch_{batch}",
            {
                "batch_label": f"training batch {batch} of 5",
                "labels": labels,
                "data": images.reshape(images_per_batch, -1),
                "filenames": [f"image_{batch}_{i}.png" for i in range(images_per_batch)],
            },
        )
        train_chunks.append(images)
        train_labels.extend(labels)
    test = _random_images(rng, test_images)
    test_labels = rng.integers(0, 10, size=test_images).tolist()
    _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": test.reshape(test_images, -1),
            "filenames": [f"test_{i}.png" for i in range(test_images)],
        },
    )
    _dump(
        folder / "batches.meta",
        {"num_cases_per_batch": images_per_batch, "label_names": CIFAR10_CLASSES, "num_vis": 3072},
    )
    if with_manifest:
        write_local_checksums(folder, generator="tests/cifar_archives.py")
    return WrittenCifar(
        folder, _as_hwc(np.concatenate(train_chunks)), train_labels, _as_hwc(test), test_labels
    )


def write_cifar100(
    root: str | Path,
    train_images: int = 100,
    test_images: int = 20,
    seed: int = 1,
    with_manifest: bool = True,
) -> WrittenCifar:
    """Write ``root/cifar-100-python`` with its ``train``, ``test`` and ``meta`` pickles."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, count in (("train", train_images), ("test", test_images)):
        images = _random_images(rng, count)
        fine = rng.integers(0, 100, size=count).tolist()
        _dump(
            folder / split,
            {
                "filenames": [f"{split}_{i}.png" for i in range(count)],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": fine,
                "coarse_labels": [label // 5 for label in fine],
                "data": images.reshape(count, -1),
            },
        )
        written[split] = (_as_hwc(images), fine)
    _dump(
        folder / "meta",
        {
            "fine_label_names": [f"fine_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i:02d}" for i in range(20)],
        },
    )
    if with_manifest:
        write_local_checksums(folder, generator="tests/cifar_archives.py")
    return WrittenCifar(folder, *written["train"], *written["test"])
