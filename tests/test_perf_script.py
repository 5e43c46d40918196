"""benchmarks/perf.py: every field it reports, its counts observed (a change in the computation
changes them), FLOPs against torch's counter, the interleaved timing, its command line."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sgl_betty.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "perf.py"
HYPERGRADS = [
    "first_order",
    "darts",
    "unrolled",
    "unrolled_post_step",
    "neumann",
    "cg",
    "unrolled_exact",
]
ROW_FIELDS = {
    "method",
    "K",
    "hypergrad",
    "seconds_per_step",
    "unit_seconds",
    "time_units",
    "time_units_min",
    "time_units_max",
    "time_unit_ratios",
    "cpu_time_units",
    "cpu_overhead",
    "flop_units",
    "overhead",
    "floor_units",
    "floor_passes",
    "forwards",
    "backwards",
    "second_order",
    "aten_ops",
    "flops",
    "by_phase",
    "peak_memory_mb",
    "peak_reserved_mb",
}


def load_perf():
    spec = importlib.util.spec_from_file_location("perf_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


perf = load_perf()


@pytest.fixture(scope="module")
def report():
    command = [
        sys.executable,
        str(SCRIPT),
        "preset=tiny",
        "spaces=[darts]",
        "learners=[1,2]",
        f"hypergrad=[{','.join(HYPERGRADS)}]",
        "repeats=1",
        "warmup=0",
        "threads=1",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def rows_of(result):
    return {(r["K"], r["hypergrad"]): r for r in result["rows"] if r["hypergrad"] != "none"}


@pytest.mark.slow
def test_every_field_and_row(report):
    stdout, result = report
    assert [(r["method"], r["K"], r["hypergrad"]) for r in result["rows"]] == [
        ("darts", 1, "none"),
        *[("darts", K, h) for K in (1, 2) for h in HYPERGRADS],
    ]
    assert result["threads"] == 1 and result["device"] == "cpu"
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    assert "cudnn.benchmark" in result["backend_flags"]
    unit = result["rows"][0]
    assert unit["flops"] > 0 and unit["unit_seconds"] > 0 and unit["forwards"] == 1
    assert set(unit["pass_kind_flops"]) == {"F", "Bw", "Ba", "B", "Bg", "Sw", "Sa"}
    for row in rows_of(result).values():
        assert ROW_FIELDS <= set(row), row
        ratios = row["time_unit_ratios"]
        assert len(ratios) == 1 and min(ratios) == row["time_units_min"]
        assert row["time_units_min"] <= row["time_units"] <= row["time_units_max"]
        assert math.isclose(row["flop_units"], row["flops"] / unit["flops"])
        assert math.isclose(row["overhead"], row["time_units"] / row["flop_units"])
        assert math.isclose(row["cpu_overhead"], row["cpu_time_units"] / row["flop_units"])
        assert row["cpu_time_units_min"] <= row["cpu_time_units"] <= row["cpu_time_units_max"]
        assert row["floor_units"] <= row["flop_units"] * (1 + 1e-9)
        assert row["aten_ops"] == sum(p["aten_ops"] for p in row["by_phase"].values())
        assert row["peak_memory_mb"] >= 0 and row["peak_reserved_mb"] is None
    assert "| method | K | hypergrad | s/step | time units (min-max) |" in stdout
    assert "load average" in stdout


@pytest.mark.slow
def test_the_counts_follow_the_computation(report):
    _, result = report
    rows = rows_of(result)
    for K in (1, 2):
        for h in ("first_order", "darts", "unrolled", "unrolled_post_step"):
            assert rows[(K, h)]["second_order"] == 0  # first order, or finite differences
            assert rows[(K, h)]["by_phase"]["second_order"]["flops"] == 0
    # K = 1: W's descent, the validation backward (into W and A at once), then the solver:
    # finite differences two backwards; Neumann (1 iteration) and CG (1) a create-graph backward,
    # one HVP and the mixed product; exact unrolled a create-graph backward and the product.
    assert [rows[(1, h)]["backwards"] for h in ("first_order", "darts", "neumann")] == [2, 4, 3]
    assert [rows[(1, h)]["second_order"] for h in ("neumann", "cg", "unrolled_exact")] == [2, 2, 1]
    assert rows[(1, "darts")]["forwards"] == 4
    # K = 1 darts executes exactly its floor: no pass redone.
    assert math.isclose(rows[(1, "darts")]["flop_units"], rows[(1, "darts")]["floor_units"])
    # K = 2: 2 W and 2 V solves, each one HVP and one mixed product (Neumann, CG) or the
    # product alone (exact unrolled); a product is one backward over all graphs of its loss.
    assert rows[(2, "neumann")]["second_order"] == rows[(2, "cg")]["second_order"] == 4 * 2
    assert rows[(2, "unrolled_exact")]["second_order"] == 4
    # V 2, W 4 and their pseudo-labels 2, validation 2, the W solves' finite differences 8,
    # each learner's rebuilt label graph 2, the V solves' finite differences 4.
    assert rows[(2, "darts")]["forwards"] == 24
    for h in HYPERGRADS[1:]:
        assert rows[(2, h)]["flops"] > rows[(2, "first_order")]["flops"]
        assert rows[(2, h)]["flops"] > rows[(1, h)]["flops"]


def count_step(space, K, hypergrad, **overrides):
    cfg = perf.load(["preset=tiny", *[f"{k}={v}" for k, v in overrides.items()]])
    device = torch.device("cpu")
    data = perf.make_data(cfg, device)
    engine, learners = perf.build_engine(space, K, hypergrad, cfg, device, data)
    engine.step()
    networks = [net for ln in learners for net in (ln.v_net, ln.w_net) if net is not None]
    return engine, learners, networks, lambda: perf.count(engine.step, networks), cfg, data


@pytest.mark.slow
def test_counts_are_observed_not_derived(monkeypatch):
    *_, counted, cfg, data = count_step("darts", 1, "neumann")
    one = counted()
    *_, counted_twice, _, _ = count_step("darts", 1, "neumann", neumann_iterations=2)
    two = counted_twice()
    # One more Neumann iteration is one more Hessian-vector product, of exactly its FLOPs.
    unit = perf.Unit("darts", cfg, torch.device("cpu"), data[0][0])
    kinds = perf.measure_pass_kinds(unit.net, unit.arch, unit.batch)
    assert two["second_order"] == one["second_order"] + 1
    assert two["flops"] - one["flops"] == kinds["Sw"]
    # A network that runs every forward twice: twice the forward convolutions.
    engine, learners, _, counted, _, _ = count_step("darts", 1, "first_order")
    before = counted()
    w_net = learners[0].w_net
    forward = type(w_net).forward
    monkeypatch.setattr(w_net, "forward", lambda *a: (forward(w_net, *a), forward(w_net, *a))[1])
    after = counted()
    convs = before["by_phase"]["forward"]["convolutions"]
    assert after["by_phase"]["forward"]["convolutions"] == 2 * convs
    assert after["by_phase"]["backward"] == before["by_phase"]["backward"]


def test_second_order_conv_false_measures_pytorchs_double_backward():
    assert perf.load(["second_order_conv=false"]).second_order_conv is False
    *_, counted, _, _ = count_step("darts", 1, "unrolled_exact")
    ours = counted()
    with perf.convolutions_differentiated_twice_by(ours=False):
        *_, counted_by_pytorch, _, _ = count_step("darts", 1, "unrolled_exact")
        pytorch = counted_by_pytorch()
    calls = ("forwards", "backwards", "second_order")
    assert [ours[c] for c in calls] == [pytorch[c] for c in calls] == [3, 3, 1]
    assert ours["by_phase"]["forward"] == pytorch["by_phase"]["forward"]
    # The mixed product into the architecture skips PyTorch's second-order weight gradients.
    second, second_pytorch = (r["by_phase"]["second_order"] for r in (ours, pytorch))
    assert second["flops"] < second_pytorch["flops"]
    assert second["aten_ops"] < second_pytorch["aten_ops"]


@pytest.mark.slow
def test_one_graph_at_a_time_costs_what_its_floor_says():
    *_, counted, cfg, _ = count_step("darts", 2, "neumann")
    together = counted()
    *_, counted_in_turn, cfg_in_turn, _ = count_step(
        "darts", 2, "neumann", one_graph_at_a_time=True
    )
    in_turn = counted_in_turn()
    # K = 2, one iteration: each W solve's mixed product rebuilds one of its two graphs.
    assert in_turn["forwards"] == together["forwards"] + 2
    # Its Hessian-vector and mixed products take one backward per graph: 2 more per W solve.
    assert in_turn["second_order"] == together["second_order"] + 4
    extra = perf.floor_passes(2, "neumann", cfg_in_turn) - perf.floor_passes(2, "neumann", cfg)
    assert extra == {"F": 2, "Bg": 2}


@pytest.mark.slow
@pytest.mark.parametrize("space", ["pc_darts", "p_darts", "darts_minus"])
def test_rows_for_every_search_space(space, report):
    cfg = perf.load(["preset=tiny", "warmup=0", "repeats=1"])
    device = torch.device("cpu")
    data = perf.make_data(cfg, device)
    memory = perf.Memory(device)
    unit, unit_row = perf.measure_unit(space, cfg, device, data, memory)
    row = perf.measure_row(space, 1, "unrolled_exact", cfg, device, data, unit, unit_row, memory)
    assert row["method"] == space and (row["backwards"], row["second_order"]) == (3, 1)
    assert row["flop_units"] >= row["floor_units"] > 1
    # Its own unit: PC-DARTS's ops see a quarter of the channels, DARTS- adds a skip per edge.
    darts = report[1]["rows"][0]["flops"]
    assert (unit_row["flops"] < darts) == (space == "pc_darts")
    assert (unit_row["flops"] > darts) == (space == "darts_minus")


def test_flops_match_torch_and_fix_grouped_weight_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9, 9, requires_grad=True)
    dense = torch.nn.Conv2d(6, 4, 3, padding=1, bias=False)
    with FlopCounterMode(display=False) as reference:
        dense(x).sum().backward()
    assert perf.count(lambda: dense(x).sum().backward())["flops"] == reference.get_total_flops()
    depthwise = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False)
    counts = perf.count(lambda: depthwise(x).sum().backward())
    per_pass = 2 * 2 * 9 * 9 * 3 * 3 * 6  # 2 FLOPs per multiply-add, one 3x3 tap per channel
    assert counts["by_phase"]["forward"]["flops"] == per_pass
    assert counts["by_phase"]["backward"]["flops"] == 2 * per_pass  # input and weight gradients
    assert counts["by_phase"]["forward"]["convolutions"] == 1
    assert counts["by_phase"]["backward"]["convolution_backwards"] == 1
    # A transposed one (the input gradient of a twice-differentiated convolution) likewise.
    transposed = torch.nn.ConvTranspose2d(6, 6, 3, padding=1, groups=6, bias=False)
    counts = perf.count(lambda: transposed(x).sum().backward())
    assert counts["by_phase"]["forward"]["flops"] == per_pass
    assert counts["by_phase"]["backward"]["flops"] == 2 * per_pass


def test_second_order_backwards_are_told_apart():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh(), torch.nn.Flatten())
    x = torch.randn(2, 3, 6, 6)
    params = list(net.parameters())

    def hvp():
        grads = torch.autograd.grad(net(x).pow(2).sum(), params, create_graph=True)
        torch.autograd.grad(grads, params, grad_outputs=[torch.ones_like(g) for g in grads])

    counts = perf.count(hvp)
    assert (counts["backwards"], counts["second_order"]) == (1, 1)
    assert counts["by_phase"]["second_order"]["convolutions"] > 0
    plain = perf.count(lambda: torch.autograd.grad(F.mse_loss(net(x), net(x).detach()), params))
    assert (plain["backwards"], plain["second_order"]) == (1, 0)


def test_interleaved_ratios_pair_each_step_with_its_neighbouring_units():
    times = iter([1.0, 3.0, 2.0, 6.0, 1.0, 1.0, 1.0])

    def timer(fn):
        seconds = next(times)
        return seconds, seconds / 2  # CPU time: half the clock's

    timing = perf.interleaved(None, None, 3, timer)
    # step 3 between units 1 and 2; step 6 between 2 and 1; step 1 between 1 and 1.
    assert timing["time_unit_ratios"] == timing["cpu_time_unit_ratios"] == [2.0, 4.0, 1.0]
    assert timing["time_units"] == 2.0 and timing["time_units_max"] == 4.0
    assert timing["seconds_per_step"] == 3.0 and timing["unit_seconds"] == 1.0
    assert timing["cpu_seconds_per_step"] == 1.5
    on_gpu = perf.interleaved(None, None, 1, lambda fn: (1.0, None))
    assert on_gpu["time_units"] == 1.0 and on_gpu["cpu_time_units"] is None


def test_command_line(capsys):
    cfg = perf.load(["learners=[3]", "hypergrad=[darts,neumann]", "neumann_iterations=3"])
    assert cfg.learners == [3] and cfg.hypergrad == ["darts", "neumann"]
    assert perf.load(["preset=tiny"]).init_channels == 4
    assert perf.load(["preset=tiny", "init_channels=8"]).init_channels == 8
    for bad, named in (
        (["no_such_key=1"], "unknown config key 'no_such_key'"),
        (["init_chanels=8"], "did you mean init_channels"),
        (["layers=[1,2]"], "invalid value for layers"),
        (["learners={a: 1}"], "learners cannot take a value of that shape"),
        (["hypergrad=[sgd]"], "sgd"),
        (["spaces=[nas]"], "nas"),
        (["learners=[0]"], "learners"),
        (["preset=huge"], "huge"),
        (["learners"], "key=value"),
        (["device=tpu"], "tpu"),
    ):
        with pytest.raises(ConfigError, match=re.escape(named)):
            perf.load(bad)
        capsys.readouterr()
        assert perf.main(bad) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and "Traceback" not in err
