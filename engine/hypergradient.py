"""Every architecture's hypergradient of one step, in one reverse sweep over the graph.

All architecture problems minimise the same objective, F = sum_j L(W_j, A_j, D_val) (the
paper's Eq. 3), so arch_k's hypergradient is dF/dA_k. Betty computes it path by path for each
arch_k: K (2K - 1) solver calls through W stages and K (K - 1) through V stages per step, each
starting from the same validation gradients, and K^2 validation forward passes. Betty's
solvers are linear in the vector they carry, so the same numbers come from reverse-mode
accumulation over the paths Betty found:

1. one validation forward and backward per learner: dF/dW_j and the direct dF/dA_j;
2. lower problems in order (W stages, then V stages): each takes the sum of the vectors
   arriving at it and makes one solver call, Betty's own ``jvp_fn_mapping[type]``, whose
   "previous problem" is the union of every problem the paths continue to from it; the result
   is split between architectures (gradient) and lower problems (vectors arriving there).

That is K validation passes and one solver call per lower problem: 2K solver calls per step
instead of K (3K - 2). Exact solvers give the per-path numbers to rounding; the finite
difference solvers differ only in where the difference is taken.
"""

from __future__ import annotations

import torch
from betty.hypergradient import jvp_fn_mapping

from sgl_betty.problems.base import accuracy


class ProblemUnion:
    """Several problems' parameters, standing in for the one ``prev`` problem of a solver."""

    def __init__(self, problems):
        self.problems = list(problems)
        self.sizes = [len(p.trainable_parameters()) for p in self.problems]

    def trainable_parameters(self):
        return [param for problem in self.problems for param in problem.trainable_parameters()]

    def split(self, tensors):
        start = 0
        for problem, size in zip(self.problems, self.sizes):
            yield problem, list(tensors[start : start + size])
            start += size


def _add(into: dict, key, tensors) -> None:
    tensors = [t.detach() for t in tensors]
    if key in into:
        into[key] = [a + b for a, b in zip(into[key], tensors)]
    else:
        into[key] = tensors


class StepHypergradient:
    """Computes, once per engine step, the gradient of F for every architecture problem."""

    def __init__(self, arch_stages, w_stages, batches, labeled_loss, autocast=None):
        self.arch_stages = list(arch_stages)
        self.w_stages = {w.learner: w for w in w_stages}
        self.batches = batches
        self.labeled_loss = labeled_loss
        self.autocast = autocast
        self._successors, self._order = self._sweep_plan()
        self._step = None
        self.arch_grads: dict = {}
        self.metrics: dict = {}

    def _sweep_plan(self):
        successors: dict = {}
        for arch in self.arch_stages:
            for path in arch.paths:  # [arch_k, lower, ..., arch_k]
                for here, there in zip(path[1:-1], path[2:]):
                    successors.setdefault(here, [])
                    if there not in successors[here]:
                        successors[here].append(there)
        # A lower problem is solved after every problem that sends it a vector.
        order, remaining = [], list(successors)
        while remaining:
            ready = [
                n for n in remaining if not any(n in successors[m] for m in remaining if m is not n)
            ]
            if not ready:
                raise RuntimeError("the hypergradient paths form a cycle")
            order += ready
            remaining = [n for n in remaining if n not in ready]
        return successors, order

    def result(self):
        if self._step != self.batches.step:
            self._compute()
            self._step = self.batches.step
        return self

    def _compute(self) -> None:
        x, y = self.batches.get("val")
        vectors: dict = {}
        grads: dict = {}
        self.metrics = {}
        for arch in self.arch_stages:
            w_stage = self.w_stages[arch.learner]
            a_params = arch.trainable_parameters()
            # Without paths through W_j (first-order) its gradient would be computed for nothing.
            w_params = w_stage.trainable_parameters() if w_stage in self._successors else []
            with self._autocast(arch):
                logits = w_stage.module(x, arch.module())
                loss = self.labeled_loss(logits, y)
            found = torch.autograd.grad(loss, w_params + a_params, allow_unused=True)
            found = [
                torch.zeros_like(p) if g is None else g for g, p in zip(found, w_params + a_params)
            ]
            if w_params:
                vectors[w_stage] = found[: len(w_params)]
            grads[arch] = found[len(w_params) :]
            acc = accuracy(logits.detach(), y)
            self.metrics[arch.learner] = {"val_loss": loss.detach(), "val_acc": acc}
        for lower in self._order:
            if lower not in vectors:
                continue
            union = ProblemUnion(self._successors[lower])
            solver = jvp_fn_mapping[lower.config.type]
            implicit = solver(vectors[lower], lower, union, False)
            for target, part in union.split(implicit):
                _add(grads if target.role == "arch" else vectors, target, part)
        self.arch_grads = {arch.learner: grads[arch] for arch in self.arch_stages}

    def _autocast(self, problem):
        if self.autocast is None:
            return torch.autocast(device_type="cpu", enabled=False)
        return torch.autocast(device_type=torch.device(problem.device).type, dtype=self.autocast)
