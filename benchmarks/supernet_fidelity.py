"""Hypergradient fidelity on the DARTS supernet (``hypergrad_fidelity.py problem=supernet``).

From one state (float64 learners after ``warmup_steps`` SGL steps: weights, momentum buffers and
architectures away from their initialisation), each hypergradient type takes one engine step at
each precision; its architecture gradient is compared with two float64 references computed from
the same state:

- ``one_step``: autograd through one SGD step of every V and W (the paper's Eq. 5-11,
  ``sgl_betty.unrolled_reference``), what the unrolled family approximates;
- ``implicit``: the implicit-function hypergradient with every linear solve H x = v done by
  MINRES in float64 to a relative residual of ``reference_tol`` (scipy), what Neumann and CG
  approximate. Away from convergence the Hessians are indefinite and ill-conditioned, so this
  reference is far from the one-step one; both are reported for every type.

For Neumann and CG the relative residual ||H x - v|| / ||v|| of learner 0's W solve is reported
(x recomputed with the solver's own function at the point and vector it saw).

Precisions: ``float64``; ``fp32``; ``tf32`` (fp32 with the operands of every convolution and
matrix product rounded to TF32, emulated on the CPU by ``sgl_betty.tf32_emulation``); ``bf16``
(descent under bf16 autocast, TF32 emulated for the float32 operations). Each runs with the
precision policy (second-order evaluations in float32, TF32 and autocast off) and, for tf32 and
bf16, without it (``HypergradConfig(full_precision=False)``) to show what it buys.

The radius sweep takes the mixed product (d^2 L_train / dA dW) u of learner 0 (u its validation
gradient) by central differences of radius R / ||u|| at each precision, without the policy,
against the exact product in float64, and reports which share of the weights the perturbation
R u / ||u|| changes after rounding to each precision.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from betty.hypergradient import jvp_fn_mapping
from betty.hypergradient.neumann import approx_inverse_hvp

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.engine.precision import full_precision
from sgl_betty.engine.products import exact_mixed_product, finite_difference_product
from sgl_betty.engine.solvers import solve_cg
from sgl_betty.errors import NonFiniteError
from sgl_betty.search_space import Architecture, SearchNetwork
from sgl_betty.tf32_emulation import EmulatedTF32, round_to_tf32
from sgl_betty.unrolled_reference import (
    Batches,
    StepSettings,
    learner_states,
    one_step_hypergradients,
)

PRECISIONS = ("float64", "fp32", "tf32", "bf16")
# Paper settings (Section 3.2) for the V and W steps.
LR, MOMENTUM, WEIGHT_DECAY, CLIP, LAM = 0.025, 0.9, 3e-4, 5.0, 0.1
REFERENCE_SOLVER = "fidelity_minres"


@dataclass
class SupernetSetup:
    learners: int
    init_channels: int
    layers: int
    steps: int
    image_size: int
    batch_size: int
    num_classes: int
    warmup_steps: int
    seed: int


def solver_settings(neumann_alpha: float):
    """(label, HypergradConfig) for every type the table reports."""
    yield "first_order", HypergradConfig(type="first_order")
    yield "darts", HypergradConfig(type="darts")
    yield "unrolled", HypergradConfig(type="unrolled")
    yield "unrolled exact", HypergradConfig(type="unrolled", unrolled_exact=True)
    yield "unrolled_post_step", HypergradConfig(type="unrolled_post_step")
    yield (
        "unrolled_post_step exact",
        HypergradConfig(type="unrolled_post_step", unrolled_exact=True),
    )
    for iterations in (1, 5, 20):
        yield (
            f"neumann (it={iterations})",
            HypergradConfig(
                type="neumann", neumann_iterations=iterations, neumann_alpha=neumann_alpha
            ),
        )
    for iterations in (1, 4, 16):
        yield f"cg (it={iterations})", HypergradConfig(type="cg", cg_iterations=iterations)


class Supernet:
    """The master state and the batches every measurement starts from."""

    def __init__(self, setup: SupernetSetup):
        self.setup = setup
        g = torch.Generator().manual_seed(setup.seed)
        shape = (setup.batch_size, 3, setup.image_size, setup.image_size)

        def images():
            return torch.randn(*shape, generator=g, dtype=torch.float64)

        def labels():
            return torch.randint(0, setup.num_classes, (setup.batch_size,), generator=g)

        self.batches = Batches((images(), labels()), (images(), labels()), images())
        self.learners = self.new_learners(torch.float64)
        engine = self.engine(self.learners, HypergradConfig(type="first_order"), "float64")
        for _ in range(setup.warmup_steps):
            engine.step()
        self.master_engine = engine
        self.state = copy.deepcopy(engine.state_dict())

    def new_learners(self, dtype):
        setup = self.setup
        torch.manual_seed(setup.seed)

        def net():
            return SearchNetwork(
                setup.init_channels,
                setup.num_classes,
                setup.layers,
                steps=setup.steps,
                multiplier=setup.steps,
            ).to(dtype)

        def sgd(params):
            return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

        many = setup.learners > 1
        return [
            Learner(
                Architecture(steps=setup.steps, multiplier=setup.steps).to(dtype),
                net() if many else None,
                net(),
                v_optimizer=sgd,
                w_optimizer=sgd,
                arch_optimizer=lambda params: torch.optim.Adam(
                    params, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3
                ),
            )
            for _ in range(setup.learners)
        ]

    def engine(self, learners, hypergrad, precision):
        dtype = torch.float64 if precision == "float64" else torch.float32
        b = self.batches
        config = SGLConfig(
            lam=LAM,
            hypergrad=hypergrad,
            grad_clip_v=CLIP,
            grad_clip_w=CLIP,
            autocast_dtype=torch.bfloat16 if precision == "bf16" else None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # full_precision=False warns by design
            return build_sgl_engine(
                learners,
                [(b.train[0].to(dtype), b.train[1])],
                [(b.val[0].to(dtype), b.val[1])],
                [b.unlabeled.to(dtype)] if self.setup.learners > 1 else None,
                config,
                train_iters=10**6,
                device="cpu",
            )

    def measured_step(self, hypergrad, precision, prepare=None):
        """One step from the master state; every architecture's gradient as one float64 vector."""
        dtype = torch.float64 if precision == "float64" else torch.float32
        learners = self.new_learners(dtype)
        engine = self.engine(learners, hypergrad, precision)
        engine.load_state_dict(copy.deepcopy(self.state))
        if prepare is not None:
            prepare(engine)
        with emulated_tf32(precision in ("tf32", "bf16")):
            engine.step()
        engine.check_finite()
        grads = [
            g.double().flatten()
            for k in range(self.setup.learners)
            for g in engine.last_hypergrad[k]
        ]
        return torch.cat(grads), engine

    def one_step_reference(self):
        states = copy.deepcopy(learner_states(self.master_engine, self.learners))
        settings = StepSettings(
            lr_v=LR, lr_w=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, clip_v=CLIP, lam=LAM
        )
        grads = one_step_hypergradients(states, self.batches, settings)
        return torch.cat([g.flatten() for per_learner in grads for g in per_learner])

    def implicit_reference(self, tol: float, iterations: int):
        residuals = []
        jvp_fn_mapping[REFERENCE_SOLVER] = minres_solver(tol, iterations, residuals)

        def use_minres(engine):
            for problem in engine.problems:
                if problem.role in ("v", "w"):
                    problem.config.type = REFERENCE_SOLVER

        grads, _ = self.measured_step(HypergradConfig(type="cg"), "float64", use_minres)
        return grads, max(residuals)

    def curvature(self, iterations: int = 30) -> dict:
        """The extreme eigenvalues of learner 0's W-loss Hessian after the measured step's W
        step (power iteration, float64): Neumann needs 0 < alpha * eigenvalue < 2 for all of
        them, CG a positive definite Hessian."""
        _, engine = self.measured_step(HypergradConfig(type="first_order"), "float64")
        _, hvp = _hvp_of(engine.problem("w", 0))
        params = engine.problem("w", 0).trainable_parameters()
        largest = _power_iteration(hvp, params, iterations)  # the largest in magnitude
        # The other end of the spectrum: power iteration on H - largest * I.
        shifted = _power_iteration(
            lambda x: [h - largest * xi for h, xi in zip(hvp(x), x)], params, iterations
        )
        ends = (largest, shifted + largest)
        return {"smallest": min(ends), "largest": max(ends)}


