"""Evaluation runs through the recipe's command line: run folder, test error, genotype sources,
--stage all, several seeds and the errors a user can make."""

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
from cifar_archives import write_cifar100

from sgl_betty.data import build_eval_data
from sgl_betty.evaluation import (
    EvalTrainer,
    NetworkCIFAR,
    TrainingSettings,
    init_distributed,
    load_trained_network,
    weights_checksum,
)
from sgl_betty.experiment.genotype_source import resolve_eval_genotype
from sgl_betty.genotypes import PUBLISHED, genotype_to_dict
from sgl_betty.params import count_parameters_m
from sgl_betty.tracking import read_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from recipe import main  # noqa: E402

TINY_EVAL = ["--stage", "eval", "preset=tiny", "device=cpu"]


@torch.no_grad()
def error_percent(network, loader, max_images):
    correct = seen = 0
    for images, labels in loader:
        images, labels = images[: max_images - seen], labels[: max_images - seen]
        logits, _ = network(images)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += labels.numel()
        if seen >= max_images:
            break
    return 100.0 * (1 - correct / seen), seen


def read_summary(folder):
    return json.loads((Path(folder) / "summary.json").read_text())


def write_search_run(folder, genotype_names, val_acc):
    folder.mkdir(parents=True)
    summary = {
        "genotypes": [genotype_to_dict(PUBLISHED[name]) for name in genotype_names],
        "val_acc": val_acc,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_tiny_evaluation_on_synthetic_data_reports_what_its_model_scores(tmp_path, capsys):
    run = tmp_path / "eval"
    assert main("cifar100", TINY_EVAL + ["eval.genotype=DARTS_V2", f"run.dir={run}"]) == 0

    assert {p.name for p in run.iterdir()} == {
        "run.json",
        "config.yaml",
        "metrics.jsonl",
        "model.pt",
        "summary.json",
    }
    summary = read_summary(run)
    assert summary["genotype_source"] == "DARTS_V2"
    assert summary["genotype"] == genotype_to_dict(PUBLISHED["DARTS_V2"])
    assert summary["params_m"] == count_parameters_m(NetworkCIFAR(4, 10, 3, False, "DARTS_V2"))
    assert summary["cpu_hours"] == pytest.approx(summary["wall_seconds"] / 3600)
    assert "gpu_hours" not in summary
    assert summary["seed"] == 2 and summary["world_size"] == 1

    # The test error is the saved network's on the first 2 x 8 test images.
    network, payload = load_trained_network(run / "model.pt")
    assert payload["epoch"] == 1
    assert weights_checksum(network) == summary["weight_checksums"][0]
    data = build_eval_data(
        "synthetic", batch_size=8, image_size=8, synthetic={"train": 32, "val": 32, "test": 32}
    )
    expected, images = error_percent(network, data.test, 16)
    assert summary["test_images"] == images == 16
    assert summary["test_error"] == pytest.approx(expected)
    assert 0 <= summary["test_error"] <= 100

    (row,) = read_jsonl(run / "metrics.jsonl")
    assert row["epoch"] == 0 and row["lr"] == pytest.approx(0.025)
    assert row["test_acc"] == pytest.approx(1 - summary["test_error"] / 100)
    assert math.isfinite(row["train_loss"]) and 0 <= row["train_acc"] <= 1 and row["seconds"] > 0

    out = capsys.readouterr().out
    assert "test error" in out and "params" in out and "cpu-hours" in out


def test_evaluation_on_generated_cifar100_trains_the_auxiliary_head(tmp_path):
    write_cifar100(tmp_path / "data", train_images=40, test_images=12)
    run = tmp_path / "eval"
    overrides = [
        "eval.genotype=PDARTS",
        "data.dataset=cifar100",
        f"data.root={tmp_path / 'data'}",
        "data.local_checksums=true",
        "data.image_size=32",
        "eval.auxiliary=true",
        f"run.dir={run}",
    ]
    assert main("cifar100", TINY_EVAL + overrides) == 0

    summary = read_summary(run)
    network, _ = load_trained_network(run / "model.pt")
    assert network.classifier.out_features == 100
    assert any(name.startswith("auxiliary_head") for name, _ in network.named_parameters())
    # The head is trained but, as in the papers, not counted.
    assert summary["params_m"] == count_parameters_m(NetworkCIFAR(4, 100, 3, True, "PDARTS"))
    data = build_eval_data("cifar100", root=tmp_path / "data", batch_size=8, local_checksums=True)
    expected, images = error_percent(network, data.test, 16)
    assert summary["test_images"] == images == 12
    assert summary["test_error"] == pytest.approx(expected)


def test_search_run_and_learner_select_the_genotype(tmp_path):
    search = write_search_run(tmp_path / "search", ["DARTS_V1", "PDARTS"], [0.3, 0.6])
    run = tmp_path / "eval"
    assert main("cifar100", TINY_EVAL + [f"eval.genotype={search}:0", f"run.dir={run}"]) == 0
    summary = read_summary(run)
    assert summary["genotype"] == genotype_to_dict(PUBLISHED["DARTS_V1"])
    assert summary["genotype_source"] == f"{search}:0"
    assert summary["learner"] == 0 and summary["search_val_acc"] == 0.3

    # Without a learner: the one with the best search validation accuracy.
    choice = resolve_eval_genotype(str(search))
    assert choice.learner == 1 and choice.genotype == PUBLISHED["PDARTS"]


@pytest.mark.parametrize(
    "genotype, message",
    [
        (None, "eval.genotype is not set"),
        ("DARTS_V9", "neither a published genotype nor a search run folder"),
        ("{tmp}/nowhere:0", "does not exist"),
        ("{tmp}/unfinished:0", "has no summary.json"),
        ("{tmp}/search:2", "learner 2 is out of range"),
        ("{tmp}/search:-1", "learner -1 is out of range"),
        ("{tmp}/search:first", "is not a learner number"),
        ("{tmp}/broken:0", "is malformed"),
    ],
)
def test_bad_genotype_sources_exit_with_the_problem_and_its_fix(
    tmp_path, capsys, genotype, message
):
    write_search_run(tmp_path / "search", ["DARTS_V1", "PDARTS"], [0.3, 0.6])
    (tmp_path / "unfinished").mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text(json.dumps({"genotypes": [{"normal": [["conv_9x9", 0]]}]}))
    overrides = [f"run.dir={tmp_path / 'eval'}"]
    if genotype is not None:
        overrides.append("eval.genotype=" + genotype.format(tmp=tmp_path))

    assert main("cifar100", TINY_EVAL + overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


def test_out_of_range_learner_names_the_valid_learners(tmp_path, capsys):
    search = write_search_run(tmp_path / "search", ["DARTS_V1", "PDARTS"], [0.3, 0.6])
    assert main("cifar100", TINY_EVAL + [f"eval.genotype={search}:5"]) == 2
    assert f"{search}:0 .. {search}:1" in capsys.readouterr().err


def test_auxiliary_head_on_images_too_small_for_it_is_a_config_error(capsys):
    assert main("cifar100", TINY_EVAL + ["eval.genotype=DARTS_V2", "eval.auxiliary=true"]) == 2
    err = capsys.readouterr().err
    assert "eval.auxiliary=true" in err and "data.image_size >= 29" in err


def test_several_seeds_report_mean_and_std(tmp_path):
    run = tmp_path / "seeds"
    overrides = ["eval.genotype=DARTS_V2", "seeds=[1,2,3]", f"run.dir={run}"]
    assert main("cifar100", TINY_EVAL + overrides) == 0

    per_seed = [read_summary(run / f"seed-{seed}") for seed in (1, 2, 3)]
    assert [s["seed"] for s in per_seed] == [1, 2, 3]
    # Different seeds train different networks.
    assert len({s["weight_checksums"][0] for s in per_seed}) == 3
    aggregate = read_summary(run)
    errors = [s["test_error"] for s in per_seed]
    assert aggregate["seeds"] == [1, 2, 3]
    assert [r["test_error"] for r in aggregate["runs"]] == errors
    assert aggregate["test_error_mean"] == pytest.approx(sum(errors) / 3)
    assert aggregate["test_error_std"] == pytest.approx(statistics.stdev(errors))
    assert aggregate["params_m"] == pytest.approx(per_seed[0]["params_m"])
    assert aggregate["cpu_hours"] == pytest.approx(sum(s["cpu_hours"] for s in per_seed))
    assert (run / "config.yaml").is_file()


# A quick search: first-order steps, one step, and cells of 4 intermediate nodes (the
# evaluation networks are built for those).
QUICK_SEARCH = [
    "preset=tiny",
    "device=cpu",
    "search.steps=4",
    "search.steps_per_epoch=1",
    "search.val_batches=1",
    "hypergrad.type=first_order",
]


def test_stage_all_searches_then_evaluates_inside_the_search_folder(tmp_path):
    run = tmp_path / "run"
    overrides = QUICK_SEARCH + ["eval.learners=all", f"run.dir={run}"]
    assert main("cifar100", ["--stage", "all"] + overrides) == 0

    search = read_summary(run)
    assert len(search["genotypes"]) == 2
    for learner in (0, 1):
        evaluation = read_summary(run / f"eval-learner{learner}")
        assert evaluation["genotype"] == search["genotypes"][learner]
        assert evaluation["genotype_source"] == f"{run}:{learner}"
        assert 0 <= evaluation["test_error"] <= 100


def test_stage_all_over_seeds_aggregates_the_best_learners_evaluations(tmp_path):
    run = tmp_path / "run"
    assert (
        main("cifar100", ["--stage", "all"] + QUICK_SEARCH + ["seeds=[1,2]", f"run.dir={run}"]) == 0
    )

    aggregate = read_summary(run)
    errors, total_hours = [], 0.0
    for seed, row in zip((1, 2), aggregate["runs"], strict=True):
        search = read_summary(run / f"seed-{seed}")
        assert search["seed"] == seed
        best = max(range(2), key=lambda k: search["val_acc"][k])
        # Only the best learner is evaluated by default.
        assert [p.name for p in (run / f"seed-{seed}").glob("eval-learner*")] == [
            f"eval-learner{best}"
        ]
        evaluation = read_summary(run / f"seed-{seed}" / f"eval-learner{best}")
        assert row["learner"] == best and row["test_error"] == evaluation["test_error"]
        errors.append(evaluation["test_error"])
        total_hours += search["cpu_hours"] + evaluation["cpu_hours"]
    assert aggregate["test_error_mean"] == pytest.approx(statistics.fmean(errors))
    assert aggregate["test_error_std"] == pytest.approx(statistics.stdev(errors))
    assert aggregate["cpu_hours"] == pytest.approx(total_hours)


def test_learning_rate_and_drop_path_follow_the_reference_schedules():
    cosine = TrainingSettings(epochs=600, lr=0.025, drop_path_prob=0.2)
    assert cosine.learning_rate(0) == pytest.approx(0.025)
    assert cosine.learning_rate(300) == pytest.approx(0.0125)
    assert cosine.learning_rate(599) == pytest.approx(
        0.025 * 0.5 * (1 + math.cos(math.pi * 599 / 600))
    )
    assert cosine.drop_path_at(0) == 0 and cosine.drop_path_at(300) == pytest.approx(0.1)
    step = TrainingSettings(
        epochs=250, lr=0.1, lr_schedule="step", lr_gamma=0.97, lr_decay_period=2
    )
    assert [step.learning_rate(e) for e in (0, 1, 2, 5)] == pytest.approx(
        [0.1, 0.1, 0.097, 0.1 * 0.97**2]
    )


def test_trainer_sets_the_epochs_rate_and_drop_path_and_clips_gradients():
    torch.manual_seed(0)
    network = NetworkCIFAR(4, 10, 3, True, "DARTS_V2")
    settings = TrainingSettings(epochs=4, lr=0.1, drop_path_prob=0.2, grad_clip=1e-3)
    trainer = EvalTrainer(network, settings, init_distributed(torch.device("cpu")))
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(images, labels), batch_size=4
    )
    before = [p.detach().clone() for p in network.parameters()]

    result = trainer.train_epoch(2, loader)

    assert network.drop_path_prob == pytest.approx(0.1)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
    assert result.steps == 1 and result.examples == 4
    # One SGD step of a gradient clipped to norm 1e-3 (weight decay adds 3e-4 * |w|): the
    # weights move by at most lr * (1e-3 + 3e-4 * |w|).
    step = torch.cat([(p - b).flatten() for p, b in zip(network.parameters(), before, strict=True)])
    weights = torch.cat([b.flatten() for b in before])
    assert 0 < step.norm() <= 0.05 * (1e-3 + 3e-4 * weights.norm()) + 1e-7
