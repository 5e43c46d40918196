"""The architecture objective (the paper's Eq. 3) and every architecture's gradient of it.

All architecture problems minimise the same objective, F = sum_j L_val(W_j, A_j, D_val), so
arch_k's hypergradient is dF/dA_k. Two strategies compute it:

``OneSweep`` (the default). Betty's solvers are linear in the vector they carry, so reverse-mode
accumulation over the paths Betty found gives every dF/dA_k at once:

1. one validation forward and backward per learner: dF/dW_j and the direct dF/dA_j;
2. lower problems in order (W stages, then V stages): each takes the sum of the vectors
   arriving at it and makes one solver call, Betty's ``jvp_fn_mapping[type]``, whose "previous
   problem" is the union of every problem the paths continue to from it; the result is split
   between architectures (gradient) and lower problems (vectors arriving there).

That is K validation passes and 2K solver calls per step instead of K^2 passes and K (3K - 2)
calls. For ``unrolled`` the validation gradient is taken at the one-step weights W' of Eq. 6
(``engine/unrolled.py``), which differ from W's real post-step weights only where clipping cut
W's step.

``BettyPaths`` (``HypergradConfig(path_by_path=True)``): Betty's own backward, each architecture
following each of its paths separately from the differentiable F. Slow; kept as the oracle the
tests hold the sweep to.

Both evaluate every second-order term at full precision (``engine/precision.py``).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from betty.hypergradient import jvp_fn_mapping

from sgl_betty.problems.base import accuracy

from .precision import full_precision
from .products import weights_set_to


class ValidationObjective:
    """Eq. 3: F = sum_j L_val(f(x_val; W_j, A_j), y_val), the objective of every architecture."""

    def __init__(self, w_stages, loss):
        self.w_stages = {stage.learner: stage for stage in w_stages}
        self.loss = loss

    def learner_loss(self, learner: int, batch, compiled: bool = False):
        """Learner ``learner``'s term of F, and its validation metrics; ``compiled``: through
        W's compiled network where it has one (a pass differentiated once, at W's weights)."""
        x, y = batch
        stage = self.w_stages[learner]
        network = stage.compiled_module if compiled else None
        network = network if network is not None else stage.module
        logits = network(x, stage.architecture())
        loss = self.loss(logits, y)
        return loss, {"val_loss": loss.detach(), "val_acc": accuracy(logits.detach(), y)}

    def total(self, batch):
        terms = [self.learner_loss(k, batch) for k in sorted(self.w_stages)]
        return sum(loss for loss, _ in terms), [metrics for _, metrics in terms]


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


def _precision(problem, enabled: bool):
    return full_precision(torch.device(problem.device).type) if enabled else nullcontext()


class OneSweep:
    """Computes, once per engine step, the gradient of F for every architecture problem."""

    def __init__(self, objective, batches, full_precision: bool, at_one_step_weights: bool):
        self.objective = objective
        self.batches = batches
        # The precision policy: second-order types evaluate in full precision.
        self.full_precision = full_precision
        # unrolled: the validation gradient at W' = w - xi d (Eq. 6), not at W's weights.
        self.at_one_step_weights = at_one_step_weights
        self.arch_stages: list = []
        self._plan = None
        self._step = None
        self.arch_grads: dict = {}
        self.metrics: dict = {}

    # -- the architecture problem's side -------------------------------------------------
    def loss(self, arch, batch):
        self._ensure_computed(arch)
        metrics = self.metrics[arch.learner]
        arch.record(**metrics)
        return metrics["val_loss"]

    def backward(self, arch, loss, params, paths, create_graph, retain_graph):
        arch.set_grads(params, self.arch_grads[arch.learner])

    # -- the sweep -------------------------------------------------------------------------
    def _ensure_computed(self, arch) -> None:
        if self._step != self.batches.step:
            with _precision(arch, self.full_precision):
                self._compute()
            self._step = self.batches.step

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

    def _validation(self, successors):
        """dF/dW_j (where paths continue through W_j) and the direct dF/dA_j, per learner."""
        batch = self.batches.get("val")
        vectors, grads = {}, {}
        for arch in self.arch_stages:
            w_stage = self.objective.w_stages[arch.learner]
            a_params = arch.trainable_parameters()
            w_params = w_stage.trainable_parameters() if w_stage in successors else []
            point = nullcontext()
            if w_params and self.at_one_step_weights:
                point = weights_set_to(w_params, w_stage.last_step.one_step_weights())
            with point:
                # Only dF/dA (first order): a single backward, at W's own weights.
                loss, self.metrics[arch.learner] = self.objective.learner_loss(
                    arch.learner, batch, compiled=not w_params
                )
                found = torch.autograd.grad(loss, w_params + a_params, allow_unused=True)
            found = [
                torch.zeros_like(p) if g is None else g for g, p in zip(found, w_params + a_params)
            ]
            if w_params:
                vectors[w_stage] = found[: len(w_params)]
            grads[arch] = found[len(w_params) :]
        return vectors, grads

    def _compute(self) -> None:
        if self._plan is None:
            self._plan = self._sweep_plan()
        successors, order = self._plan
        vectors, grads = self._validation(successors)
        labels = PseudoLabelInputs()
        for lower in order:
            if lower.role == "v":  # the gradients its pseudo-labels received, through their graph
                labels.backpropagate(lower.learner, vectors, grads)
            if lower not in vectors:
                continue
            direct, via_labels = _split_successors(lower, successors[lower])
            inputs = labels.inputs_of(lower, via_labels) if via_labels else None
            union = ProblemUnion(direct + ([inputs] if inputs else []))
            solver = jvp_fn_mapping[lower.config.type]
            with lower.given_pseudo_labels(inputs.leaves) if inputs else nullcontext():
                implicit = solver(vectors[lower], lower, union, False)
            for target, part in union.split(implicit):
                if isinstance(target, StageLabelInputs):
                    labels.receive(target, part)
                else:
                    _add(grads if target.role == "arch" else vectors, target, part)
        labels.backpropagate_all(vectors, grads)
        self.arch_grads = {arch.learner: grads[arch] for arch in self.arch_stages}


def _split_successors(lower, successors):
    """Of the problems a W stage's paths continue to, those its loss reaches only through its
    peers' pseudo-labels (their V stages and architectures), and the others."""
    if lower.role != "w" or not lower.peers:
        return list(successors), []
    peers = {peer.learner for peer in lower.peers}
    via_labels = [s for s in successors if s.learner in peers and s.role in ("v", "arch")]
    return [s for s in successors if s not in via_labels], via_labels


