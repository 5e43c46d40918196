"""benchmarks/gpu_check.py --smoke: the GPU check's every row and field, at tiny sizes on a CPU."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from sgl_betty.config import HYPERGRAD_TYPES
from sgl_betty.evaluation import NetworkCIFAR
from sgl_betty.params import count_parameters_m

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", f"out={out}"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == line  # one JSON line on stdout, the same in the file
    return line


@pytest.mark.slow
def test_the_check_says_what_ran_where(check):
    assert check["smoke"] is True and check["device"] == "cpu"
    assert check["hypergrad_types"] == list(HYPERGRAD_TYPES)
    assert check["errors"] == [] and check["cudnn"] is None
    assert 0 < check["wall_seconds"] <= check["budget_seconds"] == 480
    assert check["within_budget"] is True
    assert check["config"]["search"]["init_channels"] == 4  # the smoke sizes


@pytest.mark.slow
def test_search_rows_time_every_hypergradient_type_and_a_bf16_row(check):
    timed = check["config"]["search"]["timed"]
    rows = check["search"]
    assert [(r["K"], r["hypergrad"], r["precision"]) for r in rows] == [
        (k, t, "fp32") for k in (1, 2) for t in HYPERGRAD_TYPES
    ] + [(2, load_script().BF16_HYPERGRAD, "bf16")]
    for row in rows:
        assert row["error"] is None
        assert len(row["step_seconds"]) == timed and min(row["step_seconds"]) > 0
        assert row["seconds_per_step"] == statistics.median(row["step_seconds"])
        assert row["host_seconds_per_step"] > 0
        assert row["syncs_per_step"] is None  # CUDA's sync debug mode: GPU only
        assert row["host_reads_per_step"] == 0  # a search step never waits for the device
        assert row["peak_allocated_mb"] is None and row["peak_reserved_mb"] is None
        expected = "bfloat16" if row["precision"] == "bf16" else "float32"
        assert row["descent_dtype"] == expected  # the autocast really ran
        # The precision policy: the hypergradient in float32 (the bf16 row is second order).
        assert row["hypergradient_dtype"] == "float32"
        assert row["finite_losses"] is True


@pytest.mark.slow
def test_evaluation_rows_train_the_network_and_read_the_test_pass_once(check):
    size = check["config"]["eval"]
    rows = check["evaluation"]
    assert [row["precision"] for row in rows] == ["fp32", "bf16"]
    params_m = count_parameters_m(
        NetworkCIFAR(size["init_channels"], size["num_classes"], size["layers"], False, "DARTS_V2")
    )
    for row, dtype in zip(rows, ("float32", "bfloat16"), strict=True):
        assert row["error"] is None and row["steps"] == size["steps"]
        assert len(row["step_seconds"]) == size["steps"]
        assert row["images_per_second"] == pytest.approx(
            size["batch_size"] / row["seconds_per_step"]
        )
        assert row["logits_dtype"] == dtype
        assert row["host_reads_per_step"] == 0  # a training step never waits for the device
        assert row["test_pass_host_reads"] == 1 and row["test_pass_syncs"] is None
        assert row["test_images"] == size["test_batches"] * size["batch_size"]
        assert row["params_m"] == pytest.approx(params_m)
        assert 0 < row["train_loss"] < 10


@pytest.mark.slow
def test_end_to_end_runs_the_recipe_search_then_evaluation(check):
    run = check["end_to_end"]
    assert run["error"] is None and run["returncode"] == 0, run.get("stderr_tail")
    assert "cifar100.py --stage all preset=tiny device=cpu" in run["command"]
    assert run["search"]["device"] == "cpu" and run["search"]["steps"] == 2
    assert len(run["search"]["val_acc"]) == 2  # K = 2 learners
    assert run["evaluation"]["device"] == "cpu" and run["evaluation"]["test_images"] == 16
    assert 0 <= run["evaluation"]["test_error"] <= 100


def test_without_a_gpu_the_plain_command_runs_the_smoke_version(monkeypatch, capsys, tmp_path):
    script = load_script()
    ran = {}

    def record(cfg, device, smoke):
        ran.update(cfg=cfg, device=device, smoke=smoke)
        return {"errors": [], "wall_seconds": 0.0}

    monkeypatch.setattr(script, "run", record)
    assert script.main(["search.timed=5", f"out={tmp_path / 'check.json'}"]) == 0
    assert ran["smoke"] is True and str(ran["device"]) == "cpu"
    assert ran["cfg"].search.init_channels == 4 and ran["cfg"].search.timed == 5  # overrides apply
    assert "running the small version (--smoke)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search.nope=1"], "unknown config key 'search.nope'"),
        (["search.timd=5"], "did you mean search.timed"),
        (["search.hypergrad=[exact]"], "unknown hypergradient types ['exact']"),
        (["eval.precisions=[fp16]"], "eval.precisions ['fp16'] unknown"),
        (["smoke"], "is not of the form key=value (e.g. --smoke or search.timed=5)"),
        (["device=cuda"], "no CUDA GPU is visible"),
    ],
)
def test_bad_options_are_usage_errors(argv, message, capsys):
    assert load_script().main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


class FakeEvent:
    """torch.cuda.Event on a CPU: the host's clock, in milliseconds as CUDA reports it."""

    def __init__(self, enable_timing: bool):
        assert enable_timing
        self.at = None

    def record(self):
        self.at = time.perf_counter()

    def elapsed_time(self, end) -> float:
        return (end.at - self.at) * 1000


def test_gpu_timing_and_sync_counting_read_cuda_as_it_reports(monkeypatch):
    script = load_script()
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    row = script.timed_steps(lambda: time.sleep(0.02), 3, cuda)
    assert len(row["step_seconds"]) == 3
    assert all(0.015 < s < 0.5 for s in row["step_seconds"])  # seconds, not milliseconds

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with script.counting_syncs(cuda) as counts:
        for _ in range(3):  # the same warning from the same line: each one counts
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        torch.ones(2).sum().item()  # a CPU tensor's value: no wait for the GPU
    assert counts == {"syncs": 3, "host_reads": 0}
    assert modes == ["warn", 0]  # switched on for the block, then back
