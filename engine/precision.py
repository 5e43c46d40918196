"""The precision policy of hypergradients.

Second-order terms are differences of nearby gradients (finite differences over a perturbation
of about 1e-2 / sqrt(#weights) per weight) or products of gradients; at reduced precision they
become noise. Measured on the DARTS supernet (BENCHMARKS.md): with TF32 convolutions, on by
default for cuDNN on Ampere and Hopper GPUs, only about 5% of the weights' +-eps v perturbations
survive rounding, and under bf16 autocast 0.7%.

So every hypergradient evaluation (the validation gradient that starts it, every solver's
re-evaluation of a lower loss, every finite difference and Hessian-vector product) runs in the
parameters' own precision (float32 or float64) with TF32 off and autocast off, whatever the
global flags and whatever precision the descent steps use. float16 descent is refused
(``SGLConfig``): it needs a loss scaler, which no solver applies.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

# The per-backend float32 precision switches (PyTorch >= 2.9); each is "ieee", "tf32" or "none".
_BACKENDS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.conv", "mkldnn.matmul")


def _switches():
    found = []
    for name in _BACKENDS:
        node = torch.backends
        for part in name.split("."):
            node = getattr(node, part, None)
        if node is not None and hasattr(node, "fp32_precision"):
            found.append(node)
    return found


@contextmanager
def full_precision(device_type: str):
    """Autocast off and float32 arithmetic in IEEE precision (no TF32, no bf16 matmul modes)
    inside; every switch as it was afterwards."""
    with _ieee_float32(), torch.autocast(device_type=device_type, enabled=False):
        yield


@contextmanager
def _ieee_float32():
    switches = _switches()
    if not switches:  # PyTorch < 2.9: the legacy flags
        saved = (torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = saved[0]
            torch.set_float32_matmul_precision(saved[1])
        return
    # Only the per-backend API: reading the legacy flags after it was used can raise.
    saved = [switch.fp32_precision for switch in switches]
    for switch in switches:
        switch.fp32_precision = "ieee"
    try:
        yield
    finally:
        for switch, value in zip(switches, saved):
            switch.fp32_precision = value


def describe_policy(
    autocast_dtype: torch.dtype | None, second_order: bool, full_precision: bool = True
) -> dict:
    """The policy in force, as written to summary.json and the W&B config."""
    descent = "bf16 autocast" if autocast_dtype == torch.bfloat16 else "parameter dtype"
    if not second_order:
        hypergradient = "as the descent (first order: no second-order term)"
    elif not full_precision:
        hypergradient = "as the descent (policy disabled: full_precision=False)"
    else:
        hypergradient = "parameter dtype, TF32 off, autocast off"
    return {"descent": descent, "hypergradient": hypergradient}
