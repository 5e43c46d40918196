"""Comparing run folders side by side: one row per run, and mean and std over seeds per setting.

``compare_runs(["runs/a", "runs/b", ...])`` reads each folder's summary.json and config.yaml:

- a search run gives a row (method, K, hypergradient, lambda, seed, final search validation
  accuracy per learner, search cost, seconds per step); evaluation runs of its genotypes (nested
  ``eval-learner<k>/`` folders, or evaluation folders given alongside whose ``eval.genotype``
  names it) add the test error and the parameter count;
- an evaluation run of anything else (a published genotype, a search not given) gives a row of
  its own;
- a folder of several seeds (``kind: seeds``) gives the rows of its ``seed-<s>/`` folders.

Runs of the same setting, the whole resolved config except the seed and what does not change
the result (run folder, tracking, device, ...), form one group with the mean and the sample
standard deviation (n - 1, as the paper's tables) of every number. Folders that are not run
folders, or cannot be read, are skipped with a warning that says why.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from sgl_betty.errors import ConfigError
from sgl_betty.yaml_configs import read_yaml_config, reject_interpolations

from .figures import save_png
from .tracker import run_name

# Config keys (dotted, or prefixes ending in ".") that do not make a different setting.
NOT_SETTING = (
    "seed",
    "seeds",
    "preset",
    "device",
    "run.",
    "tracking.",
    "checkpoint.",
    "data.root",
    "data.download",
    "data.num_workers",
    "eval.genotype",
)
# Columns the tables show by name; other keys that differ between settings go to "other".
SHOWN_KEYS = ("search.method", "learners", "hypergrad.type", "lam")
MISSING = "–"


class NotARunFolder(Exception):
    """A folder that cannot be compared; the message says why."""


@dataclass
class RunRecord:
    """One run of the comparison: a search (with its evaluations, if any) or an evaluation."""

    path: Path
    kind: str  # "search" or "eval"
    config: dict[str, Any]
    summary: dict[str, Any]
    method: str
    learners: int | None
    hypergrad: str | None
    lam: float | None
    seed: int | None
    val_acc: list[float] = field(default_factory=list)
    seconds_per_step: float | None = None
    search_hours: float | None = None
    cost_unit: str = "cpu"
    # learner -> the evaluation runs of that learner's genotype (one per evaluation seed)
    evaluations: dict[int, list[RunRecord]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return run_name(self.path)

    @property
    def evaluated_learner(self) -> int | None:
        """The evaluation reported: of the learner with the best search validation accuracy
        (the paper's protocol) if it was evaluated, else of the first evaluated learner."""
        if not self.evaluations:
            return None
        if self.val_acc:
            best = max(range(len(self.val_acc)), key=lambda k: (self.val_acc[k], -k))
            if best in self.evaluations:
                return best
        return min(self.evaluations)

    def _evaluations(self) -> list[dict]:
        if self.kind == "eval":
            return [self.summary]
        learner = self.evaluated_learner
        return [] if learner is None else [run.summary for run in self.evaluations[learner]]

    def test_errors(self) -> dict[Any, float]:
        """The reported learner's test error per evaluation seed (a seed evaluated twice: the
        mean of its runs)."""
        by_seed: dict[Any, list[float]] = {}
        for index, evaluation in enumerate(self._evaluations()):
            error = _number(evaluation.get("test_error"))
            if error is not None:
                seed = evaluation.get("seed")
                by_seed.setdefault(index if seed is None else seed, []).append(error)
        return {seed: statistics.fmean(errors) for seed, errors in by_seed.items()}

    @property
    def test_error(self) -> float | None:
        """The mean test error over the reported learner's evaluation seeds."""
        errors = list(self.test_errors().values())
        return statistics.fmean(errors) if errors else None

    @property
    def params_m(self) -> float | None:
        sizes = [_number(evaluation.get("params_m")) for evaluation in self._evaluations()]
        sizes = [size for size in sizes if size is not None]
        return statistics.fmean(sizes) if sizes else None

    def setting(self) -> dict[str, Any]:
        """The flattened config that defines this run's setting (everything but the seed)."""
        flat = flatten(self.config)
        kept = {key: value for key, value in flat.items() if not _ignored(key)}
        if self.kind == "eval":
            # An evaluation's setting is what it trains: the genotype and the eval/data sections.
            kept = {key: value for key, value in kept.items() if key.startswith(("eval.", "data."))}
            kept["genotype"] = self.method
        return kept


@dataclass
class SettingGroup:
    """The runs of one setting (they differ only in the seed) and their statistics.

    Statistics count seeds, not runs: runs of the same seed (a rerun, a copied folder) give
    one value, their mean. A test error counts every evaluation seed of every search seed.
    """

    setting: dict[str, Any]
    runs: list[RunRecord]

    @property
    def first(self) -> RunRecord:
        return self.runs[0]

    @property
    def seeds(self) -> list[int | None]:
        """The distinct seeds, in run order."""
        return list(dict.fromkeys(run.seed for run in self.runs))

    def repeated_seeds(self) -> dict[Any, list[RunRecord]]:
        by_seed: dict[Any, list[RunRecord]] = {}
        for run in self.runs:
            by_seed.setdefault(run.seed, []).append(run)
        return {seed: runs for seed, runs in by_seed.items() if len(runs) > 1}

    def _per_seed(self, values: Iterable[tuple[Any, float]]) -> list[float]:
        by_seed: dict[Any, list[float]] = {}
        for seed, value in values:
            by_seed.setdefault(seed, []).append(value)
        return [statistics.fmean(items) for items in by_seed.values()]

    def val_acc(self) -> list[tuple[float, float | None]]:
        """Mean and std over seeds of each learner's final search validation accuracy."""
        learners = max((len(run.val_acc) for run in self.runs), default=0)
        return [
            mean_std(
                self._per_seed(
                    (run.seed, run.val_acc[k]) for run in self.runs if k < len(run.val_acc)
                )
            )
            for k in range(learners)
        ]

    def mean(self, attribute: str) -> float | None:
        stat = self.stat(attribute)
        return None if stat is None else stat[0]

    def stat(self, attribute: str) -> tuple[float, float | None] | None:
        """Mean and std over the seeds that have ``attribute``; None when none has it."""
        if attribute == "test_error":
            values = self._per_seed(
                ((run.seed, seed), error)
                for run in self.runs
                for seed, error in run.test_errors().items()
            )
        else:
            values = self._per_seed(
                (run.seed, getattr(run, attribute))
                for run in self.runs
                if getattr(run, attribute) is not None
            )
        return mean_std(values) if values else None

    def samples(self, attribute: str) -> int:
        if attribute == "test_error":
            return len({(run.seed, seed) for run in self.runs for seed in run.test_errors()})
        return len({run.seed for run in self.runs if getattr(run, attribute) is not None})


@dataclass
class Comparison:
    runs: list[RunRecord]
    groups: list[SettingGroup]
    warnings: list[str]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _ignored(key: str) -> bool:
    return any(key.startswith(item) if item.endswith(".") else key == item for item in NOT_SETTING)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists become tuples so that values compare and hash."""
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    if isinstance(node, list):
        return {prefix[:-1]: tuple(_hashable(item) for item in node)}
    return {prefix[:-1]: node}


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((key, _hashable(item)) for key, item in value.items()))
    return value


def mean_std(values: Iterable[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the std is None for a single value."""
    values = [float(value) for value in values]
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _read_summary(folder: Path) -> dict:
    if not folder.is_dir():
        raise NotARunFolder("not a folder")
    path = folder / "summary.json"
    if not path.is_file():
        started = (folder / "config.yaml").is_file() or (folder / "metrics.jsonl").is_file()
        raise NotARunFolder(
            "no summary.json: its run has not finished (a run writes it at its end)"
            if started
            else "no summary.json: not a run folder"
        )
    try:
        summary = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise NotARunFolder(f"summary.json cannot be read ({error})") from None
    if not isinstance(summary, dict):
        raise NotARunFolder("summary.json is not a JSON object")
    return summary


def _read_config(folder: Path) -> dict:
    path = folder / "config.yaml"
    if not path.is_file():
        raise NotARunFolder("no config.yaml: not a run folder written by sgl-betty")
    try:
        config = read_yaml_config(path, "run config")
        # Never resolved: an interpolation could read this machine's environment.
        reject_interpolations(config, path)
    except ConfigError as error:
        raise NotARunFolder(str(error)) from None
    return OmegaConf.to_container(config, resolve=False)


def _summary_kind(summary: dict) -> str:
    if summary.get("kind") in ("eval", "seeds"):
        return summary["kind"]
    if isinstance(summary.get("genotypes"), list) and "val_acc" in summary:
        return "search"
    raise NotARunFolder("summary.json is neither a search's, an evaluation's nor a seeds' summary")


def _cost(summary: dict) -> tuple[float | None, str]:
    if "gpu_hours" in summary:
        return _number(summary["gpu_hours"]), "gpu"
    return _number(summary.get("cpu_hours")), "cpu"


def read_run(folder: str | Path) -> RunRecord:
    """One search or evaluation run folder; raises ``NotARunFolder`` saying why not."""
    folder = Path(folder)
    summary = _read_summary(folder)
    kind = _summary_kind(summary)
    if kind == "seeds":
        raise NotARunFolder("a folder of several seeds; read its seed-<s>/ folders")
    config = _read_config(folder)
    hours, unit = _cost(summary)
    if kind == "search":
        return RunRecord(
            path=folder,
            kind="search",
            config=config,
            summary=summary,
            method=str(summary.get("method") or (config.get("search") or {}).get("method", "?")),
            learners=int(summary.get("learners", len(summary["genotypes"]))),
            hypergrad=summary.get("hypergrad"),
            lam=_number(summary.get("lam")),
            seed=summary.get("seed", config.get("seed")),
            val_acc=[float(value) for value in summary.get("val_acc") or []],
            seconds_per_step=_number(summary.get("seconds_per_step")),
            search_hours=hours,
            cost_unit=unit,
        )
    return RunRecord(
        path=folder,
        kind="eval",
        config=config,
        summary=summary,
        method=str(summary.get("genotype_source", (config.get("eval") or {}).get("genotype", "?"))),
        learners=None,
        hypergrad=None,
        lam=None,
        seed=summary.get("seed", config.get("seed")),
        search_hours=None,
        cost_unit=unit,
    )


def _source_folder_and_learner(source: str) -> tuple[Path, int | None] | None:
    """``runs/x:1`` -> (runs/x, 1); ``runs/x`` -> (runs/x, None); a published name -> None."""
    folder, _, learner = source.rpartition(":")
    if folder and learner.isdigit():
        return Path(folder), int(learner)
    if Path(source).is_dir():
        return Path(source), None
    return None


def _expand(paths: Sequence[str | Path], warnings: list[str]) -> list[Path]:
    """The run folders named by ``paths``: seeds folders open into their seed-<s>/ folders,
    search folders bring their nested evaluation folders."""
    folders: list[Path] = []
    for path in paths:
        path = Path(path)
        try:
            summary = _read_summary(path)
            kind = _summary_kind(summary)
        except NotARunFolder as error:
            warnings.append(f"skipping {path}: {error}")
            continue
        if kind == "seeds":
            seed_folders = sorted(
                (child for child in path.glob("seed-*") if child.is_dir()),
                key=lambda p: _seed_order(p.name),
            )
            if not seed_folders:
                warnings.append(f"skipping {path}: a seeds summary without seed-<s>/ folders")
            folders += _expand(seed_folders, warnings)
            continue
        folders.append(path)
        if kind == "search":
            folders += sorted(
                child for child in path.glob("eval-learner*") if (child / "summary.json").is_file()
            )
    return folders


def _seed_order(name: str) -> tuple[int, str]:
    suffix = name.removeprefix("seed-")
    return (int(suffix), name) if suffix.isdigit() else (1 << 30, name)


def load_runs(paths: Sequence[str | Path]) -> tuple[list[RunRecord], list[str]]:
    """The runs of ``paths`` (evaluations attached to their searches) and the warnings."""
    warnings: list[str] = []
    records: list[RunRecord] = []
    seen: set[Path] = set()
    for folder in _expand(paths, warnings):
        resolved = folder.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            records.append(read_run(folder))
        except NotARunFolder as error:
            warnings.append(f"skipping {folder}: {error}")

    searches = {record.path.resolve(): record for record in records if record.kind == "search"}
    runs = []
    for record in records:
        if record.kind == "eval":
            target = _search_of(record, searches)
            if target is not None:
                search, learner = target
                search.evaluations.setdefault(learner, []).append(record)
                continue
        runs.append(record)
    for search in searches.values():
        for learner, evaluations in search.evaluations.items():
            seeds = [evaluation.seed for evaluation in evaluations]
            repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1}, key=str)
            if repeated:
                warnings.append(
                    f"learner {learner} of {search.path} is evaluated more than once with seed(s) "
                    f"{', '.join(map(str, repeated))}: each seed counts once (the mean of its runs)"
                )
    return runs, warnings


