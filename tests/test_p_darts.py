import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sgl_betty.experiment.config import ConfigError, load_config
from sgl_betty.experiment.methods import p_darts_plan, p_darts_stage_modules
from sgl_betty.genotypes import PRIMITIVES, validate_genotype
from sgl_betty.search_space import (
    PDartsArchitecture,
    PDartsPlan,
    PDartsSearchNetwork,
    SkipDropoutMixedOp,
    SkipDropoutSchedule,
    derive_p_darts_genotype,
    drop_weakest_ops,
    full_op_set,
    limit_skip_connects,
    skip_dropout_rate,
)
from sgl_betty.search_space.ops import FactorizedReduce
from sgl_betty.search_space.scheduled import ScheduledDropout

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def one_hot(name: str, primitives=PRIMITIVES) -> torch.Tensor:
    weights = torch.zeros(len(primitives))
    weights[list(primitives).index(name)] = 1.0
    return weights


# --- dropping ops between stages -------------------------------------------------------------


def test_drop_weakest_ops_keeps_the_strongest_in_their_order():
    # PRIMITIVES: none, max_pool, avg_pool, skip, sep3, sep5, dil3, dil5.
    weights = torch.tensor(
        [
            [0.30, 0.05, 0.10, 0.20, 0.15, 0.02, 0.08, 0.10],
            [0.01, 0.20, 0.04, 0.03, 0.30, 0.25, 0.07, 0.10],
        ]
    )
    drop = drop_weakest_ops(weights, full_op_set(2)[:2], keep=5)
    # Edge 0 drops sep5 (0.02), max_pool (0.05), dil3 (0.08); avg_pool and dil5 tie at 0.10 and
    # both stay. Edge 1 drops none (0.01), skip (0.03), avg_pool (0.04).
    assert drop.kept == (
        ("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"),
        ("max_pool_3x3", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
    )
    assert drop.dropped == (
        ("sep_conv_5x5", "max_pool_3x3", "dil_conv_3x3"),
        ("none", "skip_connect", "avg_pool_3x3"),
    )


def test_drop_weakest_ops_drops_the_earlier_of_equal_ops_first():
    ops = [("sep_conv_3x3", "skip_connect", "dil_conv_3x3")]
    drop = drop_weakest_ops(torch.tensor([[0.2, 0.2, 0.6]]), ops, keep=2)
    assert drop.kept == (("skip_connect", "dil_conv_3x3"),)
    assert drop.dropped == (("sep_conv_3x3",),)


def test_drop_weakest_ops_can_remove_none_whatever_its_weight():
    # The reference's last stage: `none` goes first, then the weakest of the others.
    ops = [
        ("none", "skip_connect", "sep_conv_3x3"),
        ("skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
    ]
    weights = torch.tensor([[0.8, 0.05, 0.15], [0.5, 0.2, 0.3]])
    drop = drop_weakest_ops(weights, ops, keep=1, remove_none=True)
    assert drop.kept == (("sep_conv_3x3",), ("skip_connect",))
    assert drop.dropped == (("none", "skip_connect"), ("sep_conv_3x3", "dil_conv_3x3"))
    # Without it `none` would survive as the strongest op.
    assert drop_weakest_ops(weights, ops, keep=1).kept[0] == ("none",)


def test_drop_weakest_ops_rejects_tables_that_do_not_match():
    with pytest.raises(ValueError, match="one row per edge"):
        drop_weakest_ops(torch.ones(3, 8), full_op_set(2)[:2], keep=5)
    with pytest.raises(ValueError, match="keep=9"):
        drop_weakest_ops(torch.ones(2, 8), full_op_set(2)[:2], keep=9)


# --- skip dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "rate"),
    [
        (0, 0.4 * 24 / 25),  # frozen architecture: linear decay over the stage's epochs
        (9, 0.4 * 15 / 25),
        (10, 0.4),  # first architecture epoch: back to the initial rate
        (15, 0.4 * math.exp(-1.0)),  # then exp(-0.2 per epoch)
        (24, 0.4 * math.exp(-2.8)),
    ],
)
def test_skip_dropout_rate_follows_the_reference_schedule(epoch, rate):
    assert skip_dropout_rate(0.4, epoch, 25, 10) == pytest.approx(rate)
    assert SkipDropoutSchedule(0.4, 25, 10).rate_at_epoch(epoch) == pytest.approx(rate)


def test_skip_dropout_schedule_by_progress_is_constant_within_an_epoch():
    schedule = SkipDropoutSchedule(0.4, 25, 10)
    # Epoch 10 starts at progress 10 / 25 (step 40 of 100 with 4 steps per epoch).
    assert schedule.rate_at_progress(40 / 100) == pytest.approx(0.4)
    assert schedule.rate_at_progress(39 / 100) == pytest.approx(0.4 * 15 / 25)
    assert schedule.rate_at_progress(0.0) == pytest.approx(0.4 * 24 / 25)
    assert schedule.rate_at_progress(0.999) == pytest.approx(0.4 * math.exp(-2.8))


def test_dropout_follows_only_the_stride_one_skip_connect():
    op = SkipDropoutMixedOp(4, 1)
    skip = op.ops[PRIMITIVES.index("skip_connect")]
    assert isinstance(skip, nn.Sequential) and isinstance(skip[1], ScheduledDropout)
    assert [m for m in op.modules() if isinstance(m, ScheduledDropout)] == [skip[1]]
    reduce_op = SkipDropoutMixedOp(4, 2)
    assert isinstance(reduce_op.ops[PRIMITIVES.index("skip_connect")], FactorizedReduce)
    assert not any(isinstance(m, ScheduledDropout) for m in reduce_op.modules())

    x = torch.randn(2, 4, 6, 6)
    weights = one_hot("skip_connect")
    assert torch.equal(op(x, weights), x)  # rate 0 until set
    skip[1].p = 1.0
    assert torch.count_nonzero(op(x, weights)) == 0
    skip[1].p = 0.5
    out = op(x, weights)
    assert torch.all((out == 0) | torch.isclose(out, 2 * x))  # inverted dropout: 0 or x / 0.5
    op.eval()
    assert torch.equal(op(x, weights), x)


# --- per-edge op subsets -------------------------------------------------------------------------

NORMAL_OPS = (
    ("skip_connect", "sep_conv_3x3", "max_pool_3x3"),
    ("none", "skip_connect", "dil_conv_3x3"),
    ("skip_connect", "sep_conv_5x5", "avg_pool_3x3"),
    ("none", "skip_connect", "sep_conv_3x3"),
    ("none", "sep_conv_3x3", "dil_conv_5x5"),
)
REDUCE_OPS = tuple(("max_pool_3x3", "sep_conv_3x3", "dil_conv_5x5") for _ in range(5))
# Softmaxed weights, columns in each edge's op order.
NORMAL_WEIGHTS = torch.tensor(
    [
        [0.60, 0.25, 0.15],
        [0.20, 0.50, 0.30],
        [0.70, 0.20, 0.10],
        [0.10, 0.55, 0.35],
        [0.50, 0.30, 0.20],
    ]
)


def test_network_builds_each_edge_with_its_own_ops():
    net = PDartsSearchNetwork(
        4, 10, 3, steps=2, multiplier=2, normal_primitives=NORMAL_OPS, reduce_primitives=REDUCE_OPS
    )
    for cell in net.cells:
        expected = REDUCE_OPS if cell.reduction else NORMAL_OPS
        assert tuple(edge.primitives for edge in cell.edges) == expected
        assert all(len(edge.ops) == 3 for edge in cell.edges)


def test_network_forward_and_backward_reach_weights_and_architecture():
    net = PDartsSearchNetwork(
        4, 10, 3, steps=2, multiplier=2, normal_primitives=NORMAL_OPS, reduce_primitives=REDUCE_OPS
    )
    arch = PDartsArchitecture(
        steps=2, multiplier=2, normal_primitives=NORMAL_OPS, reduce_primitives=REDUCE_OPS
    )
    assert arch.alpha_normal.shape == arch.alpha_reduce.shape == (5, 3)
    logits = net(torch.randn(4, 3, 8, 8), arch())
    F.cross_entropy(logits, torch.randint(0, 10, (4,))).backward()
    for name, param in arch.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="3 ops on each of its 5 edges"):
        net(torch.randn(1, 3, 8, 8), PDartsArchitecture(steps=2, multiplier=2)())


