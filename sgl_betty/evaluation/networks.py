"""Networks that train a searched cell from scratch (reference: DARTS ``model.py``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sgl_betty.genotypes import Genotype, resolve_genotype, validate_genotype
from sgl_betty.search_space.darts import reduction_indices
from sgl_betty.search_space.ops import OPS, FactorizedReduce, ReLUConvBN, is_identity
from sgl_betty.search_space.scheduled import inverted_dropout, register_scalar, set_scalars


def drop_path(x: torch.Tensor, drop_prob: float | torch.Tensor) -> torch.Tensor:
    """Zeroes whole samples with probability ``drop_prob`` and rescales the rest by
    1 / (1 - drop_prob), so that the expected output is unchanged. No branch on the value:
    ``drop_prob`` may be a tensor (the network's buffer) without a host sync."""
    if not isinstance(drop_prob, torch.Tensor):
        drop_prob = torch.tensor(float(drop_prob), device=x.device)
    return inverted_dropout(x, drop_prob, mask_shape=(x.size(0), 1, 1, 1))


class EvalCell(nn.Module):
    """A cell built from a genotype: each node sums the two ops its genotype names."""

    def __init__(
        self,
        genotype: Genotype,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(prev_prev_channels, channels)
        else:
            self.preprocess0 = ReLUConvBN(prev_prev_channels, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(prev_channels, channels, 1, 1, 0)

        if reduction:
            edges, concat = genotype.reduce, genotype.reduce_concat
        else:
            edges, concat = genotype.normal, genotype.normal_concat
        self.concat = [int(node) for node in concat]
        self.multiplier = len(self.concat)
        self.steps = len(edges) // 2
        self.inputs = [int(index) for _, index in edges]
        self.ops = nn.ModuleList(
            OPS[name](channels, 2 if reduction and index < 2 else 1, True) for name, index in edges
        )

    def forward(
        self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float | torch.Tensor | None
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(self.steps):
            node_sum = 0
            for edge in (2 * node, 2 * node + 1):
                op = self.ops[edge]
                h = op(states[self.inputs[edge]])
                # An identity edge has no weights to regularise; dropping it would only cut the
                # cell's shortcut.
                if self.training and drop_prob is not None and not is_identity(op):
                    h = drop_path(h, drop_prob)
                node_sum = node_sum + h
            states.append(node_sum)
        return torch.cat([states[node] for node in self.concat], dim=1)


class AuxiliaryHeadCIFAR(nn.Module):
    """Auxiliary classifier for an 8x8 input (a 32x32 image after two reductions)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=3, padding=0, count_include_pad=False),  # 8x8 -> 2x2
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),  # 2x2 -> 1x1
            nn.BatchNorm2d(768),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class AuxiliaryHeadImageNet(nn.Module):
    """Auxiliary classifier of the ImageNet network.

    The reference calls its input 14x14, but at 224x224 images it sits after the second
    reduction and receives 7x7 maps (7x7 -> 2x2 -> 1x1); any input of 7 or 8 pixels works.
    """

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(),
            nn.AvgPool2d(5, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False),
            # No BN here: the reference omitted it in the experiments the paper reports.
            nn.ReLU(),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class _EvalNetwork(nn.Module):
    """Cells, auxiliary head and classifier, shared by the CIFAR and ImageNet networks."""

    auxiliary_head_cls: type[nn.Module]

    def __init__(
        self,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | dict[str, Any] | str,
        C: int,
        stem_channels: int,
        reduction_prev: bool,
    ):
        super().__init__()
        genotype = resolve_genotype(genotype)
        # Two incoming edges per intermediate node: searches with fewer nodes (steps) are valid too.
        validate_genotype(genotype, steps=max(len(genotype.normal) // 2, 1))
        self.genotype = genotype
        self.layers = layers
        self.auxiliary = auxiliary
        # The rate the trainer sets every epoch: a buffer (read by the cells on the device),
        # and off (None to the cells, no random draws) while it is 0.
        register_scalar(self, "drop_path_rate", 0.0)
        self._drop_path_prob = 0.0
        self.drop_path_active = False
        self.auxiliary_index = 2 * layers // 3

        prev_prev_channels, prev_channels, channels = stem_channels, stem_channels, C
        self.cells = nn.ModuleList()
        auxiliary_channels = None
        for index in range(layers):
            reduction = index in reduction_indices(layers)
            if reduction:
                channels *= 2
            cell = EvalCell(
                genotype, prev_prev_channels, prev_channels, channels, reduction, reduction_prev
            )
            self.cells.append(cell)
            reduction_prev = reduction
            prev_prev_channels, prev_channels = prev_channels, cell.multiplier * channels
            if index == self.auxiliary_index:
                auxiliary_channels = prev_channels
        if auxiliary:
            self.auxiliary_head = self.auxiliary_head_cls(auxiliary_channels, num_classes)
        # The ImageNet reference pools with AvgPool2d(7): the same at 224x224 images (7x7 maps),
        # but adaptive pooling also runs at the small sizes tests and smoke runs use.
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev_channels, num_classes)

    @property
    def drop_path_prob(self) -> float:
        return self._drop_path_prob

    @drop_path_prob.setter
    def drop_path_prob(self, value: float) -> None:
        set_scalars([self.drop_path_rate], value)
        self._drop_path_prob = float(value)
        self.drop_path_active = value > 0

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, logits_aux)``; ``logits_aux`` is None unless training with the head."""
        logits_aux = None
        drop_prob = self.drop_path_rate if self.drop_path_active else None
        s0, s1 = self.stem_forward(x)
        for index, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, drop_prob)
            if index == self.auxiliary_index and self.auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_EvalNetwork):
    """The DARTS CIFAR network: 3x3 stem to 3C channels, then ``layers`` cells."""

    auxiliary_head_cls = AuxiliaryHeadCIFAR

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | dict[str, Any] | str,
    ):
        stem_channels = 3 * C
        super().__init__(
            num_classes, layers, auxiliary, genotype, C, stem_channels, reduction_prev=False
        )
        self.stem = nn.Sequential(
            nn.Conv2d(3, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
        )

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_EvalNetwork):
    """The DARTS ImageNet network: three stride-2 stem convs (224 -> 28), then ``layers``
    cells."""

    auxiliary_head_cls = AuxiliaryHeadImageNet

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype | dict[str, Any] | str,
    ):
        # The first cell's s0 comes from stem0, at twice s1's resolution, hence reduction_prev.
        super().__init__(num_classes, layers, auxiliary, genotype, C, C, reduction_prev=True)
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)
