"""benchmarks/compare.py on real run folders: three tiny searches (two seeds of one setting, one
other hypergradient), evaluations of a published genotype over two seeds, an evaluation nested
in a search folder, and folders that are not runs."""

import json
import shutil
import statistics
import sys
from pathlib import Path

import matplotlib.image
import pytest

from sgl_betty.tracking import compare_runs, markdown_report
from sgl_betty.tracking.compare import compare_figsize
from sgl_betty.tracking.figures import FIGURE_DPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import compare as compare_cli  # noqa: E402

from recipe import main as recipe_main  # noqa: E402

TINY = [
    "preset=tiny",
    "device=cpu",
    "search.steps_per_epoch=1",
    "search.val_batches=1",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, overrides in {
        "fo-seed1": ["hypergrad.type=first_order", "seed=1"],
        "fo-seed2": ["hypergrad.type=first_order", "seed=2"],
        "darts-seed1": ["hypergrad.type=darts", "seed=1"],
    }.items():
        assert recipe_main("cifar100", TINY + overrides + [f"run.dir={root / name}"]) == 0
    published = [
        "--stage",
        "eval",
        "eval.genotype=DARTS_V2",
        "seeds=[1,2]",
        f"run.dir={root / 'v2'}",
    ]
    assert recipe_main("cifar100", published + TINY) == 0
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    (root / "README.txt").write_text("not a folder")
    unfinished = root / "unfinished"
    unfinished.mkdir()
    shutil.copy(root / "fo-seed1" / "config.yaml", unfinished / "config.yaml")
    broken = root / "broken"
    broken.mkdir()
    (broken / "summary.json").write_text("{not json")
    return root


def summary(folder):
    return json.loads((Path(folder) / "summary.json").read_text())


def table(markdown, title):
    """The rows of the Markdown table under the heading starting with ``title``, as dicts."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"## {title}"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    header, _, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def mean_std_text(values, digits=2, scale=1.0):
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


SEARCHES = ["fo-seed1", "fo-seed2", "darts-seed1"]


@pytest.mark.slow
def test_runs_table_has_one_row_per_run(runs):
    comparison = compare_runs(sorted(runs.iterdir()))
    report_rows = table(markdown_report(comparison), "Runs")
    by_name = {row["run"]: row for row in report_rows}
    assert set(by_name) == set(SEARCHES) | {"v2/seed-1", "v2/seed-2"}
    for name in SEARCHES:
        expected = summary(runs / name)
        row = by_name[name]
        assert (row["method"], row["K"], row["hypergrad"], row["lambda"], row["seed"]) == (
            "darts",
            "2",
            expected["hypergrad"],
            "0.1",
            str(expected["seed"]),
        )
        assert row["val acc % per learner"] == " / ".join(
            f"{100 * acc:.2f}" for acc in expected["val_acc"]
        )
        assert row["s/step"] == f"{expected['seconds_per_step']:.3f}"
        assert row["search cost"] == f"{expected['cpu_hours']:.3g} CPU-h"
        assert row["test error %"] == "–"
    for seed in (1, 2):
        evaluation = summary(runs / "v2" / f"seed-{seed}")
        row = by_name[f"v2/seed-{seed}"]
        assert row["method"] == "DARTS_V2" and row["seed"] == str(seed)
        assert row["test error %"] == f"{evaluation['test_error']:.2f}"
        assert row["params (M)"] == f"{evaluation['params_m']:.3g}"


@pytest.mark.slow
def test_settings_table_has_mean_and_std_over_seeds(runs):
    report = markdown_report(compare_runs(sorted(runs.iterdir())))
    rows = table(report, "Settings")
    by_hypergrad = {row["hypergrad"]: row for row in rows}
    assert set(by_hypergrad) == {"first_order", "darts", "–"}

    seeds = [summary(runs / name) for name in ("fo-seed1", "fo-seed2")]
    first_order = by_hypergrad["first_order"]
    assert first_order["seeds"] == "2 (1, 2)"
    assert first_order["val acc % per learner"] == " / ".join(
        mean_std_text([run["val_acc"][k] for run in seeds], scale=100) for k in (0, 1)
    )
    assert first_order["s/step"] == mean_std_text(
        [run["seconds_per_step"] for run in seeds], digits=3
    )
    cost_mean = statistics.fmean(run["cpu_hours"] for run in seeds)
    cost_std = statistics.stdev(run["cpu_hours"] for run in seeds)
    assert first_order["search cost"] == f"{cost_mean:.3g} ± {cost_std:.2g} CPU-h"
    # Both settings differ only in the hypergradient: nothing else to name.
    assert first_order["other"] == "–"

    darts = by_hypergrad["darts"]
    alone = summary(runs / "darts-seed1")
    assert darts["seeds"] == "1 (1)"
    assert darts["val acc % per learner"] == " / ".join(
        f"{100 * acc:.2f}" for acc in alone["val_acc"]
    )

    evaluations = [summary(runs / "v2" / f"seed-{seed}") for seed in (1, 2)]
    published = by_hypergrad["–"]
    assert published["method"] == "DARTS_V2" and published["seeds"] == "2 (1, 2)"
    assert published["test error %"] == mean_std_text([run["test_error"] for run in evaluations])


@pytest.mark.slow
def test_an_evaluation_inside_a_search_folder_gives_its_test_error(runs, tmp_path):
    search = tmp_path / "fo-seed1"
    shutil.copytree(runs / "fo-seed1", search)
    # The folder --stage all writes for learner 1: an evaluation run of that learner's genotype.
    nested = search / "eval-learner1"
    shutil.copytree(runs / "v2" / "seed-1", nested)
    evaluation = summary(nested)
    evaluation.update(genotype_source=f"{search}:1", learner=1, test_error=12.5, params_m=3.25)
    (nested / "summary.json").write_text(json.dumps(evaluation))

    comparison = compare_runs([search])
    (run,) = comparison.runs
    assert run.evaluated_learner == 1 and run.test_error == 12.5 and run.params_m == 3.25
    (row,) = table(markdown_report(comparison), "Runs")
    assert row["test error %"] == "12.50 (learner 1)" and row["params (M)"] == "3.25"


@pytest.mark.slow
def test_cli_writes_report_and_plot_and_skips_what_is_not_a_run(runs, tmp_path, capsys):
    out, plot = tmp_path / "report.md", tmp_path / "compare.png"
    folders = [str(path) for path in sorted(runs.iterdir())]
    assert compare_cli.main(folders + ["--out", str(out), "--plot", str(plot)]) == 0

    captured = capsys.readouterr()
    assert captured.out == out.read_text()
    assert len(table(captured.out, "Runs")) == 5
    warnings = sorted(line for line in captured.err.splitlines() if line.startswith("warning:"))
    assert warnings == [
        f"warning: skipping {runs / 'README.txt'}: not a folder",
        f"warning: skipping {runs / 'broken'}: summary.json cannot be read (Expecting property name "
        "enclosed in double quotes: line 1 column 2 (char 1))",
        f"warning: skipping {runs / 'notes'}: no summary.json: not a run folder",
        f"warning: skipping {runs / 'unfinished'}: no summary.json: its run has not finished "
        "(a run writes it at its end)",
    ]
    # The report lists them too, for whoever reads the file later.
    assert f"- skipping {runs / 'notes'}: no summary.json: not a run folder" in out.read_text()

    image = matplotlib.image.imread(plot)
    width, height = compare_figsize(3)  # first_order (two seeds), darts, DARTS_V2
    assert image.shape[:2] == (round(height * FIGURE_DPI), round(width * FIGURE_DPI))
    assert image[..., :3].std() > 0.02


@pytest.mark.slow
def test_cli_without_any_run_folder_fails_with_a_message(runs, capsys):
    assert compare_cli.main([str(runs / "notes"), str(runs / "unfinished")]) == 2
    assert "none of the given folders is a finished run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_every_summary_states_its_cost_as_device_hours(runs):
    # A search, an evaluation over seeds and one of its seeds, as the recipes wrote them.
    for folder in (runs / "fo-seed1", runs / "v2", runs / "v2" / "seed-1"):
        written = summary(folder)
        assert written["device_type"] == "cpu", folder
        assert written["device_hours"] == written["cpu_hours"] > 0, folder
        assert "gpu_hours" not in written
