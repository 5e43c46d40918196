"""Mixed second derivatives of a loss, as pure functions: the products every hypergradient solver
ends with, (d^2 L / d y d w) v for the weights w of a lower problem and the parameters y of the
problems above it.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from sgl_betty.runtime import RandomState
from sgl_betty.search_space.second_order_conv import second_order_pass


def dot(xs, ys) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def _grads(loss, inputs, **kwargs):
    found = torch.autograd.grad(loss, inputs, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(found, inputs)]


@contextmanager
def weights_set_to(params, values):
    """Temporarily give ``params`` other values (no copy; the originals are put back exactly)."""
    originals = [p.data for p in params]
    try:
        for p, value in zip(params, values):
            p.data = value
        yield
    finally:
        for p, original in zip(params, originals):
            p.data = original


def finite_difference_product(loss_fn, params, targets, vector, radius: float):
    """(d^2 L / d targets d params) v by central differences, as DARTS takes it:
    (grad_targets L(w + eps v) - grad_targets L(w - eps v)) / (2 eps), eps = radius / ||v||.

    ``loss_fn()`` evaluates L at the current values of ``params``; they are restored exactly.
    eps stays on the device (no host sync).
    """
    norm = torch.sqrt(dot(vector, vector))
    eps = radius / torch.clamp(norm, min=torch.finfo(norm.dtype).tiny)
    base = [p.data for p in params]
    # The same random draws (dropout masks) on both sides: the difference sees the perturbation.
    replay = RandomState(base[0].device)
    with torch.no_grad():
        plus = [w + eps * v for w, v in zip(base, vector)]
    with weights_set_to(params, plus):
        grad_plus = _grads(loss_fn(), targets)
    del plus
    replay.replay()
    with torch.no_grad():
        minus = [w - eps * v for w, v in zip(base, vector)]
    with weights_set_to(params, minus):
        grad_minus = _grads(loss_fn(), targets)
    return [(gp - gm) / (2 * eps) for gp, gm in zip(grad_plus, grad_minus)]


def exact_mixed_product(loss_fn, params, targets, vector):
    """(d^2 L / d targets d params) v by double backward: d/d targets (grad_params L . v)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # parameters unused by the loss
        with second_order_pass():
            loss = loss_fn()
        first = _grads(loss, params, create_graph=True)
    used = [(g, v) for g, v in zip(first, vector) if g.requires_grad]
    if not used:
        return [torch.zeros_like(t) for t in targets]
    return _grads([g for g, _ in used], targets, grad_outputs=[v for _, v in used])
