"""Interrupted searches resume to the same result; a NaN stops the search cleanly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgl_betty.experiment.config import load_config
from sgl_betty.experiment.methods import SEARCH_METHODS, darts_modules, register_method
from sgl_betty.experiment.search import CHECKPOINT, run_search
from sgl_betty.problems import NonFiniteError, NonFiniteWatch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPE = ROOT / "benchmarks" / "cifar100.py"
TINY = [
    "preset=tiny",
    "hypergrad.type=unrolled",
    "search.epochs=2",
    "search.steps_per_epoch=2",
    "checkpoint.every_steps=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def recipe(*args, **kwargs):
    return subprocess.run(
        [sys.executable, str(RECIPE), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
        **kwargs,
    )


def start(run_dir):
    return subprocess.Popen(
        [sys.executable, str(RECIPE), *TINY, f"run.dir={run_dir}"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(path: Path, lines: int, process, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= lines:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise TimeoutError(path)


def same_architectures(a: Path, b: Path) -> bool:
    left = torch.load(a / "architecture.pt", weights_only=True)
    right = torch.load(b / "architecture.pt", weights_only=True)
    return left.keys() == right.keys() and all(
        torch.equal(left[k][name], right[k][name]) for k in left for name in left[k]
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    result = recipe(*TINY, f"run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    return run_dir


def test_kill_9_then_resume_reproduces_the_uninterrupted_run(uninterrupted, tmp_path):
    process = start(tmp_path)
    wait_for_lines(tmp_path / "metrics.jsonl", 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "summary.json").exists()

    result = recipe("--resume", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert same_architectures(uninterrupted, tmp_path)
    # Lines written after the last checkpoint were dropped, not duplicated.
    full = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in resumed] == [row["step"] for row in full]
    assert [row["learner1/w_train_loss"] for row in resumed] == [
        row["learner1/w_train_loss"] for row in full
    ]
    assert len((tmp_path / "genotypes.jsonl").read_text().splitlines()) == 2


def test_sigterm_checkpoints_and_says_how_to_resume(uninterrupted, tmp_path):
    process = start(tmp_path)
    wait_for_lines(tmp_path / "metrics.jsonl", 1, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    if process.returncode == 0:
        pytest.skip("the search finished before the signal arrived")
    assert process.returncode == 130
    assert f"--resume {tmp_path}" in stderr and "Traceback" not in stderr
    result = recipe("--resume", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert same_architectures(uninterrupted, tmp_path)


def test_resume_without_a_checkpoint_is_a_clean_error(tmp_path):
    result = recipe("--resume", str(tmp_path))
    assert result.returncode == 2
    assert "config.yaml" in result.stderr and "Traceback" not in result.stderr


def poison_v_weights(from_progress):
    def poison(learners, progress):  # progress = steps done / steps of the search
        if progress >= from_progress:
            with torch.no_grad():
                next(learners[0].v_net.parameters()).fill_(float("nan"))

    return poison


@pytest.fixture
def poisoned_method():
    """A search method whose learner 0's V weights turn NaN from ``from_progress`` on."""
    names = []

    def register(from_progress):
        name = f"darts_poisoned_for_test_{len(names)}"
        register_method(name, on_step=poison_v_weights(from_progress))(darts_modules)
        names.append(name)
        return name

    yield register
    for name in names:
        SEARCH_METHODS.pop(name)


def test_nan_stops_with_learner_stage_step_and_keeps_last_good_checkpoint(
    poisoned_method, tmp_path
):
    cfg = load_config(
        [
            *TINY,
            "hypergrad.type=first_order",
            # NaN before the fourth of 4 steps
            f"search.method={poisoned_method(0.75)}",
            f"run.dir={tmp_path}",
        ],
        config_dir=CONFIGS,
    )
    with pytest.raises(NonFiniteError) as error:
        run_search(cfg)
    message = str(error.value)
    assert "v stage of learner 0" in message and "step 4" in message
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert state["engine"]["global_step"] == 3
    weights = state["engine"]["problems"]["v_0"]["module"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())


def test_a_nan_found_steps_later_names_its_step_and_no_checkpoint_holds_it(
    poisoned_method, tmp_path
):
    """The steps do not look for NaN (that would wait for the GPU); the flag is read on logging
    steps and before checkpoints. A NaN from step 4, read at the checkpoint of step 6: the error
    names step 4, and the checkpoint of step 6 is not written."""
    cfg = load_config(
        [
            "preset=tiny",
            "hypergrad.type=first_order",
            "search.epochs=1",
            "search.batch_size=4",  # 8 steps over the 32 images
            "search.steps_per_epoch=8",
            "checkpoint.every_steps=3",
            "run.log_every=100",
            # progress 3/8 before the fourth step
            f"search.method={poisoned_method(3 / 8)}",
            f"run.dir={tmp_path}",
        ],
        config_dir=CONFIGS,
    )
    with pytest.raises(NonFiniteError) as error:
        run_search(cfg)
    message = str(error.value)
    assert "loss (nan) in the v stage of learner 0 at step 4" in message
    assert "read at step 6" in message
    state = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert state["engine"]["global_step"] == 3
    assert not (tmp_path / "metrics.jsonl").exists()  # no row was logged from the NaN steps


def test_the_watch_names_the_first_non_finite_value_of_the_first_bad_step():
    watch = NonFiniteWatch()
    values = {  # step: (v loss, w loss, arch hypergradient norm or None while it waits)
        1: (1.0, 2.0, None),
        2: (1.0, float("inf"), 3.0),
        3: (float("nan"), float("nan"), float("nan")),
    }
    for step, (v, w, arch) in values.items():
        watch.observe("v", 0, "loss", torch.tensor(v))
        watch.observe("w", 1, "loss", torch.tensor(w))
        if arch is not None:
            watch.observe("arch", 0, "hypergradient", torch.tensor(arch))
        watch.end_step(step)
        if step == 1:
            watch.check(now=step)  # all finite: no error
    with pytest.raises(NonFiniteError) as error:
        watch.check(now=3)
    assert "non-finite loss (inf) in the w stage of learner 1 at step 2, found" in str(error.value)
