"""Pictures of a run, drawn from its run folder: cells, architecture weights, training curves.

``draw_run_figures("runs/x")`` writes PNGs into ``runs/x/figures/`` from the files every run
leaves behind (summary.json, genotypes.jsonl, metrics.jsonl), so the pictures of any run folder
can be drawn again at any time:

- ``cell_learner{k}_{normal,reduce}.png``: each learner's discrete cell as a graph;
- ``weights_learner{k}_{param}.png``: softmaxed architecture weights, per edge, over epochs;
- ``curves_learner{k}.png`` (``curves.png`` for an evaluation run): loss and accuracy per step.

Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas and never touch pyplot's
global state, so drawing works in threads, on headless machines and inside a training process.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch
from matplotlib.ticker import MaxNLocator

from sgl_betty.genotypes import PRIMITIVES, num_edges

from .durable import atomic_write_bytes
from .run_folder import read_jsonl
from .tracker import run_name

FIGURE_DPI = 100
# (width, height) in inches; at FIGURE_DPI every PNG of a kind has the same size in pixels.
CELL_FIGSIZE = (8.0, 4.0)
WEIGHTS_FIGSIZE = (14.0, 6.0)
CURVES_FIGSIZE = (12.0, 4.5)
FIGURES_DIR = "figures"

_INPUT_COLOR = "#a6dba0"
_NODE_COLOR = "#92c5de"
_OUTPUT_COLOR = "#fddbc7"
_NODE_RADIUS = 0.32


def input_name(index: int) -> str:
    """Input ``index`` of a cell's node as the DARTS paper writes it: c_{k-2}, c_{k-1}, 0, 1, ..."""
    return ("c_{k-2}", "c_{k-1}")[index] if index < 2 else str(index - 2)


def edge_names(steps: int) -> list[str]:
    """Row labels of an architecture weight table: ``c_{k-2} -> 0``, ``c_{k-1} -> 0``, ..."""
    return [
        f"{input_name(source)} -> {node}" for node in range(steps) for source in range(2 + node)
    ]


def _mathtext(name: str) -> str:
    return f"${name}$" if name.startswith("c_") else name


def _edge_label(name: str) -> str:
    return re.sub(r"c_\{k-[12]\}", lambda match: f"${match.group(0)}$", name)


def save_png(figure: Figure, path: str | Path) -> Path:
    """Render ``figure`` with Agg at FIGURE_DPI and write it atomically: a reader never sees half a PNG."""
    path = Path(path)
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _cell_layout(steps: int) -> dict[str, tuple[float, float]]:
    spacing = 1.6
    positions = {"c_{k-2}": (0.0, 1.2), "c_{k-1}": (0.0, -1.2)}
    for node in range(steps):
        positions[str(node)] = (spacing * (node + 1), 0.75 if node % 2 == 0 else -0.75)
    positions["c_{k}"] = (spacing * (steps + 1), 0.0)
    return positions


# Bends tried for an edge, gentlest first: arc3's rad (0: straight; the sign picks the side).
_BENDS = (0.0, *(sign * rad for rad in (0.15, 0.3, 0.45, 0.6, 0.8, 1.0) for sign in (1, -1)))
# How far an edge keeps from the centre of any node it does not connect, in node radii.
_CLEARANCE = 1.3