def _search_of(record: RunRecord, searches: dict[Path, RunRecord]) -> tuple[RunRecord, int] | None:
    """The search run (among those compared) whose genotype an evaluation run trained."""
    parent = record.path.resolve().parent
    learner = record.summary.get("learner")
    source = _source_folder_and_learner(record.method)
    candidates = []
    if parent in searches:
        candidates.append(searches[parent])
    if source is not None:
        folder, source_learner = source
        learner = source_learner if source_learner is not None else learner
        for base in (Path.cwd(), record.path.resolve().parent):
            resolved = (base / folder).resolve() if not folder.is_absolute() else folder.resolve()
            if resolved in searches:
                candidates.append(searches[resolved])
    if not candidates or learner is None:
        return None
    return candidates[0], int(learner)


def group_runs(runs: Sequence[RunRecord]) -> list[SettingGroup]:
    """Runs of the same setting, in order of first appearance, each sorted by seed."""
    groups: dict[tuple, SettingGroup] = {}
    for run in runs:
        setting = run.setting()
        key = (run.kind, tuple(sorted(setting.items(), key=lambda item: item[0])))
        groups.setdefault(key, SettingGroup(setting=setting, runs=[])).runs.append(run)
    for group in groups.values():
        group.runs.sort(
            key=lambda run: (run.seed is None, run.seed if isinstance(run.seed, int) else 0)
        )
    return list(groups.values())


