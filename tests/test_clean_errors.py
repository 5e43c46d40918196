"""Every failure a user can cause is one paragraph and a non-zero exit, never a traceback; values
that would fail late are refused before any work; the recipes choose torch's threads."""

import errno
import json
import pathlib
import pickle
import sys
from pathlib import Path

import pytest
import torch
from cifar_archives import write_cifar10, write_cifar100
from test_imagenet import write_image_folder

from sgl_betty.data import write_local_checksums
from sgl_betty.experiment import resources

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import compare as compare_cli  # noqa: E402

from recipe import main  # noqa: E402

SEARCH = ["preset=tiny", "hypergrad.type=first_order"]
EVAL = ["--stage", "eval", "preset=tiny", "eval.genotype=DARTS_V2"]


def run_recipe(argv, capsys, recipe="cifar100"):
    code = main(recipe, argv)
    return code, capsys.readouterr()


def assert_one_paragraph(code, captured, *named):
    assert code == 2, captured
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for text in named:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        ([*EVAL, "eval.drop_path_prob=1.5"], "eval.drop_path_prob=1.5"),
        ([*SEARCH, "search.arch_beta1=2"], "search.arch_beta1=2.0"),
        ([*SEARCH, "search.arch_beta2=1"], "search.arch_beta2=1.0"),
        ([*SEARCH, "search.weight_momentum=5"], "search.weight_momentum=5.0"),
        ([*EVAL, "eval.momentum=-0.1"], "eval.momentum=-0.1"),
        ([*SEARCH, "lam=inf"], "lam=inf"),
        ([*SEARCH, "search.weight_lr=nan"], "search.weight_lr=nan"),
        ([*SEARCH, "search.arch_warmup_epochs=1"], "search.arch_warmup_epochs=1"),
        ([*SEARCH, "search.method=p_darts", "search.arch_warmup_epochs=2"], "P-DARTS stage"),
        ([*SEARCH, "search.pdarts_skip_dropout=[0.1,1.2,0.3]"], "pdarts_skip_dropout[1]=1.2"),
        ([*SEARCH, "search.batch_size=64"], "search.batch_size=64 is larger than D_tr"),
        ([*EVAL, "eval.batch_size=100"], "eval.batch_size=100"),
        ([*SEARCH, "data.image_size=2"], "data.image_size=2"),
        ([*SEARCH, "search.init_channels=100000"], "out of memory"),
    ],
)
def test_values_that_would_fail_late_are_refused_before_work(argv, named, tmp_path, capsys):
    run = tmp_path / "run"
    assert_one_paragraph(*run_recipe([*argv, f"run.dir={run}"], capsys), named)
    assert not run.exists()


def test_lambda_with_one_learner_is_a_warning(tmp_path, capsys):
    code, captured = run_recipe(
        [*SEARCH, "learners=1", "lam=0.5", f"run.dir={tmp_path / 'r'}"], capsys
    )
    assert code == 0
    assert "warning: lam=0.5 has no effect with learners=1" in captured.err
    assert "ConfigWarning" not in captured.err  # a message, not a code location


