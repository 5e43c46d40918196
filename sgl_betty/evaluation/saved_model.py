"""model.pt of an evaluation run: the trained weights with what it takes to rebuild the network."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from sgl_betty.genotypes import genotype_from_dict

from .networks import NetworkCIFAR, NetworkImageNet

NETWORK_KINDS = {"cifar": NetworkCIFAR, "imagenet": NetworkImageNet}


@dataclass(frozen=True)
class NetworkSpec:
    # "cifar" (3x3 stem, for 32 px images) or "imagenet" (three stride-2 stem convolutions).
    kind: str
    init_channels: int
    num_classes: int
    layers: int
    auxiliary: bool
    # genotypes.genotype_to_dict form.
    genotype: dict[str, Any]

    def __post_init__(self) -> None:
        if self.kind not in NETWORK_KINDS:
            raise ValueError(
                f"unknown network kind {self.kind!r}; choose one of: {', '.join(NETWORK_KINDS)}"
            )

    def build(self) -> nn.Module:
        # The network validates the genotype.
        genotype = genotype_from_dict(self.genotype)
        return NETWORK_KINDS[self.kind](
            self.init_channels, self.num_classes, self.layers, self.auxiliary, genotype
        )


def trained_network_payload(spec: NetworkSpec, network: nn.Module, **extra: Any) -> dict:
    """What model.pt holds: ``network`` (the spec), ``state_dict`` and any ``extra`` entries."""
    state = {name: tensor.detach().cpu() for name, tensor in network.state_dict().items()}
    return {"network": asdict(spec), "state_dict": state, **extra}


def load_trained_network(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict]:
    """The network saved in a model.pt, weights loaded, in eval mode; and the whole payload."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    network = NetworkSpec(**payload["network"]).build()
    network.load_state_dict(payload["state_dict"])
    network.eval()
    return network, payload
