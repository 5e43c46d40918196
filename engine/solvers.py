"""Hypergradient solvers: pure functions over a loss, and the project's solvers registered with
Betty by name (``betty.hypergradient.jvp_fn_mapping``).

A solver called at lower problem ``curr`` with a vector u = dF/dw (w: curr's weights) returns
u . dw*/dy for the parameters y of ``prev`` (Betty's contract ``(vector, curr, prev, sync)``).
Implicit solvers use dw*/dy = -H^{-1} d^2L/dw dy; the unrolled ones (``engine/unrolled.py``)
use one SGD step, dw'/dy = -xi d^2L/dw dy.

Project solvers and why they replace Betty 0.2.1's:

- ``sgl_cg``: Betty's ``cg`` updates the search direction with the old residual (fixed upstream
  after the release, leopard-ai/betty issue 15), so it is wrong beyond one iteration.
- ``sgl_neumann``: Betty's ``neumann`` (the same operations), over ``LossGraphs`` so that a W
  stage may hold one term of its loss at a time (``HypergradConfig.one_graph_at_a_time``).
- ``sgl_darts``: Betty's ``darts`` product (identity inverse Hessian, central differences around
  the current weights, radius ``darts_alpha / ||u||``) without its host sync (``.item()`` on the
  radius) and with the same random draws (dropout) on both sides of the difference.
"""

from __future__ import annotations

import torch
from betty.hypergradient import jvp_fn_mapping

from . import unrolled
from .loss_graphs import LossGraphs
from .products import dot, finite_difference_product

CONJUGATE_GRADIENT = "sgl_cg"
NEUMANN = "sgl_neumann"
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


def solve_neumann(hvp, vector, iterations: int, alpha: float):
    """H^{-1} v by the Neumann series alpha sum_{i <= iterations} (I - alpha H)^i v, with
    ``hvp(p) = H p``; Betty's ``approx_inverse_hvp``, operation for operation."""
    p = v = vector
    for _ in range(iterations):
        hv = hvp(v)
        v = [vi - alpha * hi for vi, hi in zip(v, hv)]
        p = [vi + pi for vi, pi in zip(v, p)]
    return [alpha * pi for pi in p]


def _implicit_solve(solve, vector, curr, prev, sync):
    """-(d^2 L_curr / d prev d curr) x with x = solve(hvp, vector) ~ H_curr^{-1} vector."""
    graphs = LossGraphs(curr.loss_terms(curr.cur_batch), curr.trainable_parameters(), curr.device)
    x = solve(graphs.hvp, [v.detach() for v in vector])
    product = graphs.mixed(x, prev.trainable_parameters())
    return unrolled.send_implicit(prev, [-p for p in product], sync)


def neumann(vector, curr, prev, sync):
    """Betty jvp function, Betty's ``neumann``, over ``LossGraphs`` (one term: Betty's numbers)."""
    config = curr.config

    def solve(hvp, v):
        return solve_neumann(hvp, v, config.neumann_iterations, config.neumann_alpha)

    return _implicit_solve(solve, vector, curr, prev, sync)


def conjugate_gradient(vector, curr, prev, sync):
    """Betty jvp function: -(d^2 L_curr / d prev d curr) H_curr^{-1} vector."""
    config = curr.config

    def solve(hvp, v):
        return solve_cg(hvp, v, config.cg_iterations, config.cg_alpha)

    return _implicit_solve(solve, vector, curr, prev, sync)


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
        "neumann": NEUMANN,
        "cg": CONJUGATE_GRADIENT,
    }[hypergrad.type]


def register_solvers() -> None:
    jvp_fn_mapping[CONJUGATE_GRADIENT] = conjugate_gradient
    jvp_fn_mapping[NEUMANN] = neumann
    jvp_fn_mapping[FINITE_DIFFERENCE] = identity_finite_difference
    jvp_fn_mapping[UNROLLED] = unrolled.unrolled_finite_difference
    jvp_fn_mapping[UNROLLED_EXACT] = unrolled.unrolled_exact
    jvp_fn_mapping[UNROLLED_POST_STEP] = unrolled.unrolled_post_step_finite_difference
    jvp_fn_mapping[UNROLLED_POST_STEP_EXACT] = unrolled.unrolled_post_step_exact
