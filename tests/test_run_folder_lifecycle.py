"""No run is lost or mixed: a run folder belongs to one run, default names are unique, a resume
accepts only overrides that keep the run's past, and a damaged folder is a clean message."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from sgl_betty.experiment import run_dirs, search
from sgl_betty.experiment.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPE = ROOT / "benchmarks" / "cifar100.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from search_runs import SEARCH, full_and_stopped_search, same_architectures  # noqa: E402
from test_evaluate_resume import crash_at_step  # noqa: E402

from recipe import main  # noqa: E402

EVAL = ["--stage", "eval", "preset=tiny", "eval.genotype=DARTS_V2", "checkpoint.every_steps=1"]


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def steps(folder: Path) -> list[int]:
    return [
        json.loads(line)["step"] for line in (folder / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def searches(tmp_path_factory):
    """A finished tiny search and the same search stopped after step 2 of 4."""
    return full_and_stopped_search(main, tmp_path_factory.mktemp("searches"))


# ---- one run per folder --------------------------------------------------------------------------


@pytest.mark.slow
def test_a_new_run_never_writes_into_a_run_folder(searches, tmp_path, capsys):
    full, _ = searches
    before = folder_bytes(full)
    # A fresh search into it, and an evaluation of its genotype into it.
    assert main("cifar100", [*SEARCH, f"run.dir={full}"]) == 2
    assert f"--resume {full}" in capsys.readouterr().err
    assert main("cifar100", [*EVAL, f"eval.genotype={full}:0", f"run.dir={full}"]) == 2
    err = capsys.readouterr().err
    assert "already holds a search run" in err and "Traceback" not in err
    assert folder_bytes(full) == before

    # A folder with someone's files in it is not a new run's either; an empty one is.
    (tmp_path / "notes.txt").write_text("mine")
    assert main("cifar100", [*SEARCH, f"run.dir={tmp_path}"]) == 2
    assert "notes.txt" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main("cifar100", [*SEARCH, f"run.dir={empty}"]) == 0
    assert steps(empty) == [1, 2, 3, 4]


@pytest.mark.slow
def test_default_names_carry_the_seed_and_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run_dirs, "_stamp", lambda: "20250101-120000")  # the same second
    assert main("cifar100", [*SEARCH, "seed=7"]) == 0
    assert main("cifar100", [*SEARCH, "seed=7"]) == 0
    assert main("cifar100", [*EVAL, "seed=3"]) == 0
    names = sorted(path.name for path in (tmp_path / "runs").iterdir())
    assert names == [
        "20250101-120000-darts-first_order-k2-seed7",
        "20250101-120000-darts-first_order-k2-seed7-2",
        "20250101-120000-eval-synthetic-DARTS_V2-seed3",
    ]
    for name in names[:2]:
        assert steps(tmp_path / "runs" / name) == [1, 2, 3, 4]  # not 1, 2, 3, 4, 1, 2, 3, 4


@pytest.mark.slow
def test_a_failed_start_leaves_no_folder_behind(tmp_path, capsys):
    run = tmp_path / "run"
    assert main("cifar100", [*SEARCH, "search.init_channels=100000", f"run.dir={run}"]) == 2
    assert "out of memory while building the search networks" in capsys.readouterr().err
    assert not run.exists()
    assert main("cifar100", [*SEARCH, f"run.dir={run}"]) == 0  # the same command, fixed


# ---- resume with overrides ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "override", ["learners=3", "search.init_channels=8", "search.epochs=3", "lam=0.5", "seed=3"]
)
def test_resume_refuses_overrides_that_change_the_past(searches, override, capsys):
    _, stopped = searches
    before = folder_bytes(stopped)
    assert main("cifar100", ["--resume", str(stopped), override]) == 2
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert f"--resume: {key}=" in err and "Start a new run" in err and "Traceback" not in err
    assert folder_bytes(stopped) == before  # refused before any work


@pytest.mark.slow
def test_resume_applies_overrides_that_keep_the_past(searches, tmp_path):
    full, stopped = searches
    folder = shutil.copytree(stopped, tmp_path / "run")
    overrides = ["run.log_every=2", "checkpoint.every_steps=0", "device=cpu", "run.threads=1"]
    assert main("cifar100", ["--resume", str(folder), *overrides]) == 0
    assert same_architectures(folder, full)
    assert steps(folder) == [1, 2, 4]  # every step before the stop, every second one after
    assert "log_every: 2" in (folder / "config.yaml").read_text()


@pytest.mark.slow
def test_more_epochs_on_resume_only_where_the_schedule_allows(tmp_path, monkeypatch, capsys):
    step_schedule = [*EVAL, "eval.lr_schedule=step", "eval.drop_path_prob=0", "eval.epochs=2"]
    full = tmp_path / "full"
    assert main("cifar100", [*step_schedule, "eval.epochs=3", f"run.dir={full}"]) == 0
    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_at_step(patch, 3)  # in the second of two epochs
        with pytest.raises(RuntimeError, match="simulated crash"):
            main("cifar100", [*step_schedule, f"run.dir={run}"])
    assert main("cifar100", ["--stage", "eval", "--resume", str(run), "eval.epochs=3"]) == 0
    left = torch.load(run / "model.pt", weights_only=True)["state_dict"]
    right = torch.load(full / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(left[name], right[name]) for name in left)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3

    cosine = tmp_path / "cosine"
    with monkeypatch.context() as patch:
        crash_at_step(patch, 3)
        with pytest.raises(RuntimeError):
            main("cifar100", [*EVAL, "eval.epochs=2", f"run.dir={cosine}"])
    capsys.readouterr()
    assert main("cifar100", ["--stage", "eval", "--resume", str(cosine), "eval.epochs=3"]) == 2
    assert "cosine learning rate" in capsys.readouterr().err


# ---- damaged folders -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:200]), "truncated"),
        (lambda path: path.write_bytes(b"\x00garbage" * 50), "truncated"),
        (lambda path: torch.save([1, 2, 3], path), "not a checkpoint"),
    ],
    ids=["truncated", "garbage", "not-a-dict"],
)
def test_a_damaged_checkpoint_names_the_file_and_the_fix(searches, tmp_path, damage, named, capsys):
    _, stopped = searches
    folder = shutil.copytree(stopped, tmp_path / "run")
    damage(folder / "checkpoint.pt")
    assert main("cifar100", ["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "checkpoint.pt") in err and named in err and "without --resume" in err


@pytest.mark.slow
def test_a_broken_config_names_the_file_and_the_line(searches, tmp_path, capsys):
    _, stopped = searches
    folder = shutil.copytree(stopped, tmp_path / "run")
    (folder / "config.yaml").write_text("learners: 2\nsearch: {epochs: 2\n")
    assert main("cifar100", ["--resume", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder / "config.yaml") in err and "not valid YAML" in err and "line" in err
    (folder / "config.yaml").write_text("learners: two\n")
    assert main("cifar100", ["--resume", str(folder)]) == 2
    assert "learners" in capsys.readouterr().err


# ---- interruptions: stale files, Ctrl-C, progress ------------------------------------------------


@pytest.mark.slow
def test_resume_removes_temporary_files_a_killed_run_left(searches, tmp_path):
    full, stopped = searches
    folder = shutil.copytree(stopped, tmp_path / "run")
    for name in (".checkpoint.pt.k3j2h1g0.tmp", "figures/.cell_learner0_normal.png.a1b2c3d4.tmp"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"half a file")
    assert main("cifar100", ["--resume", str(folder)]) == 0
    assert not list(folder.rglob("*.tmp"))
    assert same_architectures(folder, full)


class RecordingBar:
    created: list = []

    def __init__(self, *args, **kwargs):
        self.kwargs, self.updates = kwargs, []
        RecordingBar.created.append(self)

    def update(self, n=1):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


@pytest.mark.slow
def test_the_progress_bar_of_a_resumed_search_counts_this_session_only(
    searches, tmp_path, monkeypatch
):
    _, stopped = searches
    folder = shutil.copytree(stopped, tmp_path / "run")
    RecordingBar.created = []
    monkeypatch.setattr(search, "tqdm", RecordingBar)
    assert main("cifar100", ["--resume", str(folder)]) == 0
    (bar,) = RecordingBar.created
    # It starts at the checkpoint's step 2 of 4 and then moves one step at a time: its rate
    # and ETA are those of the steps this session takes.
    assert (bar.kwargs["initial"], bar.kwargs["total"]) == (2, 4)
    assert bar.updates == [1, 1]


SLOW_STEPS = f"""
import runpy, sys, time
sys.path.insert(0, {str(ROOT / "benchmarks")!r})
from sgl_betty.engine.sgl_engine import SGLEngine
step = SGLEngine.step