def _power_iteration(hvp, params, iterations: int) -> float:
    g = torch.Generator().manual_seed(0)
    x = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    value = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum(t.pow(2).sum() for t in x))
        x = [t / norm for t in x]
        hx = hvp(x)
        value = sum((a * b).sum() for a, b in zip(x, hx)).item()
        x = [t.detach() for t in hx]
    return value


class emulated_tf32:
    """TF32 switches on and TF32 rounding emulated inside (or nothing, when not enabled)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __enter__(self):
        if not self.enabled:
            return self
        self.switches = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
        self.saved = [switch.fp32_precision for switch in self.switches]
        for switch in self.switches:
            switch.fp32_precision = "tf32"
        self.mode = EmulatedTF32().__enter__()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.mode.__exit__(*exc)
            for switch, value in zip(self.switches, self.saved):
                switch.fp32_precision = value


def _hvp_of(problem):
    params = problem.trainable_parameters()
    loss = problem.training_step_exec(problem.cur_batch)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(vector):
        return torch.autograd.grad(grads, params, grad_outputs=vector, retain_graph=True)

    return grads, hvp


def _flatten(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat, like):
    out, start = [], 0
    for t in like:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def minres_solver(tol: float, iterations: int, residuals: list):
    """A Betty jvp function that solves H x = v by MINRES (scipy) to a tight tolerance."""
    from scipy.sparse.linalg import LinearOperator, minres

    def solve(vector, curr, prev, sync):
        grads, hvp = _hvp_of(curr)
        like = [v.detach() for v in vector]
        size = sum(v.numel() for v in like)

        def matvec(x):
            product = hvp(_unflatten(torch.from_numpy(np.ascontiguousarray(x)), like))
            return _flatten(product).numpy()

        operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
        b = _flatten(like).numpy()
        x, _ = minres(operator, b, rtol=tol, maxiter=iterations)
        residuals.append(float(np.linalg.norm(matvec(x) - b) / np.linalg.norm(b)))
        x = _unflatten(torch.from_numpy(x), like)
        prev_params = prev.trainable_parameters()
        implicit = torch.autograd.grad(grads, prev_params, grad_outputs=x, allow_unused=True)
        return [-g if g is not None else torch.zeros_like(p) for g, p in zip(implicit, prev_params)]

    return solve


def solve_residual(engine, hypergrad: HypergradConfig, vector) -> float:
    """||H x - v|| / ||v|| for learner 0's W stage, x the solver's own solution for ``vector``."""
    problem = engine.problem("w", 0)
    grads, hvp = _hvp_of(problem)
    if hypergrad.type == "cg":
        x = solve_cg(hvp, vector, hypergrad.cg_iterations, hypergrad.cg_alpha)
    else:
        params = problem.trainable_parameters()
        x = approx_inverse_hvp(
            vector, grads, params, hypergrad.neumann_iterations, hypergrad.neumann_alpha
        )
    return (_flatten(hvp(x)) - _flatten(vector)).norm().item() / _flatten(vector).norm().item()


def solver_precision(precision: str, policy: bool):
    """The context a solver of this row ran in: the policy's, or the descent's."""
    if policy:
        return full_precision("cpu")
    stack = contextlib.ExitStack()
    stack.enter_context(emulated_tf32(precision in ("tf32", "bf16")))
    stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"))
    return stack


def capture_w0_vector(engine):
    """Wrap learner 0's W solver so that the vector it receives is kept."""
    problem = engine.problem("w", 0)
    solver = jvp_fn_mapping[problem.config.type]
    captured = {}
    name = f"fidelity_capture_{problem.config.type}"

    def capture(vector, curr, prev, sync):
        if curr is problem:
            captured["vector"] = [v.detach().clone() for v in vector]
        return solver(vector, curr, prev, sync)

    jvp_fn_mapping[name] = capture
    problem.config.type = name
    return captured