def test_network_skip_dropout_follows_its_schedule():
    schedule = SkipDropoutSchedule(0.3, 5, 2)
    net = PDartsSearchNetwork(4, 10, 3, steps=2, multiplier=2, skip_dropout_schedule=schedule)
    dropouts = net.skip_dropouts()
    # One per stride-1 skip_connect: 3 cells (normal, reduce, reduce) of 5 edges, of which a
    # reduction cell strides 4 (those reading the previous cells).
    assert len(dropouts) == 5 + 1 + 1
    assert net.skip_dropout == pytest.approx(0.3 * 4 / 5)
    net.set_search_progress(0.4)  # epoch 2: architecture starts, rate back to 0.3
    assert all(d.p == pytest.approx(0.3) for d in dropouts)
    net.set_skip_dropout(0.0)
    assert net.skip_dropout == 0.0
    with pytest.raises(ValueError):
        net.set_skip_dropout(1.5)


def test_per_edge_op_lists_are_checked():
    with pytest.raises(ValueError, match="5 edges"):
        PDartsArchitecture(steps=2, normal_primitives=NORMAL_OPS[:4])
    with pytest.raises(ValueError, match="same"):
        PDartsArchitecture(steps=2, normal_primitives=(*NORMAL_OPS[:4], ("sep_conv_3x3",)))
    with pytest.raises(ValueError, match="unknown operation"):
        PDartsArchitecture(steps=2, normal_primitives=(*NORMAL_OPS[:4], ("a", "b", "c")))
    with pytest.raises(ValueError, match="no op other than 'none'"):
        PDartsArchitecture(steps=2, normal_primitives=(("sep_conv_3x3",),) * 4 + (("none",),))


