"""benchmarks/perf.py: runs end to end at a tiny size and reports every promised field and row,
with pass counts that follow the derivation in its docstring."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "perf.py"
HYPERGRADS = ["first_order", "darts", "unrolled", "neumann", "cg"]
ROW_FIELDS = {
    "method",
    "K",
    "hypergrad",
    "seconds_per_step",
    "passes",
    "overhead",
    "peak_memory_mb",
    "passes_floor",
    "forwards",
    "forwards_observed",
}
# The docstring's totals (neumann_iterations = cg_iterations = 1; unrolled is Neumann with 0).
# By hand from the module docstring's "Current code" (one-sweep hypergradient):
# base = V K(F+B) + W (3K F + 2K B) + arch K(F+B); per w_j solve with s_w = 2 + (K-1) forwards
# and n_W + K - 1 = K + 1 backwards: finite differences 2 (s_w + K + 1), neumann/cg(1)
# s_w + K + 1 + 2*2*2; per v_k: 4 (finite differences) or 6 (neumann/cg(1)).
DERIVED = {
    1: dict(first_order=4, darts=8, unrolled=8, neumann=10, cg=10),
    2: dict(first_order=18, darts=50, unrolled=50, neumann=58, cg=58),
    3: dict(first_order=27, darts=87, unrolled=87, neumann=93, cg=93),
}
FLOOR = {
    1: dict(first_order=4, darts=8, unrolled=8, neumann=10, cg=10),
    2: dict(first_order=18, darts=44, unrolled=44, neumann=56, cg=56),
    3: dict(first_order=27, darts=66, unrolled=66, neumann=84, cg=84),
}


def load_perf():
    spec = importlib.util.spec_from_file_location("perf_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    command = [
        sys.executable,
        str(SCRIPT),
        "preset=tiny",
        "init_channels=4",
        "layers=3",
        "image_size=8",
        "batch_size=4",
        "num_classes=10",
        "repeats=2",
        "warmup=1",
        "learners=1,2",
        "hypergrad=" + ",".join(HYPERGRADS),
        "threads=1",
        "--device",
        "cpu",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = done.stdout.strip().splitlines()
    return done.stdout, json.loads(lines[-1])


@pytest.mark.slow
def test_every_field_and_row(report):
    stdout, result = report
    assert result["unit_seconds"] > 0
    assert math.isclose(result["unit_fwd_bwd_seconds"], 2 * result["unit_seconds"])
    assert result["threads"] == 1
    assert result["config"]["channels_last"] is False and result["config"]["bf16"] is False
    keys = [(row["method"], row["K"], row["hypergrad"]) for row in result["rows"]]
    expected = [("supernet", 1, "none")]
    expected += [("single", 1, h) for h in HYPERGRADS] + [("sgl", 2, h) for h in HYPERGRADS]
    assert keys == expected
    for row in result["rows"]:
        assert ROW_FIELDS <= set(row), row
        assert row["seconds_per_step"] > 0
        assert row["peak_memory_mb"] >= 0
    assert "| method | K | hypergrad | seconds_per_step | passes |" in stdout


@pytest.mark.slow
def test_passes_follow_the_derivation(report):
    _, result = report
    rows = {
        (row["K"], row["hypergrad"]): row for row in result["rows"] if row["method"] != "supernet"
    }
    for (K, hypergrad), row in rows.items():
        assert isinstance(row["passes"], int) and row["passes"] > 0
        assert row["passes"] == DERIVED[K][hypergrad]
        assert row["passes_floor"] == FLOOR[K][hypergrad] <= row["passes"]
        # The forward part of the derivation, checked against hooks on every network.
        assert row["forwards_observed"] == row["forwards"]
    assert rows[(2, "first_order")]["passes"] > rows[(1, "first_order")]["passes"]
    for K in (1, 2):
        for hypergrad in HYPERGRADS[1:]:
            assert rows[(K, hypergrad)]["passes"] > rows[(K, "first_order")]["passes"]
        assert rows[(K, "neumann")]["passes"] > rows[(K, "unrolled")]["passes"]
    supernet = result["rows"][0]
    assert supernet["passes"] == 2 and supernet["forwards_observed"] == 1


@pytest.mark.slow
def test_overhead_is_time_over_passes_times_unit(report):
    _, result = report
    unit = result["unit_seconds"]
    for row in result["rows"]:
        want = row["seconds_per_step"] / (row["passes"] * unit)
        assert math.isclose(row["overhead"], want, rel_tol=1e-9), row


def test_counts_beyond_the_run_and_options():
    perf = load_perf()
    cfg = perf.parse_args(["learners=3", "hypergrad=darts,neumann", "neumann_iterations=3"])
    assert cfg["learners"] == [3] and cfg["hypergrad"] == ["darts", "neumann"]
    base = perf.parse_args([])
    for K, by_type in DERIVED.items():
        for hypergrad, passes in by_type.items():
            assert perf.current_passes(K, hypergrad, base).passes == passes
            assert perf.floor_passes(K, hypergrad, base).passes == FLOOR[K][hypergrad]
    # Each extra Neumann iteration adds one HVP (2 passes) per graph: 2 graphs per w solve, 1 per
    # v solve, K of each.
    more = (
        perf.current_passes(2, "neumann", cfg).passes
        - perf.current_passes(2, "neumann", base).passes
    )
    assert more == 2 * (2 * (2 * 2) + 2 * 2)
    # Dropping the direct pseudo-label term costs the same sweep; detaching the labels saves the
    # peer graphs and the V solves.
    no_p3 = perf.parse_args(["pseudo_label_arch_grad=false"])
    assert perf.current_passes(2, "darts", no_p3).passes == DERIVED[2]["darts"]
    detached = perf.parse_args(["detach_pseudo_labels=true"])
    assert perf.current_passes(2, "darts", detached).passes < DERIVED[2]["darts"]
    flags = perf.parse_args(["--device=cuda", "channels_last=true", "--bf16", "yes"])
    assert flags["device"] == "cuda" and flags["channels_last"] and flags["bf16"]
    assert perf.main(["no_such_key=1"]) == 2
    assert perf.main(["hypergrad=sgd"]) == 2
