"""A reference problem where every stage of SGL has a closed-form optimum.

Used to check hypergradient solvers against the exact total derivative of Eq. 4 (tests and
``benchmarks/hypergrad_fidelity.py``).

Learner k: gates a_k (its "architecture", one per input feature) and linear maps V_k, W_k,
f(x; a, M) = (x * a) @ M. Losses are mean squared errors plus a ridge term 0.5 * rho * ||M||^2
(the ridge is what makes the gates matter: without it, M could undo any gate). Pseudo-labels are
the peers' raw predictions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sgl_betty.config import HypergradConfig, SGLConfig
from sgl_betty.learner import Learner


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).pow(2).mean()


def identity(peer_output: torch.Tensor) -> torch.Tensor:
    return peer_output


class Gates(nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.gate = nn.Parameter(init.clone())

    def forward(self):
        return self.gate


class GatedLinear(nn.Module):
    def __init__(self, features: int, outputs: int, generator: torch.Generator):
        super().__init__()
        self.weight = nn.Parameter(
            torch.randn(features, outputs, generator=generator, dtype=torch.float64)
        )

    def forward(self, x, gate):
        return (x * gate) @ self.weight


@dataclass
class Problem:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_unlabeled: torch.Tensor
    gates: list[torch.Tensor]
    rho: float
    lam: float

    @classmethod
    def random(cls, num_learners, features=4, outputs=2, n=200, m=150, rho=0.5, lam=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)

        def randn(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        true_map = randn(features, outputs)
        x_train, x_val = randn(n, features), randn(n, features)
        y_train = x_train @ true_map + 0.3 * randn(n, outputs)
        y_val = x_val @ true_map + 0.3 * randn(n, outputs)
        gates = [
            0.5 + torch.rand(features, generator=g, dtype=torch.float64)
            for _ in range(num_learners)
        ]
        return cls(x_train, y_train, x_val, y_val, randn(m, features), gates, rho, lam)

    # -- closed form -------------------------------------------------------------------
    def _gram(self, x, gate):
        xa = x * gate
        return 2.0 / (x.shape[0] * self.y_train.shape[1]) * xa.T @ xa, xa

    def v_hessian(self, gate):
        gram, _ = self._gram(self.x_train, gate)
        return gram + self.rho * torch.eye(gram.shape[0], dtype=gram.dtype)

    def w_hessian(self, gate, num_learners):
        gram_u, _ = self._gram(self.x_unlabeled, gate)
        return self.v_hessian(gate) + self.lam * (num_learners - 1) * gram_u

    def v_star(self, gate):
        scale = 2.0 / (self.x_train.shape[0] * self.y_train.shape[1])
        xa = self.x_train * gate
        return torch.linalg.solve(self.v_hessian(gate), scale * xa.T @ self.y_train)

    def w_star(self, k, gates, v_stars, direct_pseudo_label_term=True):
        num = len(gates)
        n, o = self.y_train.shape
        m = self.x_unlabeled.shape[0]
        xa = self.x_train * gates[k]
        ua = self.x_unlabeled * gates[k]
        rhs = 2.0 / (n * o) * xa.T @ self.y_train
        for j in range(num):
            if j == k:
                continue
            peer_gate = gates[j] if direct_pseudo_label_term else gates[j].detach()
            pseudo = (self.x_unlabeled * peer_gate) @ v_stars[j]
            rhs = rhs + self.lam * 2.0 / (m * o) * ua.T @ pseudo
        return torch.linalg.solve(self.w_hessian(gates[k], num), rhs)

    def exact_hypergradients(self, direct_pseudo_label_term=True):
        """d/d a_k of sum_j L_val(W_j*(...), a_j), by autograd through the closed form of Eq. 4."""
        gates = [g.clone().requires_grad_(True) for g in self.gates]
        v_stars = [self.v_star(g) for g in gates]
        total = 0.0
        for k in range(len(gates)):
            w_k = self.w_star(k, gates, v_stars, direct_pseudo_label_term)
            total = total + mse((self.x_val * gates[k]) @ w_k, self.y_val)
        return torch.autograd.grad(total, gates)

    def largest_curvature(self):
        num = len(self.gates)
        eigs = [torch.linalg.eigvalsh(self.w_hessian(g, num)).max() for g in self.gates]
        eigs += [torch.linalg.eigvalsh(self.v_hessian(g)).max() for g in self.gates]
        return max(eigs).item()


def reference_learners(problem: Problem, weight_optimizer) -> list[Learner]:
    """One gated linear learner per gate vector of ``problem``, V and W stepped by
    ``weight_optimizer``; the architectures do not move (learning rate 0)."""
    features, outputs = problem.x_train.shape[1], problem.y_train.shape[1]
    generator = torch.Generator().manual_seed(1)
    return [
        Learner(
            arch=Gates(gate),
            v_net=GatedLinear(features, outputs, generator),
            w_net=GatedLinear(features, outputs, generator),
            v_optimizer=weight_optimizer,
            w_optimizer=weight_optimizer,
            arch_optimizer=lambda params: torch.optim.SGD(params, lr=0.0),
        )
        for gate in problem.gates
    ]


def reference_engine(problem: Problem, learners, hypergrad: HypergradConfig, steps, **sgl_options):
    """The SGL engine on ``problem``'s data with its losses; the architectures step (with
    learning rate 0) from step ``arch_warmup_steps + 1`` on."""
    from sgl_betty.engine import build_sgl_engine

    options = dict(grad_clip_v=0.0, grad_clip_w=0.0) | sgl_options
    config = SGLConfig(
        lam=problem.lam,
        hypergrad=hypergrad,
        labeled_loss=mse,
        pseudo_target=identity,
        pseudo_loss=mse,
        l2_in_loss=problem.rho,
        **options,
    )
    return build_sgl_engine(
        learners,
        train=[(problem.x_train, problem.y_train)],
        val=[(problem.x_val, problem.y_val)],
        unlabeled=[problem.x_unlabeled],
        config=config,
        train_iters=steps,
        device="cpu",
    )


def converged_engine(problem: Problem, hypergrad: HypergradConfig, steps: int = 300, **sgl_options):
    """An engine whose V and W ran to convergence with the gates fixed.

    The architecture steps once, at the last of ``steps`` (its learning rate is 0), so
    ``engine.last_hypergrad`` holds the hypergradient at the converged V*, W*. Further
    ``engine.step()`` calls recompute it at the same point.
    """
    step_size = 1.0 / problem.largest_curvature()

    def sgd(params):
        return torch.optim.SGD(params, lr=step_size)

    learners = reference_learners(problem, sgd)
    engine = reference_engine(
        problem, learners, hypergrad, steps, arch_warmup_steps=steps - 1, **sgl_options
    )
    engine.run()
    return engine


def exact_solver(kind: str, problem: Problem) -> HypergradConfig:
    """A solver setting that is exact on ``problem`` to machine precision."""
    if kind == "neumann":
        return HypergradConfig(
            type="neumann", neumann_iterations=300, neumann_alpha=1.0 / problem.largest_curvature()
        )
    if kind == "cg":
        return HypergradConfig(
            type="cg", cg_iterations=4 * problem.x_train.shape[1] * problem.y_train.shape[1]
        )
    raise ValueError(f"no exact setting for {kind!r}; choose neumann or cg")
