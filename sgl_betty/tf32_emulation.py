"""TF32 on a CPU: convolutions and matrix products with operands rounded to TF32.

TF32 (NVIDIA Ampere and later) multiplies float32 operands with a 10-bit mantissa (float32 has
23) and accumulates in float32. cuDNN uses it for float32 convolutions by default, cuBLAS for
matrix products when ``torch.backends.cuda.matmul.fp32_precision == "tf32"``. This module
reproduces its rounding where no such GPU is: inside ``EmulatedTF32()``, every float32
convolution (forward and backward) and matrix product whose PyTorch switch says TF32 gets its
operands rounded to the nearest TF32 value (ties away from zero, as the tensor cores' ``cvt.rna``
conversion), then runs in float32. Accumulation order and the GPU's own kernels are not
emulated; for the question it answers (how much of a small perturbation survives an operand's
rounding) the rounding is what matters.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_DROPPED_BITS = 13  # 23 - 10 mantissa bits
_HALF = 1 << (_DROPPED_BITS - 1)
_KEEP = ~((1 << _DROPPED_BITS) - 1)
_EXPONENT = 0x7F800000

aten = torch.ops.aten
# op -> indices of the operands TF32 rounds
_CONVOLUTIONS = {aten.convolution.default: (0, 1), aten.convolution_backward.default: (0, 1, 2)}
_MATMULS = {
    aten.mm.default: (0, 1),
    aten.addmm.default: (1, 2),
    aten.bmm.default: (0, 1),
    aten.baddbmm.default: (1, 2),
}


def round_to_tf32(tensor: torch.Tensor) -> torch.Tensor:
    """The nearest TF32 value of every element (float32 in, float32 out; inf and NaN kept)."""
    if tensor.dtype != torch.float32:
        return tensor
    bits = tensor.contiguous().view(torch.int32)
    rounded = (bits + _HALF) & _KEEP
    special = (bits & _EXPONENT) == _EXPONENT
    return torch.where(special, bits, rounded).view(torch.float32).view_as(tensor)


def tf32_convolutions() -> bool:
    return torch.backends.cudnn.conv.fp32_precision == "tf32"


def tf32_matmuls() -> bool:
    return torch.backends.cuda.matmul.fp32_precision == "tf32"


class EmulatedTF32(TorchDispatchMode):
    """Round the operands of float32 convolutions and matrix products to TF32 where PyTorch's
    switches select TF32 (the switches are read at every call, so code that turns TF32 off for a
    region, such as the hypergradient precision policy, is honoured)."""

    def __init__(self):
        super().__init__()
        self.rounded_calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        operands = None
        if func in _CONVOLUTIONS and tf32_convolutions():
            operands = _CONVOLUTIONS[func]
        elif func in _MATMULS and tf32_matmuls():
            operands = _MATMULS[func]
        if operands is not None:
            args = list(args)
            for index in operands:
                if isinstance(args[index], torch.Tensor):
                    args[index] = round_to_tf32(args[index])
            self.rounded_calls += 1
        return func(*args, **kwargs)
