"""The SGL engine on the DARTS search network: every solver runs and moves every architecture."""

import dataclasses
import math

import pytest
import torch

from sgl_betty import HypergradConfig, Learner, SGLConfig, build_sgl_engine
from sgl_betty.genotypes import validate_genotype
from sgl_betty.search_space import Architecture, SearchNetwork

STEPS = 2  # intermediate nodes per cell: keeps the network tiny


def tiny_batches(count, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        x = torch.randn(4, 3, 8, 8, generator=g)
        batches.append((x, torch.randint(0, 5, (4,), generator=g)) if labeled else x)
    return batches


def tiny_learners(num):
    torch.manual_seed(0)

    def net():
        return SearchNetwork(4, 5, 3, steps=STEPS, multiplier=STEPS)

    def arch_optimizer(params):
        return torch.optim.Adam(params, lr=0.05)

    return [
        Learner(
            Architecture(steps=STEPS, multiplier=STEPS),
            net() if num > 1 else None,
            net(),
            arch_optimizer=arch_optimizer,
        )
        for _ in range(num)
    ]


def run(num, hypergrad, steps=2):
    learners = tiny_learners(num)
    before = [[p.detach().clone() for p in learner.arch.parameters()] for learner in learners]
    engine = build_sgl_engine(
        learners,
        tiny_batches(3),
        tiny_batches(3, seed=1),
        tiny_batches(3, labeled=False, seed=2),
        SGLConfig(hypergrad=hypergrad),
        train_iters=steps,
        device="cpu",
    )
    engine.run()
    return engine, learners, before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["first_order", "darts", "unrolled", "neumann", "cg"])
def test_every_solver_moves_every_architecture(kind):
    hypergrad = HypergradConfig(
        type=kind, neumann_iterations=2, neumann_alpha=0.01, cg_iterations=2, cg_alpha=0.01
    )
    engine, learners, before = run(2, hypergrad)
    for k, learner in enumerate(learners):
        for old, new in zip(before[k], learner.arch.parameters()):
            assert not torch.equal(old, new), f"learner {k}'s architecture did not change"
        validate_genotype(learner.arch.genotype(), steps=STEPS)
        assert all(torch.isfinite(g).all() for g in engine.last_hypergrad[k])
    metrics = engine.metrics()
    assert all(math.isfinite(value) for value in metrics.values())
    assert {
        "learner0/v_train_loss",
        "learner1/w_pseudo_loss",
        "learner1/arch_val_loss",
        "learner0/arch_hypergrad_norm",
    } <= set(metrics)


@pytest.mark.slow
@pytest.mark.parametrize("num", [1, 2, 3])
def test_graph_has_3k_problems_and_runs(num):
    engine, learners, _ = run(num, HypergradConfig(type="unrolled"), steps=1)
    expected = 2 if num == 1 else 3 * num
    assert len(engine.problems) == expected
    names = {p.name for p in engine.problems}
    assert {f"arch_{k}" for k in range(num)} <= names
    if num == 1:
        assert "v_0" not in names  # a single learner has no V stage and no pseudo-labels
    else:
        # each W stage is fed by every peer's V stage
        for k in range(num):
            w = engine.problem("w", k)
            assert {c.name for c in w.children} == {f"v_{j}" for j in range(num) if j != k}
            assert (
                engine.problem("arch", k).role == "arch" and engine.problem("arch", k).learner == k
            )
    for k in range(num):
        assert engine.last_hypergrad[k] is not None


def test_peer_pseudo_label_paths_reach_the_architecture():
    learners = tiny_learners(3)
    data = tiny_batches(1)
    engine = build_sgl_engine(
        learners,
        data,
        data,
        tiny_batches(1, labeled=False),
        SGLConfig(hypergrad=HypergradConfig(type="darts")),
        device="cpu",
    )
    paths = {tuple(p.name for p in path) for path in engine.problem("arch", 0).paths}
    assert ("arch_0", "w_0", "arch_0") in paths
    assert ("arch_0", "w_1", "v_0", "arch_0") in paths and (
        "arch_0",
        "w_2",
        "v_0",
        "arch_0",
    ) in paths
    assert ("arch_0", "w_1", "arch_0") in paths  # direct dependence of pseudo-labels on A_0


def test_first_order_has_no_paths():
    learners = tiny_learners(2)
    data = tiny_batches(1)
    engine = build_sgl_engine(
        learners, data, data, tiny_batches(1, labeled=False), SGLConfig(), device="cpu"
    )
    assert all(not p.paths for p in engine.problems)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["neumann", "cg", "unrolled", "unrolled_post_step", "darts"])
def test_one_sweep_gives_betty_path_by_path_numbers(kind):
    # The engine computes all architectures' gradients in one sweep; Betty's own backward takes
    # each path of each architecture separately. Same state, same batch: same hypergradients.
    import copy

    torch.manual_seed(0)
    hypergrad = HypergradConfig(
        type=kind, neumann_iterations=2, neumann_alpha=0.05, cg_iterations=2
    )
    base = tiny_learners(2)
    for learner in base:
        learner.arch_optimizer = lambda params: torch.optim.SGD(params, lr=0.0)
        for module in (learner.arch, learner.v_net, learner.w_net):
            module.double()
    data = [(x.double(), y) for x, y in tiny_batches(1)]
    unlabeled = [x.double() for x in tiny_batches(1, labeled=False)]
    results = []
    for path_by_path in (False, True):
        learners = copy.deepcopy(base)
        # No clipping: Betty's backward takes unrolled's validation gradient at the real
        # post-step weights, which equal the one-step weights W' only for an unclipped step.
        config = SGLConfig(
            hypergrad=dataclasses.replace(hypergrad, path_by_path=path_by_path),
            grad_clip_v=0.0,
            grad_clip_w=0.0,
        )
        engine = build_sgl_engine(learners, data, data, unlabeled, config, device="cpu")
        engine.step()
        results.append(torch.cat([g.flatten() for k in range(2) for g in engine.last_hypergrad[k]]))
    sweep, betty = results
    if kind == "darts":  # finite differences taken at a different point: close, not equal
        assert torch.nn.functional.cosine_similarity(sweep, betty, dim=0) > 0.999
    else:
        assert torch.allclose(sweep, betty, rtol=1e-7, atol=1e-12)


@pytest.mark.slow
def test_bf16_autocast_and_channels_last_run_with_float32_state():
    learners = tiny_learners(2)
    config = SGLConfig(
        hypergrad=HypergradConfig(type="unrolled"),
        autocast_dtype=torch.bfloat16,
        channels_last=True,
    )
    engine = build_sgl_engine(
        learners,
        tiny_batches(2),
        tiny_batches(2, seed=1),
        tiny_batches(2, labeled=False, seed=2),
        config,
        device="cpu",
    )
    engine.step()
    assert all(math.isfinite(v) for v in engine.metrics().values())
    assert all(g.dtype == torch.float32 for g in engine.last_hypergrad[0])
    assert all(p.dtype == torch.float32 for p in learners[0].w_net.parameters())
    conv = next(m for m in learners[0].w_net.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
