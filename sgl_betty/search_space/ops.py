"""The eight DARTS candidate operations and the building blocks of DARTS cells.

Every factory in ``OPS`` has the signature ``factory(channels, stride, affine)`` and keeps the
number of channels; ``stride=2`` halves the spatial size. The search network builds its ops
with ``affine=False`` (DARTS: learnable BN scales would compete with the architecture weights),
the evaluation networks with ``affine=True``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sgl_betty.errors import UnknownOperationError

OpFactory = Callable[[int, int, bool], nn.Module]


class ReLUConvBN(nn.Sequential):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise dilated k x k conv, pointwise 1x1 conv, BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ):
        super().__init__(
            nn.ReLU(),
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (ReLU, depthwise k x k, pointwise 1x1, BN) blocks; only the first one strides."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ):
        super().__init__(
            DilConv(in_channels, in_channels, kernel_size, stride, padding, 1, affine),
            DilConv(in_channels, out_channels, kernel_size, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` op: a zero tensor with the shape a real op at this stride would produce."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        # mul(0) rather than zeros_like keeps the result on the input's autograd graph, as in
        # DARTS, so a cell made only of `none` edges still backpropagates (zeros) to its inputs.
        return x.mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the spatial size with two 1x1 stride-2 convs on inputs shifted by one pixel.

    A single strided 1x1 conv would only ever see the even pixels; the shifted second half
    sees the odd ones.
    """

    def __init__(self, in_channels: int, out_channels: int, affine: bool = True):
        super().__init__()
        if out_channels % 2:
            raise ValueError(
                f"FactorizedReduce needs an even number of output channels, got {out_channels}"
            )
        self.relu = nn.ReLU()
        self.conv_even = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv_odd = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_even(x), self.conv_odd(x[:, :, 1:, 1:])], dim=1))


class OpRegistry(dict):
    """``name -> factory(channels, stride, affine)``; an unknown name raises a clear error."""

    def __missing__(self, name: str) -> OpFactory:
        raise UnknownOperationError(
            f"unknown operation {name!r}; known operations: {', '.join(self)}"
        )


def _skip_connect(channels: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    return FactorizedReduce(channels, channels, affine=affine)


OPS: OpRegistry = OpRegistry(
    {
        "none": lambda channels, stride, affine: Zero(stride),
        "max_pool_3x3": lambda channels, stride, affine: nn.MaxPool2d(3, stride, padding=1),
        # count_include_pad=False: border pixels are averaged over real pixels only, as in DARTS.
        "avg_pool_3x3": lambda channels, stride, affine: nn.AvgPool2d(
            3, stride, padding=1, count_include_pad=False
        ),
        "skip_connect": _skip_connect,
        "sep_conv_3x3": lambda channels, stride, affine: SepConv(
            channels, channels, 3, stride, 1, affine
        ),
        "sep_conv_5x5": lambda channels, stride, affine: SepConv(
            channels, channels, 5, stride, 2, affine
        ),
        "dil_conv_3x3": lambda channels, stride, affine: DilConv(
            channels, channels, 3, stride, 2, 2, affine
        ),
        "dil_conv_5x5": lambda channels, stride, affine: DilConv(
            channels, channels, 5, stride, 4, 2, affine
        ),
    }
)


def build_op(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Builds the op registered as ``name`` (ValueError naming the known ops if there is none)."""
    return OPS[name](channels, stride, affine)


def is_identity(op: nn.Module) -> bool:
    """True for ``skip_connect`` at stride 1, the one op drop path must never drop."""
    return isinstance(op, nn.Identity)