def compare_runs(paths: Sequence[str | Path]) -> Comparison:
    runs, warnings = load_runs(paths)
    groups = group_runs(runs)
    for group in groups:
        for seed, repeats in group.repeated_seeds().items():
            names = ", ".join(run.name for run in repeats)
            warnings.append(
                f"{names} are runs of one setting with the same seed {seed}: the statistics count "
                "that seed once (the mean of its runs)"
            )
    return Comparison(runs=runs, groups=groups, warnings=warnings)


def differing_keys(groups: Sequence[SettingGroup]) -> list[str]:
    """Setting keys, other than the shown columns, whose values differ between groups of the
    same kind (a search's and an evaluation's settings have different keys; keys only some
    runs' configs know, from other versions of the schema, are left out)."""
    differing = set()
    for kind in {group.first.kind for group in groups}:
        settings = [group.setting for group in groups if group.first.kind == kind]
        common = set.intersection(*(set(setting) for setting in settings))
        for key in common - set(SHOWN_KEYS) - {"genotype"}:
            if len({repr(setting[key]) for setting in settings}) > 1:
                differing.add(key)
    return sorted(differing)


# ---- formatting -------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _fmt_params(millions: float | None) -> str:
    # Three significant digits: 3.34 for a paper-size network, 0.0123 for a tiny one.
    return MISSING if millions is None else f"{millions:.3g}"