def compare(got, want):
    cosine = torch.nn.functional.cosine_similarity(got, want, dim=0).item()
    return cosine, ((got - want).norm() / want.norm()).item()


def fidelity_rows(net: Supernet, one_step, implicit, neumann_alpha: float, types=None):
    for precision in PRECISIONS:
        policies = (True, False) if precision in ("tf32", "bf16") else (True,)
        for policy in policies:
            for label, hypergrad in solver_settings(neumann_alpha):
                if types is not None and label not in types:
                    continue
                if not policy and hypergrad.type == "first_order":
                    continue  # nothing second-order to protect
                hypergrad = dataclasses.replace(hypergrad, full_precision=policy)
                captured = {}

                def prepare(engine, hypergrad=hypergrad, captured=captured):
                    if hypergrad.type in ("neumann", "cg"):
                        captured.update(capture=capture_w0_vector(engine))

                row = {
                    "K": net.setup.learners,
                    "precision": precision,
                    "policy": policy,
                    "type": label,
                }
                try:
                    got, engine = net.measured_step(hypergrad, precision, prepare)
                except NonFiniteError:
                    # Overflow to inf/NaN is a measurement too: the run would stop here.
                    nan, inf = float("nan"), float("inf")
                    yield row | {
                        "diverged": True,
                        "cosine_one_step": nan,
                        "error_one_step": inf,
                        "cosine_implicit": nan,
                        "error_implicit": inf,
                        "residual": inf if captured else None,
                    }
                    continue
                residual = None
                if captured:
                    with solver_precision(precision, policy):
                        vector = captured["capture"]["vector"]
                        residual = solve_residual(engine, hypergrad, vector)
                cos_one, err_one = compare(got, one_step)
                cos_imp, err_imp = compare(got, implicit)
                yield row | {
                    "diverged": False,
                    "cosine_one_step": cos_one,
                    "error_one_step": err_one,
                    "cosine_implicit": cos_imp,
                    "error_implicit": err_imp,
                    "residual": residual,
                }


