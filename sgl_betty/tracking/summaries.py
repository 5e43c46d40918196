"""summary.json, what a finished run says about itself: one dataclass per kind of run and one
reader, ``read_summary``, that every consumer of a summary uses.

- ``SearchSummary``: an architecture search (its genotypes and search validation accuracies);
- ``EvalSummary`` (``kind: eval``): a network trained from scratch and its test error;
- ``SeedsSummary`` (``kind: seeds``): the mean and std of several seeds' runs.

The cost of a run is ``device_hours`` (wall time times processes, each holding its own device)
on a ``device_type`` (torch's: ``cuda``, ``cpu``, ...). Earlier versions named the cost after
the device instead (``gpu_hours`` on CUDA, ``cpu_hours`` elsewhere); the reader maps those, and
the writer keeps that key beside the new ones, so that earlier readers still find it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sgl_betty.errors import RunFolderError

SUMMARY_FILE = "summary.json"
# The cost keys of earlier versions and the device type each stands for.
LEGACY_COST_KEYS = {"gpu_hours": "cuda", "cpu_hours": "cpu"}


class SummaryError(RunFolderError):
    """A folder's summary.json is missing or cannot be read as a run's summary; ``reason``
    says why, without the path."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class SummaryMissing(SummaryError):
    """The folder has no summary.json (its run has not finished, or it is no run folder)."""


class SummaryUnreadable(SummaryError):
    """summary.json cannot be read, or is no valid JSON."""


def legacy_cost_key(device_type: str | None) -> str:
    """The key earlier versions gave the cost of a run on ``device_type``."""
    return "gpu_hours" if device_type == "cuda" else "cpu_hours"


def device_hours(wall_seconds: float, processes: int) -> float:
    """Device-hours of a run: every process holds its own device for the whole run."""
    return wall_seconds * processes / 3600


def cost_label(device_type: str | None) -> str:
    """How a cost on ``device_type`` is printed: ``gpu-hours`` or ``cpu-hours``."""
    return legacy_cost_key(device_type).replace("_", "-")


class RunSummary:
    """What the summaries share: their dict form and their reading from one."""

    kind: ClassVar[str]
    # Written only when set (earlier summaries have them only sometimes).
    OPTIONAL: ClassVar[tuple[str, ...]] = ()
    device_hours: float | None
    device_type: str | None
    extra: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """The summary as summary.json holds it (and as ``run_search``/``run_evaluation``
        return it)."""
        data: dict[str, Any] = {} if self.kind == "search" else {"kind": self.kind}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or (value is None and item.name in self.OPTIONAL):
                continue
            data[item.name] = value
            if item.name == "device_type" and value is not None:
                data[legacy_cost_key(value)] = self.device_hours
        data.update(self.extra)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {item.name for item in dataclasses.fields(cls)} - {"extra"}
        known = {key: value for key, value in data.items() if key in names}
        if "device_hours" not in data:
            for key, device_type in LEGACY_COST_KEYS.items():
                if key in data:
                    known["device_hours"] = data[key]
                    known.setdefault("device_type", device_type)
                    break
        extra = {
            key: value
            for key, value in data.items()
            if key not in names and key != "kind" and key not in LEGACY_COST_KEYS
        }
        return cls(**known, extra=extra)


@dataclass
class SearchSummary(RunSummary):
    kind: ClassVar[str] = "search"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("stages",)

    method: str | None = None
    hypergrad: str | None = None
    learners: int | None = None
    lam: float | None = None
    seed: int | None = None
    dataset: str | None = None
    genotypes: list[dict] = field(default_factory=list)
    val_acc: list[float] = field(default_factory=list)
    steps: int | None = None
    wall_seconds: float | None = None
    seconds_per_step: float | None = None
    device: str | None = None
    machine: str | None = None
    precision_policy: dict | None = None
    processes: int | None = None
    global_batch_size: int | None = None
    per_rank_batch_size: int | None = None
    arch_checksums: list | None = None
    device_hours: float | None = None
    device_type: str | None = None
    # The finished stages' records of a staged method (P-DARTS), as stages.json holds them.
    stages: list[dict] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSummary(RunSummary):
    kind: ClassVar[str] = "eval"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("learner", "search_val_acc")

    dataset: str | None = None
    genotype_source: str | None = None
    genotype: dict | None = None
    seed: int | None = None
    epochs: int | None = None
    layers: int | None = None
    init_channels: int | None = None
    params_m: float | None = None
    test_error: float | None = None
    test_top5_error: float | None = None
    test_acc: float | None = None
    test_images: int | None = None
    train_loss: float | None = None
    train_acc: float | None = None
    wall_seconds: float | None = None
    world_size: int | None = None
    global_batch_size: int | None = None
    per_rank_batch_size: int | None = None
    device: str | None = None
    machine: str | None = None
    device_hours: float | None = None
    device_type: str | None = None
    weight_checksums: list | None = None
    # Of a search's genotype: which learner, and its search validation accuracy.
    learner: int | None = None
    search_val_acc: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SeedsSummary(RunSummary):
    kind: ClassVar[str] = "seeds"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("genotype_source",)

    genotype_source: str | None = None
    seeds: list = field(default_factory=list)
    test_error_mean: float | None = None
    test_error_std: float | None = None
    params_m: float | None = None
    device_hours: float | None = None
    device_type: str | None = None
    # One row per seed: its seed, test error, size and cost (and, after a search, the learner
    # evaluated and the search's folder and cost).
    runs: list[dict] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


SUMMARY_TYPES: dict[str, type[RunSummary]] = {
    "search": SearchSummary,
    "eval": EvalSummary,
    "seeds": SeedsSummary,
}


def summary_from_dict(data: Any, path: Path = Path(SUMMARY_FILE)) -> RunSummary:
    """The summary ``data`` (summary.json's content) describes; SummaryError when it is none."""
    if not isinstance(data, dict):
        raise SummaryError(path, "summary.json is not a JSON object")
    kind = data.get("kind")
    if kind not in ("eval", "seeds"):
        # Search summaries have no kind: they are told by their genotypes.
        if not isinstance(data.get("genotypes"), list):
            raise SummaryError(
                path, "summary.json is neither a search's, an evaluation's nor a seeds' summary"
            )
        kind = "search"
    return SUMMARY_TYPES[kind].from_dict(data)


def read_summary(folder: str | Path) -> RunSummary:
    """The summary of the run in ``folder``: a SearchSummary, EvalSummary or SeedsSummary.

    SummaryMissing when the folder has no summary.json, SummaryUnreadable when it is no valid
    JSON, SummaryError when it is no run's summary (the ``reason`` says why)."""
    folder = Path(folder)
    path = folder / SUMMARY_FILE
    if not folder.is_dir():
        raise SummaryMissing(path, "not a folder")
    if not path.is_file():
        raise SummaryMissing(path, "no summary.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SummaryUnreadable(path, f"summary.json cannot be read ({error})") from None
    return summary_from_dict(data, path)


def summary_data(folder: str | Path) -> dict[str, Any] | None:
    """``folder``'s summary in its dict form (summary.json's keys, the cost under today's
    names too), None when there is none that can be read."""
    try:
        return read_summary(folder).to_dict()
    except SummaryError:
        return None


def summary_kind(folder: str | Path) -> str | None:
    """The kind of run ('search', 'eval', 'seeds') ``folder``'s summary.json describes, None
    when there is none that can be read."""
    try:
        return read_summary(folder).kind
    except SummaryError:
        return None


def finite_number(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None: for reading
    the numbers of a summary of unknown origin."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
