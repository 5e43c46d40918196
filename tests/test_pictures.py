"""Pictures and reports a researcher can trust: no edge through a node, P-DARTS heatmaps per stage
with each edge's op names, duplicate curves merged, readable comparison plots, and seed
statistics that count distinct seeds and every seed of a multi-seed evaluation."""

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.patches import Circle, FancyArrowPatch

from sgl_betty.genotypes import PRIMITIVES
from sgl_betty.tracking import compare_runs, draw_run_figures, draw_training_curves, figures
from sgl_betty.tracking.compare import comparison_figure, markdown_report
from sgl_betty.tracking.figures import cell_figure

# Node 3 takes c_{k-2} and node 0: the straight lines pass through nodes 0, 1 and 2.
CROSSING = [
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("sep_conv_5x5", 1),
    ("dil_conv_3x3", 0),
    ("max_pool_3x3", 2),
    ("skip_connect", 0),
    ("sep_conv_3x3", 2),
]


def curve_points(arrow: FancyArrowPatch) -> np.ndarray:
    """The drawn curve of an arrow, in data coordinates (the arrow head left out)."""
    path = arrow.get_path()
    points = [bezier(np.linspace(0, 1, 50)) for bezier, _ in path.iter_bezier()]
    return np.concatenate(points)


def test_no_edge_of_a_cell_passes_through_a_node():
    figure = cell_figure(CROSSING, [2, 3, 4, 5])
    FigureCanvasAgg(figure).draw()
    (axes,) = figure.axes
    labels = {text.get_position(): text.get_text() for text in axes.texts}
    nodes = {
        labels[circle.center].strip("$"): circle
        for circle in axes.patches
        if isinstance(circle, Circle)
    }
    arrows = [patch for patch in axes.patches if isinstance(patch, FancyArrowPatch)]
    assert len(arrows) == len(CROSSING) + 4
    for arrow in arrows:
        source, target = (name.strip("$") for name in arrow.get_gid().split("->"))
        points = curve_points(arrow)
        for name, circle in nodes.items():
            if name in (source, target):
                continue
            distance = np.linalg.norm(points - np.asarray(circle.center), axis=1).min()
            assert distance > circle.radius, f"{arrow.get_gid()} passes through node {name}"


@pytest.fixture
def captured_figures(monkeypatch):
    drawn = {}
    real_save = figures.save_png

    def save(figure, path):
        FigureCanvasAgg(figure).draw()
        drawn[Path(path).name] = figure
        return real_save(figure, path)

    monkeypatch.setattr(figures, "save_png", save)
    return drawn


def p_darts_folder(folder: Path) -> Path:
    """A P-DARTS run folder of two stages (2 nodes, 5 edges): 8 ops, then 3 per edge."""
    folder.mkdir()
    # In each edge's op order, as drop_weakest_ops keeps them.
    kept = [
        ["max_pool_3x3", "skip_connect", "sep_conv_3x3"],
        ["none", "sep_conv_5x5", "dil_conv_3x3"],
    ]
    per_edge = [kept[edge % 2] for edge in range(5)]
    dropped = [[op for op in PRIMITIVES if op not in ops] for ops in per_edge]
    rng = np.random.default_rng(0)

    def weights(ops):
        table = rng.random((5, ops))
        return (table / table.sum(axis=1, keepdims=True)).tolist()

    rows = [
        {
            "epoch": epoch,
            "stage": stage,
            "weights": [{"alpha_normal": weights(ops), "alpha_reduce": weights(ops)}],
        }
        for epoch, stage, ops in ((0, 0, 8), (1, 0, 8), (2, 1, 3), (3, 1, 3))
    ]
    (folder / "genotypes.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    stages = [
        {
            "index": 0,
            "learners": [
                {
                    "ops": {"normal": [list(PRIMITIVES)] * 5, "reduce": [list(PRIMITIVES)] * 5},
                    "dropped": {"normal": dropped, "reduce": dropped},
                }
            ],
        }
    ]
    (folder / "stages.json").write_text(json.dumps(stages))
    return folder, per_edge


def y_labels(axes) -> list[str]:
    return [label.get_text() for label in axes.get_yticklabels()]


def test_p_darts_heatmaps_show_every_stage_with_its_op_names(tmp_path, captured_figures):
    # Stage 1 is still running: its ops come from what stage 0 kept.
    folder, per_edge = p_darts_folder(tmp_path / "run")
    draw_run_figures(folder)
    for stage in (0, 1):
        for cell in ("normal", "reduce"):
            assert f"weights_learner0_stage{stage}_alpha_{cell}.png" in captured_figures
    first = captured_figures["weights_learner0_stage0_alpha_normal.png"]
    assert y_labels(first.axes[0]) == list(PRIMITIVES)
    second = captured_figures["weights_learner0_stage1_alpha_normal.png"]
    panels = [axes for axes in second.axes if axes.get_title()][:5]
    for edge, axes in enumerate(panels):
        assert y_labels(axes) == per_edge[edge]
    assert "stage 1" in second.texts[0].get_text()


