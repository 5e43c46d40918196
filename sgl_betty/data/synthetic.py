"""An embedded, procedurally generated CIFAR-shaped dataset for runs without real data.

Each class owns a fixed template: a smooth random pattern (low-resolution noise
upsampled to the image size) plus a class colour. A sample is its class template,
shifted by a few pixels (circularly), scaled by a random contrast, with pixel noise
added. The class is therefore recoverable from colour and shape (even a linear model
beats chance clearly) but not trivially, and the images live in roughly the normalized
range a network sees after CIFAR normalization. Everything derives from one seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .seeding import seeded_generator

SPLITS = ("train", "val", "unlabeled", "test")


@dataclass(frozen=True)
class SyntheticSpec:
    # Seed of the data itself, apart from the run seed: every run sees the same dataset,
    # as with real CIFAR.
    seed: int = 0
    num_classes: int = 10
    image_size: int = 32
    train: int = 512
    val: int = 512
    unlabeled: int = 512
    test: int = 512
    noise: float = 1.0
    # Amplitude of a per-sample smooth random pattern that carries no class information.
    clutter: float = 1.5
    colour: float = 0.2
    max_shift: int = 6
    # Side of the random grid each template is upsampled from: small = smoother patterns.
    template_resolution: int = 4

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"synthetic num_classes must be >= 2, got {self.num_classes}")
        if self.image_size < 4:
            raise ValueError(f"synthetic image_size must be >= 4, got {self.image_size}")
        if self.seed < 0:
            raise ValueError(f"synthetic seed must be >= 0, got {self.seed}")
        for split in SPLITS:
            if getattr(self, split) < 0:
                raise ValueError(f"synthetic size of {split!r} must be >= 0")

    @classmethod
    def from_mapping(cls, values: Mapping | SyntheticSpec | None) -> SyntheticSpec:
        if values is None:
            return cls()
        if isinstance(values, SyntheticSpec):
            return values
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown synthetic option(s) {unknown}; allowed: {', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    def with_image_size(self, image_size: int | None) -> SyntheticSpec:
        return self if image_size is None else replace(self, image_size=image_size)

    def as_dict(self) -> dict:
        return asdict(self)


def class_templates(spec: SyntheticSpec) -> torch.Tensor:
    """(num_classes, 3, H, W) float templates: a unit-spread smooth pattern plus a colour."""
    gen = seeded_generator(spec.seed, 0)
    coarse = torch.randn(
        spec.num_classes,
        3,
        spec.template_resolution,
        spec.template_resolution,
        generator=gen,
    )
    colour = spec.colour * torch.randn(spec.num_classes, 3, 1, 1, generator=gen)
    return _smooth(coarse, spec.image_size) + colour


def _smooth(coarse: torch.Tensor, image_size: int) -> torch.Tensor:
    """Upsample a coarse random grid to a smooth pattern with unit spread per image."""
    pattern = F.interpolate(
        coarse, size=(image_size, image_size), mode="bicubic", align_corners=False
    )
    return pattern / pattern.flatten(1).std(dim=1).clamp_min(1e-6)[:, None, None, None]


def _draw_samples(
    templates: torch.Tensor, count: int, spec: SyntheticSpec, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    num_classes, size = templates.shape[0], spec.image_size
    if count == 0:
        return torch.empty(0, 3, size, size), torch.empty(0, dtype=torch.int64)
    # Balanced classes, in shuffled order, like the real CIFAR splits.
    labels = torch.arange(count) % num_classes
    labels = labels[torch.randperm(count, generator=gen)]
    shifts = torch.randint(-spec.max_shift, spec.max_shift + 1, (count, 2), generator=gen)
    contrast = 0.75 + 0.5 * torch.rand(count, 1, 1, 1, generator=gen)
    noise = spec.noise * torch.randn(count, 3, size, size, generator=gen)
    resolution = spec.template_resolution
    clutter = spec.clutter * _smooth(
        torch.randn(count, 3, resolution, resolution, generator=gen), size
    )
    images = torch.stack(
        [
            torch.roll(templates[label], shifts=(dy, dx), dims=(1, 2))
            for label, (dy, dx) in zip(labels.tolist(), shifts.tolist(), strict=True)
        ]
    )
    # Rescale to about unit spread, the range a network sees after CIFAR normalization.
    spread = (1.0 + spec.colour**2 + spec.clutter**2 + spec.noise**2) ** 0.5
    return (images * contrast + clutter + noise) / spread, labels


class TensorImageDataset(Dataset):
    """Images held as one float tensor; yields (image, label) like torchvision datasets."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class UnlabeledTensorDataset(Dataset):
    """Images only: the synthetic unlabeled pool keeps no labels at all."""

    def __init__(
        self,
        images: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.images = images
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[index]
        return self.transform(image) if self.transform is not None else image


@dataclass
class SyntheticSplits:
    spec: SyntheticSpec
    train: TensorImageDataset
    val: TensorImageDataset
    unlabeled: UnlabeledTensorDataset
    test: TensorImageDataset


def make_synthetic(spec: SyntheticSpec | Mapping | None = None) -> SyntheticSplits:
    """Generate the four splits; the same spec (seed included) always gives the same tensors."""
    spec = SyntheticSpec.from_mapping(spec)
    templates = class_templates(spec)
    drawn = {
        split: _draw_samples(
            templates, getattr(spec, split), spec, seeded_generator(spec.seed, 1, index)
        )
        for index, split in enumerate(SPLITS)
    }
    return SyntheticSplits(
        spec=spec,
        train=TensorImageDataset(*drawn["train"]),
        val=TensorImageDataset(*drawn["val"]),
        unlabeled=UnlabeledTensorDataset(drawn["unlabeled"][0]),
        test=TensorImageDataset(*drawn["test"]),
    )
