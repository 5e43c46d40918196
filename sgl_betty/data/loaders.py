"""Entry points: the search data (D_tr, D_val, D_u, test) and the evaluation data.

Paper Section 3.1: the 50K CIFAR training images are split into D_tr (first half) and
D_val (second half); the other CIFAR's training images, without labels, are D_u.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from .cifar import CIFAR_SPECS, CifarSpec, is_locally_generated, load_cifar
from .seeding import seeded_generator
from .splits import WithoutLabels, darts_split, first, subset
from .synthetic import SyntheticSpec, TensorImageDataset, UnlabeledTensorDataset, make_synthetic
from .transforms import (
    CIFAR_IMAGE_SIZE,
    eval_train_transform,
    inference_transform,
    search_transform,
    tensor_augmentation,
)

DATASETS = ("cifar100", "cifar10", "synthetic")
UNLABELED_SOURCES = ("cifar10", "cifar100", "train", "synthetic")
# The paper's D_u: the other CIFAR's images (Section 3.1); synthetic has its own pool.
PAPER_UNLABELED = {"cifar100": "cifar10", "cifar10": "cifar100", "synthetic": "synthetic"}

_TRAIN_STREAM, _VAL_STREAM, _UNLABELED_STREAM, _EVAL_STREAM = range(4)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; allowed: {', '.join(DATASETS)}")


def _resolve_unlabeled(dataset: str, unlabeled: str | None) -> str:
    if unlabeled is None:
        return PAPER_UNLABELED[dataset]
    if unlabeled not in UNLABELED_SOURCES:
        raise ValueError(
            f"unknown unlabeled source {unlabeled!r}; allowed: {', '.join(UNLABELED_SOURCES)}"
        )
    if unlabeled == dataset and dataset in CIFAR_SPECS:
        raise ValueError(
            f"unlabeled={unlabeled!r} with dataset={dataset!r} would put D_val's images into "
            f"D_u; use unlabeled='train' to reuse the D_tr images, or "
            f"{PAPER_UNLABELED[dataset]!r} (the paper's choice)"
        )
    return unlabeled


def _training_loader(
    dataset: Dataset,
    name: str,
    batch_size: int,
    generator: torch.Generator,
    num_workers: int,
    pin_memory: bool,
) -> DataLoader:
    if len(dataset) < batch_size:
        raise ValueError(
            f"{name} has {len(dataset)} examples, fewer than one batch of {batch_size}; "
            "with drop_last it would yield nothing (lower batch_size or raise limit/sizes)"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def _first_of(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None else subset(dataset, first(range(len(dataset)), limit))


def _source_line(dataset: Dataset, name: str, root: Path) -> str:
    origin = (
        "locally generated files, md5 from their manifest"
        if is_locally_generated(dataset)
        else "torchvision files"
    )
    return f"{name} from {root} ({origin})"


@dataclass
class SearchData:
    """What an architecture search consumes.

    ``train`` and ``val`` yield (images, labels) batches; ``unlabeled`` yields image
    batches only. ``test`` is a dataset (no augmentation) kept for evaluation.
    """

    dataset: str
    unlabeled_source: str
    num_classes: int
    image_size: int
    batch_size: int
    train: DataLoader
    val: DataLoader
    unlabeled: DataLoader
    test: Dataset
    details: tuple[str, ...] = ()

    def describe(self) -> str:
        steps = ", ".join(
            f"{name} {len(loader)}"
            for name, loader in (("D_tr", self.train), ("D_val", self.val), ("D_u", self.unlabeled))
        )
        return "\n".join(
            [
                f"search data: {self.dataset}, {self.num_classes} classes, "
                f"{self.image_size}x{self.image_size} images",
                *(f"  {line}" for line in self.details),
                f"  D_tr {len(self.train.dataset)}, D_val {len(self.val.dataset)}, "
                f"D_u {len(self.unlabeled.dataset)} ({self.unlabeled_source}), "
                f"test {len(self.test)}",
                f"  batch {self.batch_size} (shuffled, drop_last); batches per epoch: {steps}",
            ]
        )


@dataclass
class EvalData:
    """Training a found architecture from scratch: all labeled training images, then test."""

    dataset: str
    num_classes: int
    image_size: int
    batch_size: int
    train: DataLoader
    test: DataLoader
    details: tuple[str, ...] = ()

    def describe(self) -> str:
        return "\n".join(
            [
                f"evaluation data: {self.dataset}, {self.num_classes} classes, "
                f"{self.image_size}x{self.image_size} images",
                *(f"  {line}" for line in self.details),
                f"  train {len(self.train.dataset)} ({len(self.train)} batches of "
                f"{self.batch_size}, shuffled, drop_last), test {len(self.test.dataset)}",
            ]
        )


def _unlabeled_cifar(
    source: str,
    root: Path,
    download: bool,
    normalization: CifarSpec,
    image_size: int,
    limit: int | None,
    local_checksums: bool = False,
) -> Dataset:
    # D_u goes through the searching network, so it is normalized with the statistics
    # of the dataset being searched, not its own.
    transform = search_transform(normalization.mean, normalization.std, image_size)
    images = load_cifar(
        source,
        root,
        train=True,
        transform=transform,
        download=download,
        local_checksums=local_checksums,
    )
    return WithoutLabels(_first_of(images, limit))


def _unlabeled_synthetic(spec: SyntheticSpec, image_size: int, limit: int | None) -> Dataset:
    pool_spec = replace(spec, image_size=image_size, train=0, val=0, test=0)
    pool = make_synthetic(pool_spec).unlabeled
    augmented = UnlabeledTensorDataset(pool.images, tensor_augmentation(image_size))
    return _first_of(augmented, limit)


def build_search_data(
    dataset: str = "cifar100",
    unlabeled: str | None = None,
    *,
    root: str | os.PathLike = "data",
    download: bool = False,
    batch_size: int = 64,
    train_portion: float = 0.5,
    num_workers: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    synthetic: SyntheticSpec | Mapping | None = None,
    limit: int | None = None,
    pin_memory: bool = False,
    local_checksums: bool = False,
) -> SearchData:
    """Build D_tr, D_val and D_u loaders for architecture search.

    ``unlabeled=None`` takes the paper's choice (the other CIFAR; synthetic's own pool).
    ``limit`` keeps the first N images of every split, for tiny runs on real data.
    ``train_portion`` splits real CIFAR; synthetic data has explicit split sizes.
    Shuffling is reproducible from ``seed``; augmentation draws come from torch's global
    RNG with num_workers=0, and from the loader's seed-derived worker seeds otherwise.
    ``local_checksums``: see ``load_cifar``.
    """
    _check_dataset(dataset)
    unlabeled_source = _resolve_unlabeled(dataset, unlabeled)
    root = Path(root).expanduser()
    synthetic_spec = SyntheticSpec.from_mapping(synthetic)
    details: list[str] = []

    if dataset == "synthetic":
        synthetic_spec = synthetic_spec.with_image_size(image_size)
        size = synthetic_spec.image_size
        num_classes = synthetic_spec.num_classes
        splits = make_synthetic(synthetic_spec)
        augment = tensor_augmentation(size)
        train_set = _first_of(
            TensorImageDataset(splits.train.images, splits.train.targets, augment), limit
        )
        val_set = _first_of(
            TensorImageDataset(splits.val.images, splits.val.targets, augment), limit
        )
        test_set = _first_of(splits.test, limit)
        details.append(f"generated in memory, seed {synthetic_spec.seed}")
        normalization = None
    else:
        spec = CIFAR_SPECS[dataset]
        size = image_size or CIFAR_IMAGE_SIZE
        num_classes = spec.num_classes
        normalization = spec
        transform = search_transform(spec.mean, spec.std, size)
        full_train = load_cifar(
            dataset,
            root,
            train=True,
            transform=transform,
            download=download,
            local_checksums=local_checksums,
        )
        train_indices, val_indices = darts_split(len(full_train), train_portion)
        train_indices, val_indices = first(train_indices, limit), first(val_indices, limit)
        train_set = subset(full_train, train_indices)
        val_set = subset(full_train, val_indices)
        test = load_cifar(
            dataset,
            root,
            train=False,
            transform=inference_transform(spec.mean, spec.std, size),
            download=download,
            local_checksums=local_checksums,
        )
        test_set = _first_of(test, limit)
        details.append(_source_line(full_train, dataset, root))
        details.append(
            f"D_tr = training images [{train_indices.start}, {train_indices.stop}), "
            f"D_val = [{val_indices.start}, {val_indices.stop}) (train_portion {train_portion})"
        )

    if unlabeled_source == "train":
        unlabeled_set: Dataset = WithoutLabels(train_set)
        details.append("D_u = the D_tr images, labels dropped (the released code's choice)")
    elif unlabeled_source == "synthetic":
        if dataset == "synthetic":
            pool = UnlabeledTensorDataset(splits.unlabeled.images, tensor_augmentation(size))
            unlabeled_set = _first_of(pool, limit)
        else:
            unlabeled_set = _unlabeled_synthetic(synthetic_spec, size, limit)
        details.append(f"D_u = synthetic pool, seed {synthetic_spec.seed}")
    else:
        other = CIFAR_SPECS[unlabeled_source]
        unlabeled_set = _unlabeled_cifar(
            unlabeled_source, root, download, normalization or other, size, limit, local_checksums
        )
        details.append(f"D_u = {unlabeled_source} training images, labels dropped")

    def loader(data: Dataset, name: str, stream: int) -> DataLoader:
        generator = seeded_generator(seed, stream)
        return _training_loader(data, name, batch_size, generator, num_workers, pin_memory)

    return SearchData(
        dataset=dataset,
        unlabeled_source=unlabeled_source,
        num_classes=num_classes,
        image_size=size,
        batch_size=batch_size,
        train=loader(train_set, "D_tr", _TRAIN_STREAM),
        val=loader(val_set, "D_val", _VAL_STREAM),
        unlabeled=loader(unlabeled_set, "D_u", _UNLABELED_STREAM),
        test=test_set,
        details=tuple(details),
    )


def build_eval_data(
    dataset: str = "cifar100",
    *,
    root: str | os.PathLike = "data",
    download: bool = False,
    batch_size: int = 96,
    cutout: bool = True,
    cutout_length: int = 16,
    num_workers: int = 0,
    seed: int = 0,
    image_size: int | None = None,
    synthetic: SyntheticSpec | Mapping | None = None,
    limit: int | None = None,
    pin_memory: bool = False,
    local_checksums: bool = False,
) -> EvalData:
    """Loaders for training a found cell from scratch: every training image, and test.

    For synthetic data the training set is its train and val splits together, as the
    paper trains the evaluation network on D_tr and D_val combined.
    """
    _check_dataset(dataset)
    root = Path(root).expanduser()
    length = cutout_length if cutout else 0
    details: list[str] = []
    if dataset == "synthetic":
        spec = SyntheticSpec.from_mapping(synthetic).with_image_size(image_size)
        size, num_classes = spec.image_size, spec.num_classes
        splits = make_synthetic(spec)
        train_set: Dataset = ConcatDataset(
            [
                TensorImageDataset(part.images, part.targets, tensor_augmentation(size, length))
                for part in (splits.train, splits.val)
            ]
        )
        test_set: Dataset = splits.test
        details.append(f"generated in memory, seed {spec.seed}")
    else:
        cifar = CIFAR_SPECS[dataset]
        size, num_classes = image_size or CIFAR_IMAGE_SIZE, cifar.num_classes
        train_set = load_cifar(
            dataset,
            root,
            train=True,
            transform=eval_train_transform(cifar.mean, cifar.std, length, size),
            download=download,
            local_checksums=local_checksums,
        )
        test_set = load_cifar(
            dataset,
            root,
            train=False,
            transform=inference_transform(cifar.mean, cifar.std, size),
            download=download,
            local_checksums=local_checksums,
        )
        details.append(_source_line(train_set, dataset, root))
    details.append(f"cutout {length}" if length else "no cutout")
    train_set, test_set = _first_of(train_set, limit), _first_of(test_set, limit)

    train_loader = _training_loader(
        train_set,
        "training set",
        batch_size,
        seeded_generator(seed, _EVAL_STREAM),
        num_workers,
        pin_memory,
    )
    test_loader = DataLoader(
        test_set,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
    return EvalData(
        dataset=dataset,
        num_classes=num_classes,
        image_size=size,
        batch_size=batch_size,
        train=train_loader,
        test=test_loader,
        details=tuple(details),
    )
