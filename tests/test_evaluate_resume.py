"""Interrupted evaluation runs resume to the weights and test error of an uninterrupted run:
kill -9 between checkpoints, SIGTERM, a crash, several seeds; and the errors of --resume."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sgl_betty.evaluation import EvalTrainer
from sgl_betty.experiment.evaluate import CHECKPOINT
from sgl_betty.tracking import RunFolder, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipe import main  # noqa: E402

RECIPE = ROOT / "benchmarks" / "cifar100.py"
# 2 epochs of 2 steps; drop path and cutout on, so that the RNG streams matter.
TINY = [
    "--stage",
    "eval",
    "preset=tiny",
    "device=cpu",
    "eval.genotype=DARTS_V2",
    "eval.epochs=2",
    "eval.steps_per_epoch=2",
    "checkpoint.every_steps=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The recipe in a subprocess, with two hooks: PAUSE_AFTER_LINE seconds of sleep after each
# metrics row (time for the test to kill it there), and a SIGTERM the process sends itself after
# optimizer step SIGTERM_AFTER_STEP (a signal at a known step, without a race; under torchrun
# only the process of rank SIGNAL_RANK).
DRIVER = f"""
import os, runpy, signal, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from sgl_betty.evaluation.trainer import EvalTrainer
from sgl_betty.tracking import RunFolder

line_pause = float(os.environ.get("PAUSE_AFTER_LINE", 0))
sigterm_step = int(os.environ.get("SIGTERM_AFTER_STEP", 0))
append, step = RunFolder.append_jsonl, EvalTrainer.train_step
steps = []

def slow_append(self, name, obj):
    append(self, name, obj)
    time.sleep(line_pause)

def signalling_step(self, *args):
    step(self, *args)
    steps.append(1)
    rank = os.environ.get("RANK", "0")
    if len(steps) == sigterm_step and rank == os.environ.get("SIGNAL_RANK", rank):
        os.kill(os.getpid(), signal.SIGTERM)

RunFolder.append_jsonl, EvalTrainer.train_step = slow_append, signalling_step
sys.argv = [{str(RECIPE)!r}, *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start(run_dir, *extra, **hooks):
    env = {**ENV, **{key.upper(): str(value) for key, value in hooks.items()}}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, *TINY, *extra, f"run.dir={run_dir}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(condition, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise TimeoutError


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def same_weights(a: Path, b: Path) -> bool:
    left = torch.load(a / "model.pt", weights_only=True)["state_dict"]
    right = torch.load(b / "model.pt", weights_only=True)["state_dict"]
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def rows(folder: Path) -> list[dict]:
    # Everything but the timing.
    return [
        {k: v for k, v in row.items() if k != "seconds"}
        for row in read_jsonl(folder / "metrics.jsonl")
    ]


def assert_same_run(resumed: Path, full: Path) -> None:
    assert same_weights(resumed, full)
    assert summary(resumed)["test_error"] == summary(full)["test_error"]
    assert summary(resumed)["weight_checksums"] == summary(full)["weight_checksums"]
    # Rows written after the last checkpoint were dropped, not duplicated; the resumed epoch's
    # training loss includes the steps taken before the interruption.
    assert rows(resumed) == rows(full)
    # Finished runs keep no checkpoint.
    assert not (resumed / CHECKPOINT).exists()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full")
    assert main("cifar100", TINY + [f"run.dir={run_dir}"]) == 0
    return run_dir


@pytest.mark.slow
def test_kill_9_between_checkpoints_then_resume_reproduces_the_run(uninterrupted, tmp_path):
    process = start(tmp_path, pause_after_line=60)
    # The first epoch's row is written; its last checkpoint was taken after step 1 of 2.
    wait_for(lambda: lines(tmp_path / "metrics.jsonl") >= 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "summary.json").exists()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["position"]["epoch"], state["position"]["step"]) == (0, 1)

    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_sigterm_checkpoints_exits_130_and_says_how_to_resume(uninterrupted, tmp_path, capsys):
    # Checkpoints at epoch ends only: the stop writes its own, inside the second epoch.
    process = start(tmp_path, "checkpoint.every_steps=0", sigterm_after_step=3)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert f"--stage eval --resume {tmp_path}" in stderr and "Traceback" not in stderr
    assert not (tmp_path / "summary.json").exists()
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["position"]["epoch"], state["position"]["step"]) == (1, 1)

    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, uninterrupted)

    # Resuming again: nothing to do, nothing changed.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    capsys.readouterr()
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert "nothing to resume" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def crash_at_step(monkeypatch, step):
    calls = []
    original = EvalTrainer.train_step

    def train_step(self, *args):
        calls.append(1)
        if len(calls) == step:
            raise RuntimeError("simulated crash")
        original(self, *args)

    monkeypatch.setattr(EvalTrainer, "train_step", train_step)


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash_step, position",
    [(3, (1, 0)), (4, (1, 1))],
    ids=["at-an-epoch-start", "mid-epoch"],
)
def test_crash_then_resume_reproduces_the_run(
    uninterrupted, tmp_path, monkeypatch, crash_step, position
):
    with monkeypatch.context() as patch:
        crash_at_step(patch, crash_step)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", TINY + [f"run.dir={tmp_path}"])
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["position"]["epoch"], state["position"]["step"]) == position
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_crash_after_the_last_epoch_resumes_to_the_summary(uninterrupted, tmp_path, monkeypatch):
    write_json = RunFolder.write_json

    def fail_on_summary(self, name, obj):
        if name == "summary.json":
            raise RuntimeError("simulated crash")
        write_json(self, name, obj)

    with monkeypatch.context() as patch:
        patch.setattr(RunFolder, "write_json", fail_on_summary)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", TINY + [f"run.dir={tmp_path}"])
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert (state["position"]["epoch"], state["position"]["step"]) == (2, 0)
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert_same_run(tmp_path, uninterrupted)


