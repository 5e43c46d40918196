"""The search-method registry: a taken name is refused unless replacing it is meant, and a method
that searches in stages needs nothing of the search loop but its own ``MethodStaging``."""

import json
from pathlib import Path

import pytest

from sgl_betty.experiment.config import load_config
from sgl_betty.experiment.methods import (
    SEARCH_METHODS,
    MethodStaging,
    SearchStage,
    StageEnd,
    darts_modules,
    register_method,
    search_stages,
)
from sgl_betty.experiment.search import run_search
from sgl_betty.tracking.run_folder import read_jsonl

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture
def registry():
    """The registry, restored after the test."""
    saved = dict(SEARCH_METHODS)
    yield SEARCH_METHODS
    SEARCH_METHODS.clear()
    SEARCH_METHODS.update(saved)


def test_a_taken_name_is_refused_naming_the_method_and_the_way_out(registry):
    darts = registry["darts"]
    with pytest.raises(
        ValueError, match=r"'darts' is registered already .*darts_modules.*replace=True"
    ):
        register_method("darts")(lambda cfg, num_classes, with_v: None)
    assert registry["darts"] is darts  # untouched


def test_replace_true_replaces_a_method(registry):
    def other(cfg, num_classes, with_v):
        return darts_modules(cfg, num_classes, with_v)

    register_method("darts", replace=True)(other)
    assert registry["darts"].build is other


class TwoHalves(MethodStaging):
    """A toy staged method: DARTS over the search's epochs in two halves, each half's learners
    fresh, the second told what the first recorded."""

    staged = True

    def __init__(self):
        self.states = []  # what each stage's learners were built from

    def __call__(self, cfg, num_classes, with_v):
        return darts_modules(cfg, num_classes, with_v)

    def stages(self, cfg):
        half = cfg.search.epochs // 2
        return [
            SearchStage(0, half, 0, first_epoch=0, is_last=False, plan="first half"),
            SearchStage(1, cfg.search.epochs - half, 0, first_epoch=half, plan="second half"),
        ]

    def stage_modules(self, cfg, num_classes, stage, state):
        # Every stage's learners from the builder; the state only travels.
        self.states.append(state)
        return None

    def end_stage(self, stage, learners, val_acc, steps, architecture_file, agree):
        record = {"index": stage.index, "plan": stage.plan, "steps": steps, "val_acc": val_acc}
        record["architecture"] = architecture_file
        next_state = None if stage.is_last else agree([f"after {stage.plan}"] * len(learners))
        return StageEnd(record, next_state)


@pytest.mark.slow
def test_a_staged_method_of_its_own_runs_through_the_search_loop(registry, tmp_path):
    method = TwoHalves()
    register_method("two_halves")(method)
    cfg = load_config(
        [
            "preset=tiny",
            "search.method=two_halves",
            "hypergrad.type=first_order",
            "search.epochs=2",
            "search.steps_per_epoch=1",
            f"run.dir={tmp_path}",
        ],
        recipe="cifar100",
        config_dir=CONFIG_DIR,
    )
    assert [stage.plan for stage in search_stages(cfg)] == ["first half", "second half"]
    summary = run_search(cfg)

    stages = json.loads((tmp_path / "stages.json").read_text())
    assert [(s["index"], s["plan"], s["steps"]) for s in stages] == [
        (0, "first half", 1),
        (1, "second half", 1),
    ]
    assert summary["stages"] == stages
    assert method.states == [[None] * cfg.learners, ["after first half"] * cfg.learners]
    assert all((tmp_path / f"architecture-stage{i}.pt").is_file() for i in (0, 1))
    assert [row["stage"] for row in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1]
    assert [row["stage"] for row in read_jsonl(tmp_path / "genotypes.jsonl")] == [0, 1]
