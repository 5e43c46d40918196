"""Tiny SGL searches (K = 2, first-order hypergradient) with each DARTS variant, through the
recipe's config loading and ``run_search``, and the cifar100 presets of the paper's rows."""

import json
from pathlib import Path

import pytest

from sgl_betty.experiment.config import ConfigError, load_config
from sgl_betty.experiment.methods import SEARCH_METHODS, build_learners, set_search_progress
from sgl_betty.experiment.search import run_search
from sgl_betty.genotypes import PRIMITIVES, genotype_from_dict, validate_genotype

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(method: str, run_dir: Path, *overrides: str):
    return load_config(
        [
            "preset=tiny",
            f"search.method={method}",
            "hypergrad.type=first_order",
            f"run.dir={run_dir}",
            *overrides,
        ],
        recipe="cifar100",
        config_dir=CONFIG_DIR,
    )


def check_genotypes(run_dir: Path, steps: int, learners: int) -> list:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert len(summary["genotypes"]) == learners
    genotypes = [genotype_from_dict(g) for g in summary["genotypes"]]
    for genotype in genotypes:
        validate_genotype(genotype, steps=steps, primitives=PRIMITIVES)
    per_epoch = [
        json.loads(line) for line in (run_dir / "genotypes.jsonl").read_text().splitlines()
    ]
    assert per_epoch and all(len(row["genotypes"]) == learners for row in per_epoch)
    return genotypes


@pytest.mark.parametrize("method", ["pc_darts", "darts_minus", "p_darts"])
def test_tiny_sgl_search_finishes_with_valid_genotypes(method, tmp_path):
    # P-DARTS stages grow by one cell each here (5/11/17 at full size) to stay tiny.
    extra = ["search.pdarts_add_layers=[0,1,2]"] if method == "p_darts" else []
    cfg = tiny_config(method, tmp_path, *extra)
    summary = run_search(cfg)
    assert summary["method"] == method and summary["learners"] == 2
    genotypes = check_genotypes(tmp_path, cfg.search.steps, 2)
    if method == "darts_minus":
        # The auxiliary skip is outside the op set: only the candidate ops can appear.
        ops = {op for g in genotypes for op, _ in (*g.normal, *g.reduce)}
        assert ops <= set(PRIMITIVES) and "none" not in ops


def test_pc_darts_baseline_runs_alone(tmp_path):
    cfg = tiny_config("pc_darts", tmp_path, "learners=1", "lam=0", "search.pc_partial_channels=2")
    run_search(cfg)
    check_genotypes(tmp_path, cfg.search.steps, 1)


def test_methods_with_a_schedule_register_the_progress_hook():
    assert SEARCH_METHODS["darts_minus"].on_step is set_search_progress
    assert SEARCH_METHODS["p_darts"].on_step is set_search_progress
    assert SEARCH_METHODS["pc_darts"].on_step is None


def test_method_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="pc_partial_channels=3"):
        build_learners(tiny_config("pc_darts", tmp_path, "search.pc_partial_channels=3"), 10, 4)
    with pytest.raises(ConfigError, match="darts_minus_decay"):
        build_learners(tiny_config("darts_minus", tmp_path, "search.darts_minus_decay=step"), 10, 4)


# The paper's rows and their K = 1 baselines, with each original method's hyperparameters:
# (preset, learners, method, epochs, batch, weight lr, weight lr min, arch lr, arch warm-up)
PRESETS = [
    ("sgl_darts", 2, "darts", 50, 64, 0.025, 0.001, 3e-4, 0),
    ("darts", 1, "darts", 50, 64, 0.025, 0.001, 3e-4, 0),
    ("sgl_darts_minus", 2, "darts_minus", 50, 64, 0.025, 0.001, 3e-4, 0),
    ("darts_minus", 1, "darts_minus", 50, 64, 0.025, 0.001, 3e-4, 0),
    ("sgl_pc_darts", 2, "pc_darts", 50, 256, 0.1, 0.001, 6e-4, 15),
    ("pc_darts", 1, "pc_darts", 50, 256, 0.1, 0.001, 6e-4, 15),
    ("sgl_p_darts", 2, "p_darts", 25, 96, 0.025, 0.0, 6e-4, 10),
    ("p_darts", 1, "p_darts", 25, 96, 0.025, 0.0, 6e-4, 10),
]


@pytest.mark.parametrize(
    ("preset", "learners", "method", "epochs", "batch", "lr", "lr_min", "arch_lr", "warmup"),
    PRESETS,
)
def test_cifar100_presets_carry_the_reference_hyperparameters(
    preset, learners, method, epochs, batch, lr, lr_min, arch_lr, warmup
):
    cfg = load_config([f"preset={preset}"], recipe="cifar100", config_dir=CONFIG_DIR)
    search = cfg.search
    lam = 0.1 if learners > 1 else 0.0  # a baseline has no peers to weigh
    assert (cfg.learners, cfg.lam, cfg.hypergrad.type) == (learners, lam, "first_order")
    assert (search.method, search.epochs, search.batch_size) == (method, epochs, batch)
    assert (search.weight_lr, search.weight_lr_min, search.arch_lr) == (lr, lr_min, arch_lr)
    assert search.arch_warmup_epochs == warmup
    assert (search.weight_momentum, search.weight_decay, search.arch_weight_decay) == (
        0.9,
        3e-4,
        1e-3,
    )
    assert (cfg.data.dataset, cfg.data.unlabeled) == ("cifar100", "cifar10")
