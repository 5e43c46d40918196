"""Hypergradient solvers of the project's own, registered with Betty by name.

Betty 0.2.1's ``cg`` updates the search direction with the old residual (fixed upstream after
the release, leopard-ai/betty issue 15), so it is wrong beyond one iteration. ``sgl_cg`` is a
textbook conjugate-gradient solve of H x = v with the same contract as Betty's solvers.
"""

from __future__ import annotations

import warnings

import torch
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.darts import darts

CONJUGATE_GRADIENT = "sgl_cg"
UNROLLED = "sgl_unrolled"


def _dot(xs, ys) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(xs, ys))


def solve_cg(hvp, vector, iterations: int, scale: float = 1.0, tol: float = 1e-12):
    """Approximately solve H x = v by conjugate gradient, with ``hvp(p) = H p``.

    ``scale`` multiplies H inside the solve (Betty's ``cg_alpha``); the returned x solves the
    unscaled system. Stops early once the residual is below ``tol`` relative to ||v||, which
    also avoids dividing by a zero curvature after exact convergence.
    """
    x = [torch.zeros_like(v) for v in vector]
    r = [v.clone() for v in vector]
    p = [v.clone() for v in vector]
    rr = _dot(r, r)
    threshold = (tol**2) * rr
    for _ in range(iterations):
        if rr <= threshold or rr == 0:
            break
        hp = [scale * h for h in hvp(p)]
        step = rr / _dot(p, hp)
        x = [xi + step * pi for xi, pi in zip(x, p)]
        r = [ri - step * hi for ri, hi in zip(r, hp)]
        rr_next = _dot(r, r)
        p = [ri + (rr_next / rr) * pi for ri, pi in zip(r, p)]
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


def unrolled_finite_difference(vector, curr, prev, sync):
    """The paper's Eq. 8-9: -xi (d^2 L_curr / d prev d curr) vector, the mixed second
    derivative by central finite differences (Betty's ``darts`` product) and xi the step size
    ``curr`` just took (kept in ``config.neumann_alpha`` by the engine)."""
    product = darts(vector, curr, prev, False)
    step = curr.config.neumann_alpha
    implicit = [step * g for g in product]
    if sync:
        prev.set_grads(prev.trainable_parameters(), implicit)
        return None
    return implicit


def register_solvers() -> None:
    jvp_fn_mapping[CONJUGATE_GRADIENT] = conjugate_gradient
    jvp_fn_mapping[UNROLLED] = unrolled_finite_difference
