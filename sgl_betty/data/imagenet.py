"""ImageNet for evaluation (DARTS's train_imagenet.py): an ImageFolder with train/ and val/.

The reference trains on ``<root>/train`` with RandomResizedCrop 224, horizontal flips and
ColorJitter(0.4, 0.4, 0.4, 0.2), and tests on ``<root>/val`` resized to 256 and centre-cropped
to 224. The crop size is a parameter so that tests can run on tiny images; the resize keeps the
reference's 256 / 224 ratio unless given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torchvision import datasets, transforms

from .cifar import DatasetCorruptedError, DatasetNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_COLOR_JITTER = (0.4, 0.4, 0.4, 0.2)
SPLIT_FOLDERS = ("train", "val")


def imagenet_train_transform(
    crop_size: int = 224, color_jitter: Sequence[float] = REFERENCE_COLOR_JITTER
) -> transforms.Compose:
    brightness, contrast, saturation, hue = color_jitter
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(crop_size),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(
                brightness=brightness, contrast=contrast, saturation=saturation, hue=hue
            ),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def default_resize_size(crop_size: int) -> int:
    return round(crop_size * 256 / 224)


def imagenet_test_transform(
    crop_size: int = 224, resize_size: int | None = None
) -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize(resize_size or default_resize_size(crop_size)),
            transforms.CenterCrop(crop_size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def load_checked_image(path: str) -> Image.Image:
    """ImageFolder's loader (an RGB PIL image), with a file that cannot be decoded named in a
    DatasetCorruptedError instead of PIL's traceback, wherever it is met (workers included)."""
    try:
        with open(path, "rb") as file:
            image = Image.open(file)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetCorruptedError(
            f"the image {path} cannot be decoded ({type(error).__name__}: {error}); it is "
            "truncated or not an image: replace it or remove it from the ImageNet folder"
        ) from None


@dataclass
class ImageFolderSplits:
    root: Path
    train: datasets.ImageFolder
    # The reference reports its results on ImageNet's validation set, used as the test set.
    test: datasets.ImageFolder

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def describe(self) -> str:
        return (
            f"imagenet from {self.root} (ImageFolder), {self.num_classes} classes: "
            f"train {len(self.train)}, val {len(self.test)}"
        )


def _layout_hint(root: Path) -> str:
    return (
        f"expected {root}/train/<class>/<image> and {root}/val/<class>/<image> (the validation "
        "images sorted into the same class folders as train/); point eval.imagenet.root at that folder"
    )


def load_imagenet(
    root: str | os.PathLike,
    *,
    crop_size: int = 224,
    resize_size: int | None = None,
    color_jitter: Sequence[float] = REFERENCE_COLOR_JITTER,
) -> ImageFolderSplits:
    root = Path(root).expanduser()
    if len(color_jitter) != 4:
        raise ValueError(
            f"color_jitter={list(color_jitter)} needs 4 values: brightness, contrast, saturation, hue"
        )
    for split in SPLIT_FOLDERS:
        if not (root / split).is_dir():
            raise DatasetNotFoundError(
                f"ImageNet not found: {root / split} is missing; {_layout_hint(root)}"
            )
    folders = {}
    for split, transform in (
        ("train", imagenet_train_transform(crop_size, color_jitter)),
        ("val", imagenet_test_transform(crop_size, resize_size)),
    ):
        try:
            folders[split] = datasets.ImageFolder(
                root / split, transform=transform, loader=load_checked_image
            )
        except FileNotFoundError as error:
            # ImageFolder's message when a folder has no class folders or no images.
            raise DatasetNotFoundError(
                f"ImageNet at {root / split}: {error}; {_layout_hint(root)}"
            ) from None
    if folders["train"].classes != folders["val"].classes:
        only_train = sorted(set(folders["train"].classes) - set(folders["val"].classes))
        only_val = sorted(set(folders["val"].classes) - set(folders["train"].classes))
        raise DatasetCorruptedError(
            f"ImageNet at {root}: train/ and val/ hold different classes (only in train: "
            f"{only_train[:5]}, only in val: {only_val[:5]}); both need the same class folders, "
            "or labels would not match"
        )
    return ImageFolderSplits(root=root, train=folders["train"], test=folders["val"])