def test_identical_curves_are_one_line_named_by_both(tmp_path, captured_figures):
    rows = [
        {
            "step": step,
            "learner0/arch_val_loss": loss,
            "learner0/arch_loss": loss,
            "learner0/w_loss": 2.0,
        }
        for step, loss in ((1, 1.5), (2, 1.25))
    ]
    draw_training_curves(
        rows,
        ["learner0/arch_val_loss", "learner0/arch_loss", "learner0/w_loss"],
        tmp_path / "c.png",
    )
    loss_axes = captured_figures["c.png"].axes[0]
    legend = [text.get_text() for text in loss_axes.get_legend().get_texts()]
    assert legend == ["arch_val_loss = arch_loss", "w_loss"]
    assert len(loss_axes.lines) == 2


# ---- comparison: folders written here, read by compare_runs -------------------------------------------


def write_run(folder: Path, config: dict, summary: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def search_run(folder, seed, val_acc, weight_lr=0.025, eval_lr=0.025, **extra):
    config = {
        "seed": seed,
        "learners": 2,
        "lam": 0.1,
        "search": {"method": "darts", "weight_lr": weight_lr},
        "hypergrad": {"type": "unrolled"},
        "eval": {"lr": eval_lr},
        **extra,
    }
    summary = {
        "method": "darts",
        "hypergrad": "unrolled",
        "learners": 2,
        "lam": 0.1,
        "seed": seed,
        "genotypes": [{}, {}],
        "val_acc": val_acc,
        "seconds_per_step": 1.0,
        "cpu_hours": 0.1,
    }
    return write_run(folder, config, summary)


def eval_run(folder, source, seed, error, learner=1):
    config = {"seed": seed, "eval": {"genotype": source, "lr": 0.025}}
    summary = {
        "kind": "eval",
        "genotype_source": source,
        "learner": learner,
        "seed": seed,
        "test_error": error,
        "params_m": 3.0,
        "cpu_hours": 0.2,
    }
    return write_run(folder, config, summary)


def test_seed_statistics_count_distinct_seeds_and_every_evaluation_seed(tmp_path):
    first = search_run(tmp_path / "a", seed=1, val_acc=[0.5, 0.7])
    rerun = search_run(tmp_path / "a-again", seed=1, val_acc=[0.5, 0.9])
    other = search_run(tmp_path / "b", seed=2, val_acc=[0.4, 0.6])
    # Learner 1 of search a evaluated over three seeds (a seeds=[...] evaluation).
    evaluations = tmp_path / "a-eval"
    evaluations.mkdir()
    (evaluations / "summary.json").write_text(json.dumps({"kind": "seeds"}))
    errors = {1: 20.0, 2: 22.0, 3: 27.0}
    for seed, error in errors.items():
        eval_run(evaluations / f"seed-{seed}", f"{first}:1", seed, error)

    comparison = compare_runs([first, rerun, other, evaluations])
    (group,) = comparison.groups
    assert group.seeds == [1, 2]
    # Seed 1 is the mean of its two runs, then mean and std over the two seeds.
    seed_1 = statistics.fmean([0.7, 0.9])
    assert group.val_acc()[1] == pytest.approx(
        (statistics.fmean([seed_1, 0.6]), statistics.stdev([seed_1, 0.6]))
    )
    assert any("same seed 1" in warning for warning in comparison.warnings)
    # Every evaluation seed counts: three, not one.
    (search_a,) = [run for run in comparison.runs if run.path == first]
    assert search_a.test_errors() == errors
    assert group.stat("test_error") == pytest.approx(
        (statistics.fmean(errors.values()), statistics.stdev(errors.values()))
    )
    rows = markdown_report(comparison)
    assert "23.00 ± 3.61 (learner 1, 3 seeds)" in rows
    assert "| 2 (1, 2) |" in rows


def test_comparison_plot_has_short_distinct_labels_and_a_legend(tmp_path):
    # Four settings, two of which differ in keys ending alike (search.weight_lr, eval.lr).
    folders = [
        search_run(tmp_path / "base", seed=1, val_acc=[0.5, 0.5]),
        search_run(tmp_path / "fast", seed=1, val_acc=[0.5, 0.5], weight_lr=0.05),
        search_run(tmp_path / "eval-lr", seed=1, val_acc=[0.5, 0.5], eval_lr=0.05),
        # A key only this config has (another schema version): still told apart.
        search_run(tmp_path / "extra", seed=1, val_acc=[0.5, 0.5], future={"option": True}),
    ]
    comparison = compare_runs(folders)
    figure = comparison_figure(comparison)
    FigureCanvasAgg(figure).draw()
    bar_axes = [axes for axes in figure.axes if axes.get_xticklabels()]
    for axes in bar_axes:
        ticks = [label.get_text() for label in axes.get_xticklabels()]
        assert ticks == ["S1", "S2", "S3", "S4"]
    (legend,) = [text.get_text() for subfigure in figure.subfigs for text in subfigure.texts]
    lines = legend.splitlines()
    assert len(lines) == 4 and len(set(line.split(": ", 1)[1] for line in lines)) == 4
    assert any("search.weight_lr=0.05" in line for line in lines)
    assert any("eval.lr=0.05" in line for line in lines)
    assert any("future.option=True" in line for line in lines)