@pytest.mark.slow
def test_crash_with_loader_workers_replays_their_augmentations(tmp_path, monkeypatch):
    # Workers draw their seeds when the epoch's iterator starts: the resumed epoch starts it
    # from the RNG state of the epoch's start, replays the steps taken, then continues.
    workers = TINY + ["data.num_workers=2"]
    full = tmp_path / "full"
    assert main("cifar100", workers + [f"run.dir={full}"]) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at_step(patch, 4)
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", workers + [f"run.dir={run}"])
    assert main("cifar100", ["--stage", "eval", "--resume", str(run)]) == 0
    assert_same_run(run, full)


@pytest.mark.slow
def test_several_seeds_resume_the_stopped_seed_and_skip_the_finished(tmp_path, monkeypatch):
    seeds = ["seeds=[1,2]"]
    full = tmp_path / "full"
    assert main("cifar100", TINY + seeds + [f"run.dir={full}"]) == 0

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at_step(patch, 4 + 3)  # seed 1 ran 4 steps; seed 2 crashes in its second epoch
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", TINY + seeds + [f"run.dir={run}"])
    finished = (run / "seed-1" / "summary.json").read_bytes()
    assert (run / "seed-2" / CHECKPOINT).is_file() and not (run / "summary.json").exists()

    assert main("cifar100", ["--stage", "eval", "--resume", str(run)]) == 0
    assert (run / "seed-1" / "summary.json").read_bytes() == finished
    for seed in (1, 2):
        assert_same_run(run / f"seed-{seed}", full / f"seed-{seed}")
    assert summary(run)["test_error_mean"] == summary(full)["test_error_mean"]


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_again(uninterrupted, tmp_path, capsys):
    # What a run leaves before its first checkpoint: run.json, config.yaml, maybe metrics rows.
    for name in ("config.yaml", "run.json"):
        (tmp_path / name).write_text((uninterrupted / name).read_text())
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 0, "partial": true}\n')
    (tmp_path / ".checkpoint.pt.abcd1234.tmp").write_bytes(b"left by kill -9")
    config = (tmp_path / "config.yaml").read_text().replace(str(uninterrupted), str(tmp_path))
    (tmp_path / "config.yaml").write_text(config)
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 0
    assert "starts again from its first step" in capsys.readouterr().err
    assert_same_run(tmp_path, uninterrupted)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_resume_errors_name_the_fix(uninterrupted, tmp_path, capsys):
    # Not a run folder at all.
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path / "nowhere")]) == 2
    assert "config.yaml" in capsys.readouterr().err

    # An evaluation run resumed as a search, and a search checkpoint resumed as an evaluation.
    assert main("cifar100", ["--resume", str(uninterrupted)]) == 2
    assert f"--stage eval --resume {uninterrupted}" in capsys.readouterr().err
    for name in ("config.yaml", "run.json"):
        (tmp_path / name).write_text((uninterrupted / name).read_text())
    torch.save({"engine": {}}, tmp_path / CHECKPOINT)
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path)]) == 2
    assert "--stage search --resume" in capsys.readouterr().err

    assert main("cifar100", ["--stage", "all", "--resume", str(tmp_path)]) == 2
    assert "not --stage all" in capsys.readouterr().err


def torchrun(*args, cwd, **hooks):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**ENV, **{key.upper(): str(value) for key, value in hooks.items()}}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(port), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_two_processes_stop_together_and_resume_to_the_same_weights(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    ddp = [*TINY, "eval.drop_path_prob=0.3", "checkpoint.every_steps=0"]
    full = torchrun(str(RECIPE), *ddp, "run.dir=full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    # Only rank 1 gets the signal, after step 3; both stop there (they vote after every step).
    stopped = torchrun(
        str(driver), *ddp, "run.dir=run", cwd=tmp_path, sigterm_after_step=3, signal_rank=1
    )
    assert stopped.returncode != 0
    assert stopped.stderr.count("resume with: --stage eval --resume run") == 2
    state = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert (state["position"]["epoch"], state["position"]["step"]) == (1, 1)
    assert len(state["rng"]) == len(state["position"]["epoch_rng"]) == 2

    # A different number of processes cannot replay the shards.
    assert main("cifar100", ["--stage", "eval", "--resume", str(tmp_path / "run")]) == 2

    resumed = torchrun(str(RECIPE), "--stage", "eval", "--resume", "run", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(tmp_path / "run", tmp_path / "full")
