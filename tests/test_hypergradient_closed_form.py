"""The engine's hypergradients against autograd through the closed-form solution of Eq. 4."""

import pytest
import torch

from sgl_betty import HypergradConfig
from sgl_betty.reference import Problem, converged_engine, exact_solver, mse


def relative_error(got, expected):
    return ((got - expected).norm() / expected.norm()).item()


@pytest.mark.parametrize("num_learners", [1, 2, 3])
@pytest.mark.parametrize("solver", ["neumann", "cg"])
def test_exact_solvers_match_closed_form(num_learners, solver):
    problem = Problem.random(num_learners, seed=num_learners)
    engine = converged_engine(problem, exact_solver(solver, problem))
    exact = problem.exact_hypergradients()
    for k in range(num_learners):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, exact[k]) < 1e-6


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


def test_first_order_is_the_direct_validation_gradient():
    problem = Problem.random(2, seed=5)
    engine = converged_engine(problem, HypergradConfig(type="first_order"))
    for k in range(2):
        gate = problem.gates[k].clone().requires_grad_(True)
        w_k = engine.problem("w", k).module.weight.detach()
        direct = torch.autograd.grad(mse((problem.x_val * gate) @ w_k, problem.y_val), gate)[0]
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, direct) < 1e-12


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
def test_unrolled_is_the_papers_one_step_unrolled_gradient(exact):
    # Eq. 7-11 by autograd through one step of V and W, at the engine's (converged) weights.
    problem = Problem.random(2, seed=13)
    engine = converged_engine(problem, HypergradConfig(type="unrolled", unrolled_exact=exact))
    step = 1.0 / problem.largest_curvature()
    v_weights = [engine.problem("v", k).module.weight.detach() for k in range(2)]
    w_weights = [engine.problem("w", k).module.weight.detach() for k in range(2)]
    expected = problem.unrolled_hypergradients(v_weights, w_weights, step, step)
    for k in range(2):
        (got,) = engine.last_hypergrad[k]
        assert relative_error(got, expected[k]) < 1e-6
