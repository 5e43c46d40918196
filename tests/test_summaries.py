"""summary.json through its one reader: typed summaries, the cost as device_hours on a
device_type, and the summaries of earlier versions (gpu_hours / cpu_hours) read the same."""

import json

import pytest

from sgl_betty.experiment.checkpoints import folder_kind
from sgl_betty.experiment.config import ConfigError
from sgl_betty.experiment.genotype_source import genotype_of_learner
from sgl_betty.genotypes import PUBLISHED, genotype_to_dict
from sgl_betty.tracking import compare_runs, markdown_report
from sgl_betty.tracking.summaries import (
    EvalSummary,
    SearchSummary,
    SeedsSummary,
    SummaryError,
    SummaryMissing,
    SummaryUnreadable,
    read_summary,
)

GENOTYPE = genotype_to_dict(PUBLISHED["DARTS_V2"])


def write_run(folder, summary: dict, config: str = "seed: 1\n"):
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "config.yaml").write_text(config)
    return folder


def earlier_search(**cost) -> dict:
    """A search summary as versions before device_hours wrote it."""
    return {
        "method": "darts",
        "hypergrad": "first_order",
        "learners": 2,
        "lam": 0.1,
        "seed": 1,
        "genotypes": [GENOTYPE, GENOTYPE],
        "val_acc": [0.25, 0.5],
        "seconds_per_step": 0.5,
        **cost,
    }


@pytest.mark.parametrize(("key", "device_type"), [("gpu_hours", "cuda"), ("cpu_hours", "cpu")])
def test_an_earlier_cost_key_reads_as_device_hours(tmp_path, key, device_type):
    run = write_run(tmp_path / "run", earlier_search(**{key: 0.75}))
    summary = read_summary(run)
    assert isinstance(summary, SearchSummary)
    assert (summary.device_hours, summary.device_type) == (0.75, device_type)
    assert summary.val_acc == [0.25, 0.5] and summary.learners == 2
    # Written back: the new keys and, for earlier readers, the earlier one.
    data = summary.to_dict()
    assert data["device_hours"] == data[key] == 0.75 and data["device_type"] == device_type
    other = "cpu_hours" if key == "gpu_hours" else "gpu_hours"
    assert other not in data and "kind" not in data


def test_the_comparison_reports_the_cost_of_an_earlier_gpu_summary(tmp_path):
    run = write_run(tmp_path / "run", earlier_search(gpu_hours=0.125))
    report = markdown_report(compare_runs([run]))
    assert "0.125 GPU-h" in report


def test_every_kind_reads_as_its_own_dataclass(tmp_path):
    evaluation = {"kind": "eval", "test_error": 3.5, "params_m": 0.2, "cpu_hours": 0.5, "x": 1}
    seeds = {"kind": "seeds", "seeds": [1, 2], "test_error_mean": 3.0, "device_hours": 1.0}
    seeds["device_type"] = "cuda"
    read_eval = read_summary(write_run(tmp_path / "eval", evaluation))
    read_seeds = read_summary(write_run(tmp_path / "seeds", seeds))
    assert isinstance(read_eval, EvalSummary) and isinstance(read_seeds, SeedsSummary)
    assert (read_eval.test_error, read_eval.device_hours, read_eval.device_type) == (
        3.5,
        0.5,
        "cpu",
    )
    assert read_eval.extra == {"x": 1}  # keys this version does not know survive a rewrite
    assert read_eval.to_dict()["x"] == 1 and read_eval.to_dict()["kind"] == "eval"
    assert (read_seeds.seeds, read_seeds.device_type) == ([1, 2], "cuda")
    assert read_seeds.to_dict()["gpu_hours"] == 1.0
    assert folder_kind(tmp_path / "eval") == "eval"


@pytest.mark.parametrize(
    ("content", "error", "reason"),
    [
        (None, SummaryMissing, "no summary.json"),
        ("{not json", SummaryUnreadable, "cannot be read"),
        ("[1, 2]", SummaryError, "not a JSON object"),
        ('{"kind": "other"}', SummaryError, "neither a search's"),
    ],
)
def test_what_is_no_summary_is_named(tmp_path, content, error, reason):
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    with pytest.raises(error, match=reason) as raised:
        read_summary(tmp_path)
    assert str(tmp_path) in str(raised.value)


def test_an_earlier_search_is_still_a_genotype_source(tmp_path):
    run = write_run(tmp_path / "search", earlier_search(cpu_hours=0.1))
    choice = genotype_of_learner(run)
    assert (choice.learner, choice.search_val_acc) == (1, 0.5)  # the best learner
    evaluation = write_run(tmp_path / "eval", {"kind": "eval", "cpu_hours": 0.1})
    with pytest.raises(ConfigError, match="not the summary of a search run"):
        genotype_of_learner(evaluation)