class StageLabelInputs:
    """A W stage's peers' pseudo-labels as the leaves its solver differentiates towards (in the
    place of the peers' V stages and architectures, which the labels' graphs lead to)."""

    def __init__(self, leaves: dict[int, torch.Tensor]):
        self.learners = sorted(leaves)
        self.leaves = leaves

    def trainable_parameters(self):
        return [self.leaves[k] for k in self.learners]


class PseudoLabelInputs:
    """The W losses' pseudo-labels as inputs during one sweep.

    A W stage's solver re-evaluates its loss with the peers' pseudo-labels as constant leaves
    (their values without a graph, computed once per step) and differentiates towards them
    instead of towards the peers' V stages and architectures. The gradients the labels receive
    are linear in what each solver sends, so they add up over the W stages; one forward and one
    backward through each learner's labels' graph then carry the sum to V_k and A_k, exactly the
    chain rule the solvers would otherwise apply through K - 1 graphs each, per perturbation
    and alive during their re-evaluations. One label graph is alive at a time, never during a
    solver's own work.
    """

    def __init__(self):
        self.leaves: dict[int, torch.Tensor] = {}
        # learner -> (a W stage it labels for, its Peer there, the problems its labels lead to)
        self.sources: dict[int, tuple] = {}
        self.received: dict[int, torch.Tensor] = {}

    def inputs_of(self, stage, via_labels) -> StageLabelInputs:
        for peer in stage.peers:
            if peer.learner not in self.leaves:
                values = stage.constant_pseudo_labels(peer).values
                self.leaves[peer.learner] = values.detach().requires_grad_(True)
                targets = [s for s in via_labels if s.learner == peer.learner]
                self.sources[peer.learner] = (stage, peer, targets)
        return StageLabelInputs({peer.learner: self.leaves[peer.learner] for peer in stage.peers})

    def receive(self, inputs: StageLabelInputs, grads) -> None:
        for k, grad in zip(inputs.learners, grads):
            grad = grad.detach()
            self.received[k] = grad if k not in self.received else self.received[k] + grad

    def backpropagate(self, learner: int, vectors: dict, grads: dict) -> None:
        """Learner ``learner``'s labels' graph, rebuilt, and the gradient they received carried
        through it to the problems it leads to (V's vector, A's gradient)."""
        if learner not in self.received:
            return
        stage, peer, targets = self.sources.pop(learner)
        received = self.received.pop(learner)
        params = [p for target in targets for p in target.trainable_parameters()]
        found = torch.autograd.grad(
            stage.pseudo_label_graph(peer), params, grad_outputs=received, allow_unused=True
        )
        found = [torch.zeros_like(p) if g is None else g for g, p in zip(found, params)]
        for target, part in ProblemUnion(targets).split(found):
            _add(grads if target.role == "arch" else vectors, target, part)

    def backpropagate_all(self, vectors: dict, grads: dict) -> None:
        for learner in list(self.received):
            self.backpropagate(learner, vectors, grads)


class BettyPaths:
    """Betty's own backward from the differentiable F: each path of each architecture in turn."""

    def __init__(self, objective, full_precision: bool):
        self.objective = objective
        self.full_precision = full_precision

    def loss(self, arch, batch):
        with _precision(arch, self.full_precision):
            total, metrics = self.objective.total(batch)
        own = sorted(self.objective.w_stages).index(arch.learner)
        arch.record(**metrics[own])
        return total

    def backward(self, arch, loss, params, paths, create_graph, retain_graph):
        with _precision(arch, self.full_precision):
            arch.betty_backward(loss, params, paths, create_graph, retain_graph)
