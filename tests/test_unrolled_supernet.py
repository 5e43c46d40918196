"""The unrolled hypergradient on the DARTS supernet, away from convergence, in float64, against
references written from the formulas (``sgl_betty.unrolled_reference``): DARTS's second-order
architecture gradient for K = 1, autograd through one step of Eq. 5-6 for K = 1, 2, 3, and the
post-step (Betty) placement. Gradient clipping engages in these steps (checked), so the tests
also pin down which steps are clipped."""

import copy

import pytest
import torch

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.search_space import Architecture, SearchNetwork
from sgl_betty.unrolled_reference import (
    Batches,
    StepSettings,
    darts_second_order_gradient,
    learner_states,
    one_step_hypergradients,
    post_step_hypergradients,
)

STEPS = 2
LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 3e-4
CLIP = 0.2  # small enough that every V and W step here is clipped


def batches(seed=0):
    g = torch.Generator().manual_seed(seed)

    def images():
        return torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)

    def labels():
        return torch.randint(0, 5, (4,), generator=g)

    return Batches(train=(images(), labels()), val=(images(), labels()), unlabeled=images())


def supernet_learners(num):
    torch.manual_seed(0)

    def net():
        return SearchNetwork(4, 5, 3, steps=STEPS, multiplier=STEPS).double()

    def sgd(params):
        return torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    return [
        Learner(
            Architecture(steps=STEPS, multiplier=STEPS, init_scale=0.5).double(),
            net() if num > 1 else None,
            net(),
            v_optimizer=sgd,
            w_optimizer=sgd,
            arch_optimizer=lambda params: torch.optim.Adam(params, lr=0.05),
        )
        for _ in range(num)
    ]


def engine_after_warmup(num, hypergrad, data, clip=CLIP, warmup=2):
    """An engine whose weights, momentum buffers and architectures moved for ``warmup`` steps."""
    learners = supernet_learners(num)
    config = SGLConfig(hypergrad=hypergrad, lam=0.5, grad_clip_v=clip, grad_clip_w=clip)
    engine = build_sgl_engine(
        learners,
        [data.train],
        [data.val],
        [data.unlabeled],
        config,
        train_iters=100,
        device="cpu",
    )
    for _ in range(warmup):
        engine.step()
    return engine, learners


def settings(clip_v=CLIP):
    return StepSettings(
        lr_v=LR, lr_w=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, clip_v=clip_v, lam=0.5
    )


def flat(grads):
    return torch.cat([g.flatten() for per_learner in grads for g in per_learner])


def engine_grads(engine, num):
    return flat([engine.last_hypergrad[k] for k in range(num)])


def relative_error(got, want):
    return ((got - want).norm() / want.norm()).item()


def reference(function, engine, learners, data, **kwargs):
    # A copy: the reference's forward passes must not touch the engine's BatchNorm statistics.
    states = copy.deepcopy(learner_states(engine, learners))
    return function(states, data, **kwargs)


def assert_clipped(engine, roles):
    for problem in engine.problems:
        if problem.role in roles:
            assert float(problem.last_step.clip_scale) < 1.0, f"{problem.name} was not clipped"


@pytest.mark.slow
def test_k1_unrolled_is_darts_second_order_gradient():
    data = batches()
    engine, learners = engine_after_warmup(1, HypergradConfig(type="unrolled"), data)
    want = reference(
        lambda states, d: [darts_second_order_gradient(states[0], d, settings())],
        engine,
        learners,
        data,
    )
    engine.step()
    assert_clipped(engine, {"w"})
    assert relative_error(engine_grads(engine, 1), flat(want)) < 1e-6


@pytest.mark.slow
def test_k1_unrolled_exact_is_autograd_through_one_step():
    data = batches(1)
    engine, learners = engine_after_warmup(
        1, HypergradConfig(type="unrolled", unrolled_exact=True), data
    )
    want = reference(one_step_hypergradients, engine, learners, data, settings=settings())
    engine.step()
    assert_clipped(engine, {"w"})
    assert relative_error(engine_grads(engine, 1), flat(want)) < 1e-8


@pytest.mark.slow
@pytest.mark.parametrize("num", [2, 3])
def test_unrolled_exact_is_eq_5_to_11_for_several_learners(num):
    data = batches(num)
    engine, learners = engine_after_warmup(
        num, HypergradConfig(type="unrolled", unrolled_exact=True), data
    )
    want = reference(one_step_hypergradients, engine, learners, data, settings=settings())
    engine.step()
    assert_clipped(engine, {"v", "w"})
    assert relative_error(engine_grads(engine, num), flat(want)) < 1e-8


@pytest.mark.slow
@pytest.mark.parametrize("num", [1, 2])
def test_unrolled_post_step_exact_is_its_formula(num):
    data = batches(10 + num)
    engine, learners = engine_after_warmup(
        num, HypergradConfig(type="unrolled_post_step", unrolled_exact=True), data
    )
    # The post-step formula reads the weights the lower problems hold after their steps, and the
    # architectures before theirs: this step leaves the architectures where they are.
    for k in range(num):
        for group in engine.problem("arch", k).optimizer.param_groups:
            group["lr"] = 0.0
    engine.step()
    want = reference(post_step_hypergradients, engine, learners, data, settings=settings())
    assert relative_error(engine_grads(engine, num), flat(want)) < 1e-8


@pytest.mark.slow
def test_pre_step_and_post_step_placements_differ_away_from_convergence():
    # Negative control: the two placements agree only at a fixed point; here they must not.
    data = batches(20)
    results = []
    for kind in ("unrolled", "unrolled_post_step"):
        engine, _ = engine_after_warmup(2, HypergradConfig(type=kind, unrolled_exact=True), data)
        engine.step()
        results.append(engine_grads(engine, 2))
    assert relative_error(results[1], results[0]) > 1e-2


@pytest.mark.slow
def test_the_virtual_step_of_w_is_not_clipped():
    # Negative control for the clipping semantics: a reference that clips W's virtual step as
    # the real step is clipped gives another gradient, so the equality above pins it down.
    data = batches(1)
    engine, learners = engine_after_warmup(
        1, HypergradConfig(type="unrolled", unrolled_exact=True), data
    )
    clipped = settings()
    clipped.clip_w = CLIP
    want_if_clipped = reference(one_step_hypergradients, engine, learners, data, settings=clipped)
    engine.step()
    assert relative_error(engine_grads(engine, 1), flat(want_if_clipped)) > 1e-3