def slow_step(self):
    step(self)
    print("step done", flush=True)
    time.sleep(4)

SGLEngine.step = slow_step
sys.argv = [{str(RECIPE)!r}, *sys.argv[1:]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_ctrl_c_is_acknowledged_at_once_and_stops_after_the_step(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_STEPS, *SEARCH, f"run.dir={tmp_path / 'run'}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    stderr_lines = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(process.stderr), daemon=True)
    reader.start()
    assert process.stdout.readline().startswith("torch threads")
    assert process.stdout.readline() == "step done\n"  # now inside the 4 s after step 1
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    deadline = sent + 2.0
    while time.monotonic() < deadline and not any(
        "SIGINT received" in line for line in stderr_lines
    ):
        time.sleep(0.05)
    acknowledged = time.monotonic() - sent
    assert any("stops after the current step" in line for line in stderr_lines), stderr_lines
    assert acknowledged < 2.0 and process.poll() is None  # before the step ended
    assert process.wait(timeout=120) == 130
    reader.join(timeout=10)
    assert any(f"--resume {tmp_path / 'run'}" in line for line in stderr_lines)


def test_a_run_config_records_the_run_kind_and_the_claim_is_exclusive(tmp_path):
    cfg = load_config([*SEARCH, f"run.dir={tmp_path / 'x'}"], config_dir=CONFIGS)

    class OneProcess:
        is_main = True

        def gather(self, value):
            return [value]

    run_dirs.claim_for_run(cfg, "search", OneProcess(), tmp_path / "unused")
    assert json.loads((tmp_path / "x" / "run.json").read_text())["kind"] == "search"
    with pytest.raises(run_dirs.RunFolderError, match="already holds a search run"):
        run_dirs.claim_for_run(cfg, "eval", OneProcess(), tmp_path / "unused")