def surviving_fraction(weights, direction, eps, precision: str) -> float:
    """Share of the weights for which w + eps v rounds to another value than w."""
    rounding = {
        "float64": lambda t: t,
        "fp32": lambda t: t.float(),
        "tf32": lambda t: round_to_tf32(t.float()),
        "bf16": lambda t: t.bfloat16(),
    }[precision]
    changed = total = 0
    for w, v in zip(weights, direction):
        changed += (rounding(w + eps * v) != rounding(w)).sum().item()
        total += w.numel()
    return changed / total


def _mixed_product_problem(net: Supernet, dtype):
    """Learner 0's training loss on its W weights, the architecture, and u = dL_val/dW."""
    learner = copy.deepcopy(net.learners[0])
    learner.w_net.to(dtype)
    learner.arch.to(dtype)
    (x, y), (xv, yv) = net.batches.train, net.batches.val
    params = list(learner.w_net.parameters())
    targets = list(learner.arch.parameters())

    def loss():
        logits = learner.w_net(x.to(dtype), learner.arch())
        return torch.nn.functional.cross_entropy(logits.float(), y)

    val = torch.nn.functional.cross_entropy(learner.w_net(xv.to(dtype), learner.arch()), yv)
    vector = torch.autograd.grad(val, params)
    return loss, params, targets, vector


def radius_rows(net: Supernet, radii):
    """The finite-difference mixed product (d^2 L_train / dA dW) u by central differences of
    radius R / ||u||, against the exact product in float64, at each precision (the descent's
    precision: this is what a solver sees without the precision policy)."""
    loss, params, targets, vector = _mixed_product_problem(net, torch.float64)
    exact = _flatten(exact_mixed_product(loss, params, targets, vector))
    norm = torch.sqrt(sum(v.pow(2).sum() for v in vector))
    unit = [v / norm for v in vector]
    weights = [p.detach() for p in params]
    problems = {"float64": (loss, params, targets, vector)}
    problems["fp32"] = _mixed_product_problem(net, torch.float32)
    problems["tf32"] = problems["bf16"] = problems["fp32"]
    for radius in radii:
        for precision in PRECISIONS:
            p_loss, p_params, p_targets, p_vector = problems[precision]
            with solver_precision(precision, policy=False):
                got = finite_difference_product(p_loss, p_params, p_targets, p_vector, radius)
            cosine, error = compare(_flatten(got).double(), exact)
            yield {
                "K": net.setup.learners,
                "radius": radius,
                "precision": precision,
                "cosine_to_exact": cosine,
                "error_to_exact": error,
                # The perturbation is R u / ||u||: the share of weights it changes after rounding.
                "surviving": surviving_fraction(weights, unit, radius, precision),
            }