def _fmt_stat(stat: tuple[float, float | None] | None, digits: int = 2, scale: float = 1.0) -> str:
    if stat is None:
        return MISSING
    mean, std = stat
    if std is None:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _fmt_hours(hours: float | None, unit: str) -> str:
    return MISSING if hours is None else f"{hours:.3g} {unit.upper()}-h"


def _fmt_hours_stat(stat: tuple[float, float | None] | None, unit: str) -> str:
    if stat is None:
        return MISSING
    mean, std = stat
    text = f"{mean:.3g}" if std is None else f"{mean:.3g} ± {std:.2g}"
    return f"{text} {unit.upper()}-h"


def _percent_list(values: Sequence[float]) -> str:
    return " / ".join(f"{100 * value:.2f}" for value in values) if values else MISSING


def _value(value: Any) -> str:
    return MISSING if value is None else str(value)


def _other(setting: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{key}={setting[key]}" for key in keys if key in setting) or MISSING


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _test_error_cell(run: RunRecord) -> str:
    errors = list(run.test_errors().values())
    if not errors:
        return MISSING
    text = _fmt_stat(mean_std(errors))
    notes = []
    learner = run.evaluated_learner
    if learner is not None and (run.learners or 1) > 1:
        notes.append(f"learner {learner}")
    if len(errors) > 1:
        notes.append(f"{len(errors)} seeds")
    return text + (f" ({', '.join(notes)})" if notes else "")


RUN_COLUMNS = [
    "run",
    "method",
    "K",
    "hypergrad",
    "lambda",
    "seed",
    "val acc % per learner",
    "test error %",
    "params (M)",
    "search cost",
    "s/step",
]
SETTING_COLUMNS = [
    "method",
    "K",
    "hypergrad",
    "lambda",
    "other",
    "seeds",
    "val acc % per learner",
    "test error %",
    "params (M)",
    "search cost",
    "s/step",
]


def run_rows(runs: Sequence[RunRecord]) -> list[list[str]]:
    return [
        [
            run.name,
            run.method,
            _value(run.learners),
            _value(run.hypergrad),
            _value(run.lam),
            _value(run.seed),
            _percent_list(run.val_acc),
            _test_error_cell(run),
            _fmt_params(run.params_m),
            _fmt_hours(run.search_hours, run.cost_unit),
            _fmt(run.seconds_per_step, 3),
        ]
        for run in runs
    ]


def setting_rows(groups: Sequence[SettingGroup]) -> list[list[str]]:
    other_keys = differing_keys(groups)
    rows = []
    for group in groups:
        first = group.first
        val_acc = group.val_acc()
        units = {run.cost_unit for run in group.runs if run.search_hours is not None}
        rows.append(
            [
                first.method,
                _value(first.learners),
                _value(first.hypergrad),
                _value(first.lam),
                _other(group.setting, other_keys),
                f"{len(group.seeds)} ({', '.join(_value(seed) for seed in group.seeds)})",
                " / ".join(_fmt_stat(stat, scale=100.0) for stat in val_acc)
                if val_acc
                else MISSING,
                _fmt_stat(group.stat("test_error")),
                _fmt_params(group.mean("params_m")),
                # Hours on different devices do not average.
                _fmt_hours_stat(group.stat("search_hours"), units.pop())
                if len(units) == 1
                else MISSING,
                _fmt_stat(group.stat("seconds_per_step"), digits=3),
            ]
        )
    return rows


def markdown_report(comparison: Comparison) -> str:
    """The comparison as Markdown: the runs, then the settings with mean ± std over seeds."""
    parts = [
        f"## Runs ({len(comparison.runs)})",
        "",
        _table(RUN_COLUMNS, run_rows(comparison.runs)),
        "",
        f"## Settings: mean ± std over seeds ({len(comparison.groups)})",
        "",
        _table(SETTING_COLUMNS, setting_rows(comparison.groups)),
        "",
        "Validation accuracy: each learner's final search validation accuracy. Test error: the "
        "evaluation of the learner with the best search validation accuracy, when evaluated (the "
        "mean over its evaluation seeds). std: sample standard deviation (n - 1) over distinct "
        "seeds (runs of one seed count once); a test error's std is over every evaluation seed "
        "of every search seed.",
    ]
    if comparison.warnings:
        parts += ["", "Skipped:", ""] + [f"- {warning}" for warning in comparison.warnings]
    return "\n".join(parts) + "\n"


def setting_label(group: SettingGroup, other_keys: Sequence[str] = ()) -> str:
    """One line naming a setting: method, K, hypergradient and lambda (or the evaluated
    genotype), then every other key whose value differs between the compared settings."""
    first = group.first
    if first.kind == "eval":
        label = f"eval {first.method}"
    else:
        label = f"{first.method} K={first.learners}, {first.hypergrad}, λ={first.lam}"
    extra = [f"{key}={group.setting[key]}" for key in other_keys if key in group.setting]
    return ", ".join([label, *extra])


def _distinct_labels(groups: Sequence[SettingGroup]) -> list[str]:
    """Each setting's label; settings whose labels would read the same get the keys that tell
    them apart (keys only some configs have, from other versions of the schema)."""
    plain = [setting_label(group, differing_keys(groups)) for group in groups]
    labels = list(plain)
    for index, group in enumerate(groups):
        twins = [other for other, label in enumerate(plain) if label == plain[index]]
        if len(twins) == 1:
            continue
        keys = sorted(
            {
                key
                for other in twins
                for key in set(group.setting) | set(groups[other].setting)
                if repr(group.setting.get(key)) != repr(groups[other].setting.get(key))
            }
        )
        labels[index] += "".join(f", {key}={group.setting.get(key, MISSING)}" for key in keys)
    return labels


COMPARE_WIDTH = 13.0
# The bars' height, and one line of the legend below them per setting (inches).
COMPARE_BARS_HEIGHT, COMPARE_LINE_HEIGHT = 4.5, 0.22


def compare_figsize(settings: int) -> tuple[float, float]:
    return COMPARE_WIDTH, COMPARE_BARS_HEIGHT + COMPARE_LINE_HEIGHT * (settings + 1)


def _bar_stats(groups, attribute):
    stats = [group.stat(attribute) for group in groups]
    means = [math.nan if stat is None else stat[0] for stat in stats]
    stds = [0.0 if stat is None or stat[1] is None else stat[1] for stat in stats]
    return stats, means, stds


def comparison_figure(comparison: Comparison) -> Figure:
    """Bars per setting, mean over seeds with std error bars: each learner's final search
    validation accuracy, the test error (when evaluated) and the seconds per search step. The
    bars are labelled S1, S2, ...; the legend below says which setting each is."""
    groups = comparison.groups
    codes = [f"S{index + 1}" for index in range(len(groups))]
    labels = _distinct_labels(groups)
    positions = np.arange(len(groups))
    width, height = compare_figsize(len(groups))
    figure = Figure(figsize=(width, height), layout="constrained")
    bars, legend = figure.subfigures(
        2, 1, height_ratios=[COMPARE_BARS_HEIGHT, height - COMPARE_BARS_HEIGHT]
    )
    val_axes, error_axes, speed_axes = bars.subplots(1, 3)

    learners = max((len(group.val_acc()) for group in groups), default=0)
    bar_width = 0.8 / max(learners, 1)
    for k in range(learners):
        stats = [
            group.val_acc()[k] if k < len(group.val_acc()) else (math.nan, None) for group in groups
        ]
        val_axes.bar(
            positions + (k - (learners - 1) / 2) * bar_width,
            [100 * mean for mean, _ in stats],
            bar_width,
            yerr=[100 * (std or 0.0) for _, std in stats],
            capsize=3,
            label=f"learner {k}",
        )
    val_axes.set_title("final search val acc (%)")
    if learners:
        val_axes.legend(fontsize=8)

    for axes, attribute, title in (
        (error_axes, "test_error", "test error (%)"),
        (speed_axes, "seconds_per_step", "seconds per search step"),
    ):
        stats, means, stds = _bar_stats(groups, attribute)
        axes.bar(
            positions,
            means,
            0.6,
            yerr=stds,
            capsize=3,
            color="C2" if attribute == "test_error" else "C4",
        )
        axes.set_title(title)
        if all(stat is None for stat in stats):
            axes.text(
                0.5,
                0.5,
                "no run evaluated" if attribute == "test_error" else "no search run",
                transform=axes.transAxes,
                ha="center",
                va="center",
                color="0.5",
            )
    for axes in (val_axes, error_axes, speed_axes):
        axes.set_xticks(positions, codes, fontsize=8)
        axes.grid(axis="y", alpha=0.3)

    text = "\n".join(
        f"{code}: {label} ({len(group.seeds)} seed{'s' if len(group.seeds) != 1 else ''})"
        for code, label, group in zip(codes, labels, groups, strict=True)
    )
    legend.text(0.01, 0.98, text, ha="left", va="top", fontsize=8, family="monospace")
    return figure


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """``comparison_figure`` as a PNG."""
    return save_png(comparison_figure(comparison), path)
