"""Datasets for search and evaluation: CIFAR through torchvision, and an embedded synthetic set."""

from .cifar import (
    CIFAR_SPECS,
    LOCAL_CHECKSUMS_FILE,
    DatasetCorruptedError,
    DatasetNotFoundError,
    load_cifar,
    write_local_checksums,
)
from .imagenet import load_imagenet
from .loaders import (
    DATASETS,
    PAPER_UNLABELED,
    UNLABELED_SOURCES,
    EvalData,
    SearchData,
    build_eval_data,
    build_search_data,
)
from .splits import WithoutLabels, darts_split
from .synthetic import SyntheticSpec, SyntheticSplits, make_synthetic
from .transforms import Cutout

__all__ = [
    "CIFAR_SPECS",
    "DATASETS",
    "LOCAL_CHECKSUMS_FILE",
    "PAPER_UNLABELED",
    "UNLABELED_SOURCES",
    "Cutout",
    "DatasetCorruptedError",
    "DatasetNotFoundError",
    "EvalData",
    "SearchData",
    "SyntheticSpec",
    "SyntheticSplits",
    "WithoutLabels",
    "build_eval_data",
    "build_search_data",
    "darts_split",
    "load_cifar",
    "load_imagenet",
    "make_synthetic",
    "write_local_checksums",
]
