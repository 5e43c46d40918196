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

from sgl_betty.choices import SearchDataset, UnlabeledSource, values

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

DATASETS = values(SearchDataset)
UNLABELED_SOURCES = values(UnlabeledSource)
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


@dataclass
class _LabeledSearchSets:
    """D_tr, D_val and test of a search, before any loader, and what D_u needs from them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    image_size: int
    normalization: CifarSpec | None  # None: synthetic images, not normalised
    unlabeled_pool: Dataset | None  # synthetic data's own unlabeled pool
    details: list[str]


def _synthetic_search_sets(
    spec: SyntheticSpec, image_size: int | None, limit: int | None
) -> _LabeledSearchSets:
    spec = spec.with_image_size(image_size)
    size = spec.image_size
    splits = make_synthetic(spec)
    augment = tensor_augmentation(size)
    return _LabeledSearchSets(
        train=_first_of(
            TensorImageDataset(splits.train.images, splits.train.targets, augment), limit
        ),
        val=_first_of(TensorImageDataset(splits.val.images, splits.val.targets, augment), limit),
        test=_first_of(splits.test, limit),
        num_classes=spec.num_classes,
        image_size=size,
        normalization=None,
        unlabeled_pool=UnlabeledTensorDataset(splits.unlabeled.images, tensor_augmentation(size)),
        details=[f"generated in memory, seed {spec.seed}"],
    )


def _cifar_search_sets(
    dataset: str,
    root: Path,
    download: bool,
    image_size: int | None,
    train_portion: float,
    limit: int | None,
    local_checksums: bool,
) -> _LabeledSearchSets:
    spec = CIFAR_SPECS[dataset]
    size = image_size or CIFAR_IMAGE_SIZE
    full_train = load_cifar(
        dataset,
        root,
        train=True,
        transform=search_transform(spec.mean, spec.std, size),
        download=download,
        local_checksums=local_checksums,
    )
    train_indices, val_indices = darts_split(len(full_train), train_portion)
    train_indices, val_indices = first(train_indices, limit), first(val_indices, limit)
    test = load_cifar(
        dataset,
        root,
        train=False,
        transform=inference_transform(spec.mean, spec.std, size),
        download=download,
        local_checksums=local_checksums,
    )
    return _LabeledSearchSets(
        train=subset(full_train, train_indices),
        val=subset(full_train, val_indices),
        test=_first_of(test, limit),
        num_classes=spec.num_classes,
        image_size=size,
        normalization=spec,
        unlabeled_pool=None,
        details=[
            _source_line(full_train, dataset, root),
            f"D_tr = training images [{train_indices.start}, {train_indices.stop}), "
            f"D_val = [{val_indices.start}, {val_indices.stop}) (train_portion {train_portion})",
        ],
    )


def _unlabeled_search_set(
    source: str,
    labeled: _LabeledSearchSets,
    synthetic_spec: SyntheticSpec,
    root: Path,
    download: bool,
    limit: int | None,
    local_checksums: bool,
) -> tuple[Dataset, str]:
    """D_u from ``source`` and the line that describes it."""
    size = labeled.image_size
    if source == "train":
        return (
            WithoutLabels(labeled.train),
            "D_u = the D_tr images, labels dropped (the released code's choice)",
        )
    if source == "synthetic":
        if labeled.unlabeled_pool is not None:
            unlabeled = _first_of(labeled.unlabeled_pool, limit)
        else:
            unlabeled = _unlabeled_synthetic(synthetic_spec, size, limit)
        return unlabeled, f"D_u = synthetic pool, seed {synthetic_spec.seed}"
    normalization = labeled.normalization or CIFAR_SPECS[source]
    unlabeled = _unlabeled_cifar(
        source, root, download, normalization, size, limit, local_checksums
    )
    return unlabeled, f"D_u = {source} training images, labels dropped"


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
    if dataset == "synthetic":
        labeled = _synthetic_search_sets(synthetic_spec, image_size, limit)
    else:
        labeled = _cifar_search_sets(
            dataset, root, download, image_size, train_portion, limit, local_checksums
        )
    unlabeled_set, unlabeled_line = _unlabeled_search_set(
        unlabeled_source, labeled, synthetic_spec, root, download, limit, local_checksums
    )

    def loader(data: Dataset, name: str, stream: int) -> DataLoader:
        generator = seeded_generator(seed, stream)
        return _training_loader(data, name, batch_size, generator, num_workers, pin_memory)

    return SearchData(
        dataset=dataset,
        unlabeled_source=unlabeled_source,
        num_classes=labeled.num_classes,
        image_size=labeled.image_size,
        batch_size=batch_size,
        train=loader(labeled.train, "D_tr", _TRAIN_STREAM),
        val=loader(labeled.val, "D_val", _VAL_STREAM),
        unlabeled=loader(unlabeled_set, "D_u", _UNLABELED_STREAM),
        test=labeled.test,
        details=(*labeled.details, unlabeled_line),
    )


def _synthetic_eval_sets(spec: SyntheticSpec, cutout_length: int):
    """Training set (train and val splits together), test set, image size, classes, source."""
    size = spec.image_size
    splits = make_synthetic(spec)
    train_set = ConcatDataset(
        [
            TensorImageDataset(part.images, part.targets, tensor_augmentation(size, cutout_length))
            for part in (splits.train, splits.val)
        ]
    )
    return train_set, splits.test, size, spec.num_classes, f"generated in memory, seed {spec.seed}"


def _cifar_eval_sets(
    dataset: str,
    root: Path,
    download: bool,
    image_size: int | None,
    cutout_length: int,
    local_checksums: bool,
):
    """Training set, test set, image size, classes and source line of a CIFAR evaluation."""
    cifar = CIFAR_SPECS[dataset]
    size = image_size or CIFAR_IMAGE_SIZE
    train_set = load_cifar(
        dataset,
        root,
        train=True,
        transform=eval_train_transform(cifar.mean, cifar.std, cutout_length, size),
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
    return train_set, test_set, size, cifar.num_classes, _source_line(train_set, dataset, root)


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
    if dataset == "synthetic":
        spec = SyntheticSpec.from_mapping(synthetic).with_image_size(image_size)
        train_set, test_set, size, num_classes, source = _synthetic_eval_sets(spec, length)
    else:
        train_set, test_set, size, num_classes, source = _cifar_eval_sets(
            dataset, root, download, image_size, length, local_checksums
        )
    details = [source, f"cutout {length}" if length else "no cutout"]
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
