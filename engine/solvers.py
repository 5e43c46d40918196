"""Hypergradient solvers: pure functions over a loss, and the project's solvers registered with
Betty by name (``betty.hypergradient.jvp_fn_mapping``).

A solver called at lower problem ``curr`` with a vector u = dF/dw (w: curr's weights) returns
u . dw*/dy for the parameters y of ``prev`` (Betty's contract ``(vector, curr, prev, sync)``).
Implicit solvers use dw*/dy = -H^{-1} d^2L/dw dy; the unrolled ones (``engine/unrolled.py``)
use one SGD step, dw'/dy = -xi d^2L/dw dy.

Project solvers and why they replace Betty 0.2.1's:

- ``sgl_cg``: Betty's ``cg`` updates the search direction with the old residual (fixed upstream
  after the release, leopard-ai/betty issue 15), so it is wrong beyond one iteration.
- ``sgl_darts``: Betty's ``darts`` product (identity inverse Hessian, central differences around
  the current weights, radius ``darts_alpha / ||u||``) without its host sync (``.item()`` on the
  radius) and with the same random draws (dropout) on both sides of the difference.
"""

from __future__ import annotations

import warnings

import torch
from betty.hypergradient import jvp_fn_mapping

from . import unrolled
from .products import dot, finite_difference_product

CONJUGATE_GRADIENT = "sgl_cg"
FINITE_DIFFERENCE = "sgl_darts"
UNROLLED = "sgl_unrolled"
UNROLLED_EXACT = "sgl_unrolled_exact"
UNROLLED_POST_STEP = "sgl_unrolled_post_step"
UNROLLED_POST_STEP_EXACT = "sgl_unrolled_post_step_exact"


def solve_cg(hvp, vector, iterations: int, scale: float = 1.0, tol: float = 1e-12):
    """Approximately solve H x = v by conjugate gradient, with ``hvp(p) = H p``.

    ``scale`` multiplies H inside the solve (Betty's ``cg_alpha``); the returned x solves the
    unscaled system. Once the residual is below ``tol`` relative to ||v|| (or v is zero), the
    remaining iterations leave x, the residual and the direction exactly as they are, which also
    avoids dividing by a zero curvature after exact convergence. That test stays on the device:
    the iterations are masked, not cut short, so the host never waits for a residual.
    """
    x = [torch.zeros_like(v) for v in vector]
    r = [v.clone() for v in vector]
    p = [v.clone() for v in vector]
    rr = dot(r, r)
    threshold = (tol**2) * rr
    for _ in range(iterations):
        active = rr > threshold
        hp = [scale * h for h in hvp(p)]
        # Where inactive, the division may be 0/0: where() keeps its result out.
        step = torch.where(active, rr / dot(p, hp), 0.0)
        x = [xi + step * pi for xi, pi in zip(x, p)]
        r = [ri - step * hi for ri, hi in zip(r, hp)]
        rr_next = dot(r, r)
        # Active: p = r + (rr_next / rr) p; inactive: p unchanged (0 * r + 1 * p).
        beta = torch.where(active, rr_next / rr, 1.0)
        keep = active.to(rr.dtype)
        p = [keep * ri + beta * pi for ri, pi in zip(r, p)]
        rr = rr_next
    return [scale * xi for xi in x]


def conjugate_gradient(vector, curr, prev, sync):
    """Betty jvp function: -(d^2 L_curr / d prev d curr) H_curr^{-1} vector."""
    config = curr.config
    params = curr.trainable_parameters()
    in_loss = curr.training_step_exec(curr.cur_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_grad = torch.autograd.grad(in_loss, params, create_graph=True)

    def hvp(p):
        return torch.autograd.grad(in_grad, params, grad_outputs=p, retain_graph=True)

    x = solve_cg(hvp, [v.detach() for v in vector], config.cg_iterations, config.cg_alpha)
    prev_params = prev.trainable_parameters()
    if sync:
        torch.autograd.backward(in_grad, inputs=prev_params, grad_tensors=[-xi for xi in x])
        return None
    implicit = torch.autograd.grad(in_grad, prev_params, grad_outputs=x, allow_unused=True)
    return [-g if g is not None else torch.zeros_like(p) for g, p in zip(implicit, prev_params)]


def identity_finite_difference(vector, curr, prev, sync):
    """Betty jvp function, Betty's ``darts``: -(d^2 L_curr / d prev d curr) vector around the
    current (post-step) weights, by central differences."""
    product = finite_difference_product(
        lambda: curr.training_step_exec(curr.cur_batch),
        curr.trainable_parameters(),
        prev.trainable_parameters(),
        [v.detach() for v in vector],
        curr.config.darts_alpha,
    )
    return unrolled.send_implicit(prev, [-p for p in product], sync)


def solver_name(hypergrad) -> str:
    """The Betty solver (``jvp_fn_mapping`` key) a V or W problem uses for ``hypergrad.type``."""
    exact = hypergrad.unrolled_exact
    return {
        "first_order": FINITE_DIFFERENCE,  # never called: first order has no paths
        "darts": FINITE_DIFFERENCE,
        "unrolled": UNROLLED_EXACT if exact else UNROLLED,
        "unrolled_post_step": UNROLLED_POST_STEP_EXACT if exact else UNROLLED_POST_STEP,
        "neumann": "neumann",
        "cg": CONJUGATE_GRADIENT,
    }[hypergrad.type]


def register_solvers() -> None:
    jvp_fn_mapping[CONJUGATE_GRADIENT] = conjugate_gradient
    jvp_fn_mapping[FINITE_DIFFERENCE] = identity_finite_difference
    jvp_fn_mapping[UNROLLED] = unrolled.unrolled_finite_difference
    jvp_fn_mapping[UNROLLED_EXACT] = unrolled.unrolled_exact
    jvp_fn_mapping[UNROLLED_POST_STEP] = unrolled.unrolled_post_step_finite_difference
    jvp_fn_mapping[UNROLLED_POST_STEP_EXACT] = unrolled.unrolled_post_step_exact