def test_run_dir_that_is_a_file_or_read_only(tmp_path, capsys, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert_one_paragraph(*run_recipe([*SEARCH, f"run.dir={afile}"], capsys), "is a file")
    assert_one_paragraph(
        *run_recipe([*SEARCH, f"run.dir={afile / 'run'}"], capsys), "cannot create the run folder"
    )

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", read_only)
    assert_one_paragraph(
        *run_recipe([*SEARCH, f"run.dir={tmp_path / 'new'}"], capsys), "Read-only file system"
    )


@pytest.mark.slow
def test_a_full_disk_during_the_run_is_a_message(tmp_path, capsys, monkeypatch):
    import os

    real_replace = os.replace

    def full_disk(source, target):
        if str(target).endswith("checkpoint.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    code, captured = run_recipe([*SEARCH, f"run.dir={tmp_path / 'run'}"], capsys)
    assert_one_paragraph(code, captured, "checkpoint.pt", "No space left on device")


@pytest.mark.slow
def test_compare_out_under_a_file_is_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    assert main("cifar100", [*SEARCH, f"run.dir={run}"]) == 0
    capsys.readouterr()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert compare_cli.main([str(run), "--out", str(afile / "report.md")]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {afile / 'report.md'}" in err and "Traceback" not in err
    assert compare_cli.main([str(run), "--plot", str(afile / "compare.png")]) == 2
    assert "error: cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_in_an_image_folder_is_named(workers, tmp_path, capsys):
    root = write_image_folder(tmp_path / "imagenet")
    broken = root / "train" / "dog" / "1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    argv = [
        "preset=tiny",
        "eval.genotype=DARTS_V2",
        f"eval.imagenet.root={root}",
        "eval.steps_per_epoch=3",  # every training image
        f"data.num_workers={workers}",
        f"run.dir={tmp_path / 'run'}",
    ]
    code, captured = run_recipe(argv, capsys, recipe="imagenet")
    assert_one_paragraph(code, captured, str(broken), "cannot be decoded")


def cifar_run(root, *extra):
    return [
        *SEARCH,
        "data.dataset=cifar100",
        "data.unlabeled=cifar10",
        f"data.root={root}",
        "data.image_size=8",
        *extra,
    ]


@pytest.mark.slow
def test_a_bad_checksum_manifest_is_a_message(tmp_path, capsys):
    write_cifar10(tmp_path)
    folder = write_cifar100(tmp_path).folder
    (folder / "sgl_betty_local_checksums.json").write_text("{broken")
    argv = cifar_run(tmp_path, "data.local_checksums=true", f"run.dir={tmp_path / 'run'}")
    assert_one_paragraph(*run_recipe(argv, capsys), "sgl_betty_local_checksums.json")
    (folder / "sgl_betty_local_checksums.json").write_text('{"md5": ["not", "a", "mapping"]}')
    assert_one_paragraph(*run_recipe(argv, capsys), "no 'md5' mapping")


@pytest.mark.slow
def test_a_truncated_cifar_pickle_is_a_message(tmp_path, capsys):
    write_cifar10(tmp_path)
    folder = write_cifar100(tmp_path).folder
    data = (folder / "train").read_bytes()
    (folder / "train").write_bytes(data[: len(data) // 2])
    # Truncated after its manifest was written: torchvision's md5 check, against the manifest...
    argv = cifar_run(tmp_path, "data.local_checksums=true", f"run.dir={tmp_path / 'run'}")
    assert_one_paragraph(*run_recipe(argv, capsys), "md5")
    # ... and with a manifest that matches the damage, the pickle itself.
    write_local_checksums(folder, generator="test")
    assert_one_paragraph(*run_recipe(argv, capsys), "cannot be read as CIFAR batches")
    with pytest.raises((pickle.UnpicklingError, EOFError)):  # the file is really damaged
        pickle.loads(data[: len(data) // 2])


def test_the_search_data_too_small_for_a_batch_is_a_message(tmp_path, capsys):
    write_cifar10(tmp_path)
    write_cifar100(tmp_path, train_images=12)  # D_tr: 6 images
    argv = cifar_run(tmp_path, "data.local_checksums=true", f"run.dir={tmp_path / 'run'}")
    assert_one_paragraph(*run_recipe(argv, capsys), "search.batch_size=8", "fewer than one batch")


# ---- threads -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "workers", "processes", "expected"),
    [(2, 0, 1, 1), (16, 0, 1, 15), (16, 2, 1, 13), (16, 2, 4, 1), (1, 4, 1, 1)],
)
def test_threads_from_the_cores_and_workers(cores, workers, processes, expected, monkeypatch):
    for variable in resources.THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    monkeypatch.setattr(resources, "available_cores", lambda: cores)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    threads, line = resources.choose_threads(None, workers)
    assert threads == expected and chosen == [expected]
    assert f"torch threads: {expected} ({cores} cores" in line


def test_the_user_chooses_threads(monkeypatch):
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    assert resources.choose_threads(3, 0)[0] == 3 and chosen == [3]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads, line = resources.choose_threads(None, 0)
    assert chosen == [3] and line.endswith("(OMP_NUM_THREADS=1)")


@pytest.mark.slow
def test_the_recipe_prints_its_threads(tmp_path, capsys):
    code, captured = run_recipe([*SEARCH, "run.threads=1", f"run.dir={tmp_path / 'r'}"], capsys)
    assert code == 0 and "torch threads: 1 (run.threads)" in captured.out
    assert torch.get_num_threads() == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["machine"].endswith("1 threads")
