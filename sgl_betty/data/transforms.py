"""Image transforms of the DARTS recipes: search augmentation, evaluation with Cutout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import transforms

CIFAR_IMAGE_SIZE = 32


class Cutout:
    """Zero one ``length`` x ``length`` square (clipped at the border) of a CHW tensor.

    The square's centre is uniform over the whole image, as in DeVries & Taylor and the
    DARTS evaluation code, so squares near the border are partly outside the image.
    """

    def __init__(self, length: int, generator: torch.Generator | None = None) -> None:
        if length <= 0:
            raise ValueError(f"Cutout length must be positive, got {length}")
        self.length = length
        self.generator = generator

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        centre_y = int(torch.randint(height, (1,), generator=self.generator))
        centre_x = int(torch.randint(width, (1,), generator=self.generator))
        half = self.length // 2
        top, bottom = max(centre_y - half, 0), min(centre_y + half, height)
        left, right = max(centre_x - half, 0), min(centre_x + half, width)
        image = image.clone()
        image[..., top:bottom, left:right] = 0
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


def _resize(image_size: int) -> list:
    # Only for shrinking real CIFAR in tiny CPU runs; at 32 the recipe is untouched.
    return [] if image_size == CIFAR_IMAGE_SIZE else [transforms.Resize(image_size)]


def _crop_padding(image_size: int) -> int:
    return max(1, image_size // 8)


def search_transform(
    mean: Sequence[float], std: Sequence[float], image_size: int = CIFAR_IMAGE_SIZE
) -> transforms.Compose:
    """DARTS search augmentation, used for the train, validation and unlabeled queues alike."""
    return transforms.Compose(
        [
            *_resize(image_size),
            transforms.RandomCrop(image_size, padding=_crop_padding(image_size)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def eval_train_transform(
    mean: Sequence[float],
    std: Sequence[float],
    cutout_length: int = 0,
    image_size: int = CIFAR_IMAGE_SIZE,
) -> transforms.Compose:
    """Augmentation for training a found architecture from scratch (cutout 0 = off)."""
    steps = [
        *_resize(image_size),
        transforms.RandomCrop(image_size, padding=_crop_padding(image_size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ]
    if cutout_length > 0:
        steps.append(Cutout(cutout_length))
    return transforms.Compose(steps)


def inference_transform(
    mean: Sequence[float], std: Sequence[float], image_size: int = CIFAR_IMAGE_SIZE
) -> transforms.Compose:
    return transforms.Compose(
        [*_resize(image_size), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


def tensor_augmentation(image_size: int, cutout_length: int = 0) -> transforms.Compose:
    """Crop-and-flip (and optional cutout) for images that are already normalized tensors."""
    steps = [
        transforms.RandomCrop(image_size, padding=_crop_padding(image_size)),
        transforms.RandomHorizontalFlip(),
    ]
    if cutout_length > 0:
        steps.append(Cutout(cutout_length))
    return transforms.Compose(steps)