def _arc_points(source, target, rad: float, samples: int = 64) -> np.ndarray:
    """Points along the quadratic Bezier that ``arc3,rad=rad`` draws from source to target
    (its control point is the midpoint moved by rad * (dy, -dx))."""
    start, end = np.asarray(source, dtype=float), np.asarray(target, dtype=float)
    dx, dy = end - start
    control = (start + end) / 2 + rad * np.array([dy, -dx])
    t = np.linspace(0.0, 1.0, samples)[:, None]
    return (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end


def _clearance(points: np.ndarray, obstacles) -> float:
    if not obstacles:
        return math.inf
    centres = np.asarray(obstacles, dtype=float)
    return float(np.min(np.linalg.norm(points[:, None, :] - centres[None, :, :], axis=-1)))


def _bend(source, target, obstacles) -> float:
    """The gentlest ``arc3`` rad whose curve passes no node it does not connect (or, if none
    does, the one that keeps farthest from them)."""
    best, best_clearance = 0.0, -math.inf
    for rad in _BENDS:
        clearance = _clearance(_arc_points(source, target, rad), obstacles)
        if clearance >= _CLEARANCE * _NODE_RADIUS:
            return rad
        if clearance > best_clearance:
            best, best_clearance = rad, clearance
    return best


def draw_cell(
    edges: Sequence[Sequence[Any]], concat: Sequence[int], path: str | Path, title: str = ""
) -> Path:
    """One cell of a genotype as a graph: inputs c_{k-2}, c_{k-1}, nodes 0..steps-1, output c_{k}.

    ``edges`` are the genotype's ``(op, input)`` pairs, two per node in node order (as in
    ``Genotype.normal``); ``concat`` lists the inputs whose outputs form c_{k}. An edge is bent
    around every node it does not connect, so that no node seems to have an input it lacks.
    """
    return save_png(cell_figure(edges, concat, title), path)


def _cell_edges(edges, concat) -> list[tuple[str, str, str]]:
    named = [
        (input_name(int(source)), str(index // 2), str(op))
        for index, (op, source) in enumerate(edges)
    ]
    return named + [(input_name(int(index)), "c_{k}", "") for index in concat]


def _node_color(name: str) -> str:
    if name in ("c_{k-2}", "c_{k-1}"):
        return _INPUT_COLOR
    return _OUTPUT_COLOR if name == "c_{k}" else _NODE_COLOR


def cell_figure(edges: Sequence[Sequence[Any]], concat: Sequence[int], title: str = "") -> Figure:
    """The figure ``draw_cell`` saves; each edge's arrow has the gid ``source->target``."""
    if len(edges) % 2:
        raise ValueError(f"a cell has two edges per node; got {len(edges)} edges")
    positions = _cell_layout(len(edges) // 2)
    figure = Figure(figsize=CELL_FIGSIZE, layout="constrained")
    axes = figure.add_subplot()
    axes.set_aspect("equal")
    axes.axis("off")
    if title:
        axes.set_title(title)
    circles = {}
    for name, (x, y) in positions.items():
        circles[name] = Circle(
            (x, y), _NODE_RADIUS, facecolor=_node_color(name), edgecolor="0.3", zorder=3
        )
        axes.add_patch(circles[name])
        axes.text(x, y, _mathtext(name), fontsize=11, ha="center", va="center", zorder=4)

    op_colors = {op: f"C{index % 10}" for index, op in enumerate(PRIMITIVES)}
    extent = np.array(list(positions.values()))
    for source_name, target_name, op in _cell_edges(edges, concat):
        source, target = positions[source_name], positions[target_name]
        obstacles = [p for name, p in positions.items() if name not in (source_name, target_name)]
        rad = _bend(source, target, obstacles)
        extent = np.vstack([extent, _arc_points(source, target, rad)])
        arrow = FancyArrowPatch(
            source,
            target,
            patchA=circles[source_name],
            patchB=circles[target_name],
            arrowstyle="-|>",
            mutation_scale=12,
            connectionstyle=f"arc3,rad={rad}",
            color=op_colors.get(op, "0.45") if op else "0.6",
            linewidth=1.6 if op else 1.0,
            linestyle="-" if op else "--",
            shrinkA=1,
            shrinkB=1,
            zorder=2,
            gid=f"{source_name}->{target_name}",
        )
        axes.add_patch(arrow)
        if op:
            _label_edge(
                axes, _arc_points(source, target, rad, samples=3)[1], op, arrow.get_edgecolor()
            )
    # Bent edges may reach beyond the nodes: the view takes them in.
    low, high = extent.min(axis=0) - 0.6, extent.max(axis=0) + 0.6
    axes.set_xlim(low[0], high[0])
    axes.set_ylim(min(low[1], -1.9), max(high[1], 1.9))
    return figure


def _label_edge(axes, where, op: str, color) -> None:
    axes.text(
        *where,
        op,
        fontsize=7.5,
        ha="center",
        va="center",
        color=color,
        zorder=5,
        bbox={
            "boxstyle": "round,pad=0.15",
            "facecolor": "white",
            "edgecolor": "none",
            "alpha": 0.85,
        },
    )


def _steps_for(rows: int) -> int | None:
    for steps in range(1, 64):
        if num_edges(steps) == rows:
            return steps
        if num_edges(steps) > rows:
            return None
    return None


def draw_weight_heatmaps(
    weights_by_epoch: Sequence[Any],
    path: str | Path,
    epochs: Sequence[int] | None = None,
    title: str = "",
    op_names: Sequence[str] | Sequence[Sequence[str]] | None = None,
) -> Path:
    """Softmaxed architecture weights over epochs as heatmaps.

    ``weights_by_epoch[e]`` is one parameter after epoch ``epochs[e]``: an ``(edges, ops)``
    table (DARTS's alphas) gives one panel per edge, ops against epochs; an ``(edges,)`` vector
    (PC-DARTS's edge betas) gives one panel, edges against epochs. All panels share one colour
    scale, so the panels can be compared with each other. ``op_names``: the table's columns,
    one list for every edge, or a list per edge (P-DARTS's later stages keep different ops on
    different edges); None: PRIMITIVES when the table has a column per op.
    """
    values = np.asarray(weights_by_epoch, dtype=float)
    if values.ndim == 2:
        values = values[:, :, None]
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(
            "weights_by_epoch must be a list over epochs of (edges, ops) tables or (edges,) vectors; "
            f"got shape {values.shape}"
        )
    num_epochs, rows, ops = values.shape
    epochs = list(range(num_epochs)) if epochs is None else list(epochs)
    steps = _steps_for(rows)
    row_names = edge_names(steps) if steps else [f"edge {row}" for row in range(rows)]
    per_edge = _per_edge_op_names(op_names, rows, ops)
    # The data's own range: at the start of a search all weights sit near 1/ops, and a scale
    # from 0 would paint them one colour; the colour bar shows the range.
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    scale = Normalize(vmin=low, vmax=high if high > low else low + 1e-9)

    figure = Figure(figsize=WEIGHTS_FIGSIZE)
    # A fixed layout: constrained layout costs a second per figure with 14 panels.
    # Edges with ops of their own are each labelled: room for the labels between the panels.
    varying = any(names != per_edge[0] for names in per_edge)
    figure.subplots_adjust(
        left=0.08, right=0.9, top=0.88, bottom=0.1, wspace=0.75 if varying else 0.08, hspace=0.35
    )
    if title:
        figure.suptitle(title)
    style = {"aspect": "auto", "interpolation": "nearest", "cmap": "viridis", "norm": scale}
    if ops == 1:
        axes = figure.add_subplot()
        image = axes.imshow(values[:, :, 0].T, **style)
        axes.set_yticks(range(rows), [_edge_label(name) for name in row_names], fontsize=7)
        _epoch_ticks(axes, epochs)
    else:
        columns = min(rows, 7)
        grid = figure.subplots(math.ceil(rows / columns), columns, squeeze=False)
        for row, axes in enumerate(grid.flat):
            if row >= rows:
                axes.axis("off")
                continue
            image = axes.imshow(values[:, row, :].T, **style)
            axes.set_title(_edge_label(row_names[row]), fontsize=8)
            _epoch_ticks(axes, epochs)
            # The same ops on every edge: named once per row of panels.
            if row % columns == 0 or per_edge[row] != per_edge[row - 1]:
                axes.set_yticks(range(ops), per_edge[row], fontsize=6)
            else:
                axes.set_yticks([])
    figure.colorbar(image, cax=figure.add_axes((0.92, 0.15, 0.012, 0.7)), label="softmax weight")
    return save_png(figure, path)


def _per_edge_op_names(op_names, rows: int, ops: int) -> list[list[str]]:
    if op_names is None:
        names = list(PRIMITIVES) if ops == len(PRIMITIVES) else [f"op {op}" for op in range(ops)]
        return [names] * rows
    if op_names and not isinstance(op_names[0], str):
        per_edge = [list(names) for names in op_names]
    else:
        per_edge = [list(op_names)] * rows
    if len(per_edge) != rows or any(len(names) != ops for names in per_edge):
        raise ValueError(
            f"op_names do not fit a table of {rows} edges x {ops} ops: {len(per_edge)} edges, "
            f"{sorted({len(names) for names in per_edge})} names per edge"
        )
    return per_edge


def _epoch_ticks(axes, epochs: list[int]) -> None:
    shown = sorted({0, len(epochs) - 1, (len(epochs) - 1) // 2})
    axes.set_xticks(shown, [str(epochs[index]) for index in shown], fontsize=7)
    axes.set_xlabel("epoch", fontsize=7)


def _curve_groups(rows: list[dict]) -> dict[str, list[str]]:
    """Metric names by learner prefix (``learner0/...``); names without a prefix under ""."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            name = key.rsplit("/", 1)[-1]
            if not (name.endswith("_loss") or name.endswith("_acc") or name in ("loss", "acc")):
                continue
            prefix = key.rsplit("/", 1)[0] if "/" in key else ""
            names = groups.setdefault(prefix, [])
            if key not in names:
                names.append(key)
    return groups


def draw_training_curves(
    rows: Sequence[dict], keys: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Loss curves (left) and accuracy curves (right) of ``keys`` over the rows of metrics.jsonl.

    The x axis is ``step`` when the rows have one (search runs), else ``epoch`` (evaluation runs).
    Missing and null values (a non-finite loss is written as null) leave gaps. Metrics with the
    same values at every point (a stage's loss and its only term) are one curve, labelled with
    every name, instead of curves hiding each other.
    """
    axis_key = "step" if any("step" in row for row in rows) else "epoch"
    figure = Figure(figsize=CURVES_FIGSIZE, layout="constrained")
    if title:
        figure.suptitle(title)
    loss_axes, acc_axes = figure.subplots(1, 2)
    for axes, label in ((loss_axes, "loss"), (acc_axes, "accuracy")):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(axis_key)
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    for points, names in _distinct_curves(rows, keys, axis_key).items():
        xs, ys = zip(*points, strict=True)
        axes = acc_axes if names[0].endswith("acc") else loss_axes
        axes.plot(
            xs, ys, marker="o" if len(xs) < 20 else None, markersize=3, label=" = ".join(names)
        )
    steps = sorted({row[axis_key] for row in rows if isinstance(row.get(axis_key), (int, float))})
    for axes in (loss_axes, acc_axes):
        if len(steps) == 1:
            # One point: the locator would label fractions of a step around it.
            axes.set_xticks(steps)
        if axes.lines:
            axes.legend(fontsize=8)
    return save_png(figure, path)


def _distinct_curves(rows, keys, axis_key: str) -> dict[tuple, list[str]]:
    """The curves of ``keys``, identical ones once: points -> the metric names that have them."""
    curves: dict[tuple, list[str]] = {}
    for key in keys:
        points = [(row.get(axis_key), row.get(key)) for row in rows]
        points = tuple(
            (x, y) for x, y in points if isinstance(x, (int, float)) and isinstance(y, (int, float))
        )
        if points:
            kind = "acc" if key.endswith("acc") else "loss"
            curves.setdefault((kind, points), []).append(key.rsplit("/", 1)[-1])
    return {points: names for (_, points), names in curves.items()}


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"


def _read_json_value(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_json(path: Path) -> dict | None:
    value = _read_json_value(path)
    return value if isinstance(value, dict) else None


def _read_rows(path: Path) -> list[dict]:
    try:
        return read_jsonl(path)
    except (OSError, json.JSONDecodeError):
        return []


def _final_genotypes(summary: dict | None, architecture_rows: list[dict]) -> list[dict]:
    if summary and isinstance(summary.get("genotypes"), list):
        return summary["genotypes"]
    if summary and isinstance(summary.get("genotype"), dict):
        return [summary["genotype"]]
    if architecture_rows:
        return architecture_rows[-1].get("genotypes") or []
    return []


def _stages_of(rows: list[dict]) -> dict[int | None, list[dict]]:
    """genotypes.jsonl rows by P-DARTS stage (rows of other methods have none: one group)."""
    stages: dict[int | None, list[dict]] = {}
    for row in rows:
        stages.setdefault(row.get("stage"), []).append(row)
    return stages


def _stage_ops(records: list, stage: int | None, learner: int, cell: str):
    """Per edge, the op names of a P-DARTS stage's weight columns, from stages.json: the ops the
    stage searched over (recorded at its end), or, for a stage still running, those the stage
    before it kept. None when unknown (other methods: every op, PRIMITIVES)."""
    if stage is None or not isinstance(records, list):
        return None
    by_index = {record.get("index"): record for record in records if isinstance(record, dict)}
    try:
        if stage in by_index:
            return by_index[stage]["learners"][learner]["ops"][cell]
        before = by_index[stage - 1]["learners"][learner]
        dropped = before["dropped"][cell]
        return [
            [op for op in ops if op not in gone]
            for ops, gone in zip(before["ops"][cell], dropped, strict=True)
        ]
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def _weight_figures(run_dir: Path, rows: list[dict], out_dir: Path, name: str) -> list[Path]:
    """Per learner and architecture parameter its weights over epochs; for P-DARTS one picture
    per stage, each edge's rows named by the ops that stage had on it."""
    records = _read_json_value(run_dir / "stages.json")
    stages = _stages_of(rows)
    written = []
    for stage, stage_rows in stages.items():
        epochs = [row.get("epoch", index) for index, row in enumerate(stage_rows)]
        learners = max(len(row.get("weights") or []) for row in stage_rows)
        for learner in range(learners):
            params = {}
            for row in stage_rows:
                weights = row.get("weights") or []
                if learner < len(weights):
                    for param, value in weights[learner].items():
                        params.setdefault(param, []).append(value)
            for param, series in params.items():
                if np.ndim(series[-1]) not in (1, 2) or len({np.shape(v) for v in series}) != 1:
                    continue
                cell = "reduce" if "reduce" in param else "normal"
                in_stage = f"_stage{stage}" if stage is not None else ""
                where = f", stage {stage}" if stage is not None else ""
                written.append(
                    draw_weight_heatmaps(
                        series,
                        out_dir / f"weights_learner{learner}{in_stage}_{_safe_name(param)}.png",
                        epochs=epochs[-len(series) :],
                        title=f"{name}: learner {learner}{where}, softmax({param}) over epochs",
                        op_names=_stage_ops(records, stage, learner, cell),
                    )
                )
    return written


def draw_run_figures(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw every picture a run folder's files allow into ``<run_dir>/figures/``; return the paths.

    Works on a finished run (cells from summary.json) and on one still running (cells from the
    last line of genotypes.jsonl). A search run gets its cells, weights and curves per learner;
    an evaluation run gets its evaluated cell and its curves.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    out_dir = Path(out_dir) if out_dir is not None else run_dir / FIGURES_DIR
    summary = _read_json(run_dir / "summary.json")
    architecture_rows = _read_rows(run_dir / "genotypes.jsonl")
    metric_rows = _read_rows(run_dir / "metrics.jsonl")
    name = run_name(run_dir)
    written: list[Path] = []

    genotypes = _final_genotypes(summary, architecture_rows)
    per_learner = len(genotypes) > 1 or bool(summary and "genotypes" in summary)
    for learner, genotype in enumerate(genotypes):
        tag = f"learner{learner}_" if per_learner else ""
        who = f"learner {learner}, " if per_learner else ""
        for cell in ("normal", "reduce"):
            if cell not in genotype:
                continue
            concat = genotype.get(f"{cell}_concat") or []
            written.append(
                draw_cell(
                    genotype[cell],
                    concat,
                    out_dir / f"cell_{tag}{cell}.png",
                    f"{name}: {who}{cell} cell",
                )
            )

    if architecture_rows:
        written += _weight_figures(run_dir, architecture_rows, out_dir, name)

    for prefix, keys in _curve_groups(metric_rows).items():
        file_name = f"curves_{_safe_name(prefix)}.png" if prefix else "curves.png"
        who = f": {prefix}" if prefix else ""
        written.append(draw_training_curves(metric_rows, keys, out_dir / file_name, f"{name}{who}"))
    return written
