"""The engine's hypergradients against autograd through the closed-form solution of Eq. 4."""

import pytest
import torch

from sgl_betty import HypergradConfig
from sgl_betty.reference import (
    Problem,
    converged_engine,
    exact_solver,
    identity,
    mse,
    reference_engine,
    reference_learners,
)
from sgl_betty.unrolled_reference import (
    Batches,
    StepSettings,
    learner_states,
    one_step_hypergradients,
    post_step_hypergradients,
)


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.slow
@pytest.mark.parametrize("num_learners", [1, 2, 3])
@pytest.mark.parametrize("solver", ["neumann", "cg"])
def test_exact_solvers_match_closed_form(num_learners, solver):
    problem = Problem.random(num_learners, seed=num_learners)
    engine = converged_engine(problem, exact_solver(solver, problem))
    exact = problem.exact_hypergradients()
    for k in range(num_learners):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, exact[k]) < 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["neumann", "cg"])
def test_without_direct_pseudo_label_term_matches_its_closed_form(solver):
    problem = Problem.random(2, seed=7)
    engine = converged_engine(problem, exact_solver(solver, problem), pseudo_label_arch_grad=False)
    exact = problem.exact_hypergradients(direct_pseudo_label_term=False)
    full = problem.exact_hypergradients(direct_pseudo_label_term=True)
    for k in range(2):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, exact[k]) < 1e-6
        # The switch changes the answer: the direct term is not negligible here.
        assert relative_error(full[k], exact[k]) > 1e-3


def test_cross_learner_terms_are_present():
    # With pseudo-labels detached only the learner's own path remains; that differs from Eq. 4's
    # exact gradient, so matching the exact value above really requires the peer paths.
    problem = Problem.random(2, seed=3)
    engine = converged_engine(problem, exact_solver("cg", problem), detach_pseudo_labels=True)
    exact = problem.exact_hypergradients()
    for k in range(2):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, exact[k]) > 1e-3


@pytest.mark.slow
def test_first_order_is_the_direct_validation_gradient():
    problem = Problem.random(2, seed=5)
    engine = converged_engine(problem, HypergradConfig(type="first_order"))
    for k in range(2):
        gate = problem.gates[k].clone().requires_grad_(True)
        w_k = engine.problem("w", k).module.weight.detach()
        direct = torch.autograd.grad(mse((problem.x_val * gate) @ w_k, problem.y_val), gate)[0]
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, direct) < 1e-12


@pytest.mark.slow
@pytest.mark.parametrize("solver", ["darts", "unrolled"])
def test_approximate_solvers_point_the_right_way(solver):
    # darts / unrolled use an identity inverse Hessian: not exact, but on this well-conditioned
    # problem they must still be descent directions for the true objective.
    problem = Problem.random(2, seed=11)
    engine = converged_engine(problem, HypergradConfig(type=solver))
    exact = problem.exact_hypergradients()
    for k in range(2):
        (got,) = engine.last_hypergrad[k]
        cosine = torch.nn.functional.cosine_similarity(got, exact[k], dim=0)
        assert cosine > 0.5


@pytest.mark.slow
def test_betty_released_cg_is_wrong_beyond_one_iteration():
    # Documents why the project registers its own solver (DESIGN.md section 3).
    problem = Problem.random(2, seed=2)
    engine = converged_engine(problem, HypergradConfig(type="cg", cg_iterations=3))
    exact = problem.exact_hypergradients()
    ours = [engine.last_hypergrad[k][0].clone() for k in range(2)]
    for stage in engine.problems:
        if stage.role in ("v", "w"):
            stage.config.type = "cg"  # Betty 0.2.1's own solver
    engine.step()
    betty = [engine.last_hypergrad[k][0] for k in range(2)]
    assert max(relative_error(b, e) for b, e in zip(betty, exact)) > 10 * max(
        relative_error(o, e) for o, e in zip(ours, exact)
    )


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("kind", ["unrolled", "unrolled_post_step"])
def test_unrolled_types_are_their_formulas_away_from_convergence(kind, exact):
    # Three momentum-SGD steps from a random start: far from V*, W*, so the pre-step and
    # post-step placements differ. The losses are quadratic, so central differences are exact
    # and both the finite-difference and the double-backward products must match the formulas.
    problem = Problem.random(2, seed=13)
    step = 0.5 / problem.largest_curvature()
    settings = StepSettings(
        lr_v=step,
        lr_w=step,
        momentum=0.9,
        weight_decay=1e-3,
        clip_v=0.5,
        lam=problem.lam,
        l2_in_loss=problem.rho,
        labeled_loss=mse,
        pseudo_target=identity,
        pseudo_loss=mse,
    )

    def sgd(params):
        return torch.optim.SGD(params, lr=step, momentum=0.9, weight_decay=1e-3)

    learners = reference_learners(problem, sgd)
    hypergrad = HypergradConfig(type=kind, unrolled_exact=exact)
    engine = reference_engine(problem, learners, hypergrad, steps=10, grad_clip_v=0.5)
    for _ in range(3):
        engine.step()
    data = Batches(
        train=(problem.x_train, problem.y_train),
        val=(problem.x_val, problem.y_val),
        unlabeled=problem.x_unlabeled,
    )
    if kind == "unrolled":  # from the weights before the step
        expected = one_step_hypergradients(learner_states(engine, learners), data, settings)
        engine.step()
    else:  # around the weights after it
        engine.step()
        expected = post_step_hypergradients(learner_states(engine, learners), data, settings)
    assert float(engine.problem("v", 0).last_step.clip_scale) < 1.0  # V's clip engaged
    for k in range(2):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, expected[k][0]) < 1e-8
