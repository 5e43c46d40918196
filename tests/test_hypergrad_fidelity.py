"""benchmarks/hypergrad_fidelity.py at a tiny size: every promised row and field, and the
figures that must hold whatever the size (the exact types match their references)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "hypergrad_fidelity.py"
SMOKE_TYPES = {"first_order", "unrolled exact", "neumann (it=1)", "cg (it=1)"}
TYPES = {
    "first_order",
    "darts",
    "unrolled",
    "unrolled exact",
    "unrolled_post_step",
    "unrolled_post_step exact",
    "neumann (it=1)",
    "neumann (it=5)",
    "neumann (it=20)",
    "cg (it=1)",
    "cg (it=4)",
    "cg (it=16)",
}


def run(*overrides):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *overrides],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def supernet():
    return run(
        "problem=supernet",
        "learners=[1]",
        "init_channels=2",
        "layers=3",
        "steps=2",
        "image_size=8",
        "batch_size=4",
        "warmup_steps=1",
        "precisions=[fp32,bf16]",
        "radii=[0.01,1e-6]",
        "reference_iterations=20",
        "types=[first_order,unrolled exact,neumann (it=1),cg (it=1)]",
    )


@pytest.mark.slow
def test_supernet_reports_every_type_precision_and_policy(supernet):
    _, report = supernet
    rows = [row for row in report["rows"] if row["kind"] == "fidelity"]
    assert {row["type"] for row in rows} == SMOKE_TYPES
    assert {(row["precision"], row["policy"]) for row in rows} == {
        ("fp32", True),
        ("bf16", True),
        ("bf16", False),
    }
    for row in rows:
        for key in ("cosine_one_step", "error_one_step", "cosine_implicit", "error_implicit"):
            assert isinstance(row[key], float)
        has_solve = row["type"].startswith(("neumann", "cg"))
        assert (row["residual"] is not None) == has_solve


@pytest.mark.slow
def test_supernet_exact_unrolled_is_the_one_step_reference(supernet):
    _, report = supernet
    exact = next(
        row
        for row in report["rows"]
        if row.get("type") == "unrolled exact" and row["precision"] == "fp32"
    )
    assert exact["cosine_one_step"] > 0.9999 and exact["error_one_step"] < 1e-4


@pytest.mark.slow
def test_a_solver_that_overflows_is_a_row_not_a_crash():
    # Neumann with alpha far above 2 / the largest eigenvalue: its series overflows in fp32.
    text, report = run(
        "problem=supernet",
        "learners=[1]",
        "init_channels=2",
        "layers=3",
        "steps=2",
        "warmup_steps=1",
        "precisions=[fp32]",
        "radii=[0.01]",
        "reference_iterations=5",
        "neumann_alpha=1.0e30",
        "types=[first_order,neumann (it=20)]",
    )
    rows = {r["type"]: r for r in report["rows"] if r["kind"] == "fidelity"}
    assert rows["neumann (it=20)"]["diverged"] and rows["neumann (it=20)"]["residual"] == float(
        "inf"
    )
    assert not rows["first_order"]["diverged"] and rows["first_order"]["cosine_one_step"] > 0
    assert "| neumann (it=20) | non-finite (NonFiniteError) |" in text


@pytest.mark.slow
def test_supernet_radius_sweep(supernet):
    text, report = supernet
    rows = [row for row in report["rows"] if row["kind"] == "radius"]
    assert {(row["radius"], row["precision"]) for row in rows} == {
        (r, p) for r in (0.01, 1e-6) for p in ("fp32", "bf16")
    }
    for row in rows:
        assert 0.0 <= row["surviving"] <= 1.0
    by = {(row["radius"], row["precision"]): row for row in rows}
    # A perturbation of 1e-6 / ||v|| per weight is lost to bf16 rounding almost everywhere.
    assert by[(1e-6, "bf16")]["surviving"] < by[(0.01, "bf16")]["surviving"]
    assert "| K | radius R |" in text


@pytest.mark.slow
def test_closed_form_table():
    text, report = run("learners=[2]", "repeats=1")
    errors = {row["type"]: row["error"] for row in report["rows"]}
    assert errors["neumann (it=300)"] < 1e-10 and errors["cg (it=8)"] < 1e-10
    assert "| K | solver |" in text


def test_every_type_is_offered():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "supernet_fidelity", ROOT / "benchmarks" / "supernet_fidelity.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    assert {label for label, _ in module.solver_settings(0.025)} == TYPES


@pytest.mark.slow
def test_unknown_key_is_a_clean_error():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "problemm=supernet"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["problem=toy"], "problem='toy'; choose closed_form or supernet"),
        (["problem=supernet", "precisions=[fp8]"], "precisions: unknown ['fp8']"),
        (["lerners=[2]"], "did you mean learners"),
        (["learners"], "is not of the form key=value (e.g. problem=supernet)"),
        (["seed=abc"], "invalid value for seed"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
