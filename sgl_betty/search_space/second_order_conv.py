"""A 2-d convolution whose second derivatives cost what they should.

Every implicit hypergradient (Neumann, CG) and the exact unrolled one differentiates a
convolution's backward: Hessian-vector products d/dw (grad_w L . v) and mixed products
d/dA (grad_w L . v). PyTorch differentiates ``convolution_backward`` with one composite formula
(``_convolution_double_backward``) that ignores which of its results are needed: it always
computes the second-order weight-gradient term, which a mixed product into the architecture
never uses, and for a grouped convolution (every depthwise convolution of ``sep_conv`` and
``dil_conv``) it computes that term one group at a time, one small convolution per channel.
On the DARTS supernet that loop is a third of the aten ops and a fifth of the time of a
Hessian-vector product (BENCHMARKS.md, "SGL step at its floor").

``Conv2d`` keeps ``nn.Conv2d``'s forward and first-order backward (the same kernel calls, so
the same numbers bit for bit). Inside ``second_order_pass()``, the context the hypergradient
solvers open around the forwards they will differentiate twice, its backward is written, when
it records a graph (``create_graph=True``), as two first-order operations: the input gradient
as a transposed convolution and the weight gradient as ``convolution_backward`` of the weight
alone. Their own derivatives are ordinary first-order backwards: autograd computes only the
gradients a product asks for, and grouped convolutions run in one fused kernel.

Everywhere else (every descent step and first-order hypergradient) it is ``nn.Conv2d``: the
custom autograd function costs Python time per call, a fifth of a small network's forward and
backward. Inside the context it also steps aside without grad mode, under autocast (whose casts
the plain path records) and inside ``torch.compile``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn

aten = torch.ops.aten

_SECOND_ORDER = ContextVar("second_order_pass", default=False)


@contextmanager
def second_order_pass() -> Iterator[None]:
    """Forwards run inside will be differentiated twice: ``Conv2d`` records cheap second
    derivatives."""
    token = _SECOND_ORDER.set(True)
    try:
        yield
    finally:
        _SECOND_ORDER.reset(token)


def _output_padding(input_size, output_size, weight_size, stride, padding, dilation) -> list[int]:
    """The rows and columns a strided convolution dropped, which its transpose must add back."""
    return [
        input_size[i]
        - (
            (output_size[i] - 1) * stride[i]
            - 2 * padding[i]
            + dilation[i] * (weight_size[i] - 1)
            + 1
        )
        for i in range(len(stride))
    ]


class _Convolution(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.geometry
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if not torch.is_grad_enabled():  # a plain backward: nn.Conv2d's one fused call
            gx, gw, gb = aten.convolution_backward(
                grad, x, weight, ctx.bias_sizes, stride, padding, dilation, False, [0, 0],
                groups, [need_x, need_w, need_b],
            )  # fmt: skip
            return gx, gw, gb, None, None, None, None
        gx = gw = gb = None
        if need_x:
            extra = _output_padding(
                x.shape[2:], grad.shape[2:], weight.shape[2:], stride, padding, dilation
            )
            gx = F.conv_transpose2d(grad, weight, None, stride, padding, extra, groups, dilation)
        if need_w:
            gw = aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], groups,
                [False, True, False],
            )[1]  # fmt: skip
        if need_b:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None, None, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` with cheap second derivatives (module docstring); same parameters and
    state dict, same numbers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            not _SECOND_ORDER.get()
            or self.padding_mode != "zeros"
            or isinstance(self.padding, str)
            or not torch.is_grad_enabled()
            or torch.is_autocast_enabled(x.device.type)
            or torch.compiler.is_compiling()
        ):
            return super().forward(x)
        return _Convolution.apply(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


def use_second_order_convolutions(module: nn.Module) -> nn.Module:
    """Turn every plain ``nn.Conv2d`` inside ``module`` into ``Conv2d`` (in place: parameters,
    buffers and hooks stay; subclasses of ``nn.Conv2d`` are left alone). Returns ``module``."""
    for sub in module.modules():
        if type(sub) is nn.Conv2d:
            sub.__class__ = Conv2d
    return module