# --- the final skip-connect limit ----------------------------------------------------------------
# Derived by hand from NORMAL_WEIGHTS: unlimited, node 0 keeps skip on edges 0 (0.6) and 1 (0.5),
# node 1 keeps skip on edges 2 (0.7) and 3 (0.55): four skips. Removing the weakest chosen skip
# each time: edge 1 (0.5) falls back to dil_conv_3x3 (0.3); then edge 3 (0.55) to sep_conv_3x3
# (0.35); then edge 0 (0.6) to sep_conv_3x3 (0.25), now behind edge 1; then edge 2 (0.7) falls to
# sep_conv_5x5 (0.2) and loses its place to edge 4 (sep_conv_3x3, 0.3).


@pytest.mark.parametrize(
    ("max_skips", "gene"),
    [
        (4, [("skip_connect", 0), ("skip_connect", 1), ("skip_connect", 0), ("skip_connect", 1)]),
        (2, [("skip_connect", 0), ("dil_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 1)]),
        (1, [("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1)]),
        (0, [("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)]),
    ],
)
def test_limit_skip_connects_removes_the_weakest_skip_and_rederives(max_skips, gene):
    assert limit_skip_connects(NORMAL_WEIGHTS, NORMAL_OPS, steps=2, max_skips=max_skips) == gene


def test_limit_skip_connects_fails_when_a_node_runs_out_of_edges():
    # Edge 1 (node 0, input 1) has nothing but none and skip_connect.
    ops = (
        ("skip_connect", "sep_conv_3x3"),
        ("none", "skip_connect"),
        ("skip_connect", "sep_conv_5x5"),
        ("none", "sep_conv_3x3"),
        ("none", "dil_conv_3x3"),
    )
    weights = torch.tensor([[0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    # Skips on edges 1 (0.8), 2 (0.7), 0 (0.6): edge 0 falls to sep_conv_3x3, then edge 2 to
    # sep_conv_5x5 (0.3), which loses its place to edge 4's dil_conv_3x3 (0.4).
    assert limit_skip_connects(weights, ops, steps=2, max_skips=1) == [
        ("skip_connect", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("dil_conv_3x3", 2),
    ]
    with pytest.raises(ValueError, match="node 0"):
        limit_skip_connects(weights, ops, steps=2, max_skips=0)


def test_architecture_genotype_on_per_edge_ops_with_and_without_the_limit():
    uniform_reduce = torch.tensor([[0.2, 0.5, 0.3]] * 5)
    arch = PDartsArchitecture(
        steps=2, multiplier=2, normal_primitives=NORMAL_OPS, reduce_primitives=REDUCE_OPS
    )
    with torch.no_grad():
        arch.alpha_normal.copy_(NORMAL_WEIGHTS.log())
        arch.alpha_reduce.copy_(uniform_reduce.log())
    genotype = arch.genotype()
    assert genotype.normal == [
        ("skip_connect", 0),
        ("skip_connect", 1),
        ("skip_connect", 0),
        ("skip_connect", 1),
    ]
    # Reduce: sep_conv_3x3 (0.5) on every edge; equal edges keep the lower inputs.
    assert genotype.reduce == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1)] * 2
    validate_genotype(genotype, steps=2)

    arch.max_skip_connects = 2
    limited = arch.genotype()
    assert limited.normal == limit_skip_connects(NORMAL_WEIGHTS, NORMAL_OPS, steps=2)
    assert limited.reduce == genotype.reduce
    assert limited == derive_p_darts_genotype(
        NORMAL_WEIGHTS,
        uniform_reduce,
        NORMAL_OPS,
        REDUCE_OPS,
        steps=2,
        multiplier=2,
        max_skip_connects=2,
    )


# --- the stage plan and one stage transition -----------------------------------------------------


def test_plan_from_the_default_config_matches_the_reference():
    cfg = load_config(["preset=sgl_p_darts"], recipe="cifar100", config_dir=CONFIG_DIR)
    plan = p_darts_plan(cfg)
    assert [stage.layers for stage in plan.stages] == [5, 11, 17]
    assert [stage.ops_per_edge for stage in plan.stages] == [8, 5, 3]
    assert [stage.ops_kept for stage in plan.stages] == [5, 3, 1]
    assert [stage.skip_dropout for stage in plan.stages] == [0.1, 0.2, 0.3]
    assert [stage.is_last for stage in plan.stages] == [False, False, True]
    assert all(s.epochs == 25 and s.arch_frozen_epochs == 10 for s in plan.stages)
    assert plan.max_skip_connects == 2
    assert plan.stages[1].skip_dropout_schedule() == SkipDropoutSchedule(0.2, 25, 10, 0.2)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["search.pdarts_ops_kept=[5,3]"], "one entry per stage"),
        (["search.pdarts_ops_kept=[5,5,1]"], "stage 1 has 5 ops"),
        (["search.pdarts_ops_kept=[5,1,1]"], "stage 1 has 5 ops per edge and must keep between 2"),
        # Refused by the config's own checks already, before the plan.
        (["search.pdarts_skip_dropout=[0.1,0.2,1.5]"], r"pdarts_skip_dropout\[2\]=1.5.*\[0, 1\)"),
    ],
)
def test_plan_rejects_inconsistent_settings(overrides, message):
    with pytest.raises(ConfigError, match=message):
        cfg = load_config(
            ["preset=sgl_p_darts", *overrides], recipe="cifar100", config_dir=CONFIG_DIR
        )
        p_darts_plan(cfg)


def test_plan_build_with_custom_stages():
    plan = PDartsPlan.build(
        layers=3,
        add_layers=[0, 2],
        ops_kept=[4, 2],
        skip_dropout=[0.0, 0.5],
        epochs=4,
        arch_frozen_epochs=1,
    )
    assert [(s.layers, s.ops_per_edge, s.ops_kept) for s in plan.stages] == [(3, 8, 4), (5, 4, 2)]


def test_a_stage_transition_builds_the_next_stage_from_the_dropped_ops():
    cfg = load_config(
        ["preset=tiny", "search.method=p_darts", "search.pdarts_add_layers=[0,1,2]"],
        recipe="cifar100",
        config_dir=CONFIG_DIR,
    )
    first = p_darts_stage_modules(cfg, 10, True, stage=0)
    assert first.arch.alpha_normal.shape == (5, len(PRIMITIVES))
    assert first.arch.max_skip_connects is None
    with torch.no_grad():
        first.arch.alpha_normal.copy_(torch.randn(5, len(PRIMITIVES)))
    normal, reduce = first.arch.drop_weakest_ops(keep=5)
    second = p_darts_stage_modules(cfg, 10, True, 1, normal.kept, reduce.kept)
    assert len(second.w_net.cells) == 4  # tiny: 3 cells + 1
    assert second.arch.alpha_normal.shape == (5, 5)
    for cell in second.w_net.cells:
        for edge, kept, dropped in zip(
            cell.edges,
            (reduce if cell.reduction else normal).kept,
            (reduce if cell.reduction else normal).dropped,
            strict=True,
        ):
            assert edge.primitives == kept and not set(dropped) & set(edge.primitives)
    logits = second.w_net(torch.randn(2, 3, 8, 8), second.arch())
    assert logits.shape == (2, 10)
    normal, reduce = second.arch.drop_weakest_ops(keep=3)
    last = p_darts_stage_modules(cfg, 10, False, 2, normal.kept, reduce.kept)
    assert last.v_net is None and last.arch.max_skip_connects == 2


def test_final_normal_cell_keeps_two_skip_connects_when_skip_dominates_every_edge():
    ops = (("none", "skip_connect", "sep_conv_3x3"),) * 14
    arch = PDartsArchitecture(normal_primitives=ops, reduce_primitives=ops)
    with torch.no_grad():
        arch.alpha_normal.copy_(torch.tensor([0.0, 3.0, 1.0]) + 0.01 * torch.randn(14, 3))

    def skips(genotype):
        return sum(op == "skip_connect" for op, _ in genotype.normal)

    assert skips(arch.genotype()) == 8
    arch.max_skip_connects = 2
    genotype = arch.genotype()
    assert skips(genotype) == 2
    validate_genotype(genotype)
    assert {op for op, _ in genotype.normal} == {"skip_connect", "sep_conv_3x3"}
