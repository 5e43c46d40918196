"""The main job end to end: `benchmarks/cifar100.py` on synthetic data and on CIFAR archives in
torchvision's on-disk format, and what its run folder holds."""

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from cifar_archives import write_cifar10, write_cifar100

from sgl_betty.genotypes import genotype_from_dict, validate_genotype

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from recipe import main  # noqa: E402

FAST = ["preset=tiny", "hypergrad.type=first_order"]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_run_folder(run_dir: Path, learners: int, epochs: int, steps: int, steps_per_epoch: int):
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["learners"] == learners and config["run"]["dir"] == str(run_dir)

    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [row["step"] for row in metrics] == list(range(1, steps + 1))
    for k in range(learners):
        for key in (
            "w_train_loss",
            "w_train_acc",
            "arch_val_loss",
            "arch_val_acc",
            "arch_hypergrad_norm",
            "w_lr",
            "arch_lr",
        ):
            assert f"learner{k}/{key}" in metrics[-1]
        if learners > 1:
            assert (
                f"learner{k}/v_train_loss" in metrics[-1]
                and f"learner{k}/w_pseudo_loss" in metrics[-1]
            )
    assert all(row["seconds_per_step"] > 0 for row in metrics)

    genotypes = read_jsonl(run_dir / "genotypes.jsonl")
    assert [row["epoch"] for row in genotypes] == list(range(epochs))
    assert [row["step"] for row in genotypes] == [steps_per_epoch * (e + 1) for e in range(epochs)]
    steps_in_cell = config["search"]["steps"]
    for row in genotypes:
        assert len(row["genotypes"]) == learners
        for genotype in row["genotypes"]:
            validate_genotype(genotype_from_dict(genotype), steps=steps_in_cell)

    architectures = torch.load(run_dir / "architecture.pt", weights_only=True)
    assert sorted(architectures) == list(range(learners))
    assert set(architectures[0]) == {"alpha_normal", "alpha_reduce"}

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["genotypes"] == genotypes[-1]["genotypes"]
    assert len(summary["val_acc"]) == learners and all(0 <= acc <= 1 for acc in summary["val_acc"])
    assert summary["wall_seconds"] > 0 and summary["device"] == "cpu" and summary["cpu_hours"] > 0
    return config, summary


def test_tiny_search_on_synthetic_data(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main("cifar100", [*FAST, "search.epochs=2", f"run.dir={run_dir}"]) == 0
    check_run_folder(run_dir, learners=2, epochs=2, steps=4, steps_per_epoch=2)


@pytest.mark.parametrize(
    ("recipe", "dataset", "unlabeled", "classes"),
    [("cifar100", "cifar100", "cifar10", 100), ("cifar10", "cifar10", "cifar100", 10)],
)
def test_tiny_search_on_cifar_archives(recipe, dataset, unlabeled, classes, tmp_path):
    data_root = tmp_path / "data"
    write_cifar10(data_root)
    write_cifar100(data_root)
    run_dir = tmp_path / "run"
    overrides = [
        *FAST,
        f"data.dataset={dataset}",
        f"data.unlabeled={unlabeled}",
        f"data.root={data_root}",
        "data.local_checksums=true",
        "data.image_size=8",
        f"run.dir={run_dir}",
    ]
    assert main(recipe, overrides) == 0
    config, _ = check_run_folder(run_dir, learners=2, epochs=1, steps=2, steps_per_epoch=2)
    assert config["data"]["dataset"] == dataset and config["data"]["unlabeled"] == unlabeled


def test_overrides_change_what_runs(tmp_path):
    run_dir = tmp_path / "run"
    assert (
        main(
            "cifar100",
            [
                "preset=tiny",
                "learners=3",
                "lam=0.5",
                "hypergrad.type=darts",
                "hypergrad.darts_alpha=0.02",
                f"run.dir={run_dir}",
            ],
        )
        == 0
    )
    config, summary = check_run_folder(run_dir, learners=3, epochs=1, steps=2, steps_per_epoch=2)
    assert (
        config["lam"] == 0.5
        and config["hypergrad"]["type"] == "darts"
        and config["hypergrad"]["darts_alpha"] == 0.02
    )
    assert summary["learners"] == 3 and summary["hypergrad"] == "darts"
    assert summary["precision_policy"] == {
        "descent": "parameter dtype",
        "hypergradient": "parameter dtype, TF32 off, autocast off",
    }


def test_single_learner_is_the_plain_method(tmp_path):
    run_dir = tmp_path / "run"
    assert main("cifar100", [*FAST, "learners=1", f"run.dir={run_dir}"]) == 0
    check_run_folder(run_dir, learners=1, epochs=1, steps=2, steps_per_epoch=2)


def test_missing_dataset_names_the_folder_and_the_fix(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert (
        main(
            "cifar100",
            [
                *FAST,
                "data.dataset=cifar100",
                "data.unlabeled=cifar10",
                f"data.root={missing}",
                f"run.dir={tmp_path / 'run'}",
            ],
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(missing) in err and "download" in err and "Traceback" not in err
