"""Where the cell of an evaluation run comes from: ``eval.genotype``.

``DARTS_V2`` names a published genotype; ``runs/x:1`` is learner 1 (0-based, as the search
prints them) of the search run in ``runs/x``, read from its summary.json; ``runs/x`` alone takes
the learner with the highest search validation accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from sgl_betty.genotypes import PUBLISHED, Genotype, genotype_from_dict, validate_genotype
from sgl_betty.tracking.summaries import (
    SUMMARY_FILE,
    SearchSummary,
    SummaryError,
    SummaryMissing,
    SummaryUnreadable,
    read_summary,
)

from .config import ConfigError

USAGE = (
    "set eval.genotype to a published genotype (eval.genotype=DARTS_V2; published: "
    f"{', '.join(PUBLISHED)}) or to a search run folder and learner (eval.genotype=runs/x:1)"
)


@dataclass(frozen=True)
class GenotypeChoice:
    genotype: Genotype
    # What eval.genotype said, with the learner made explicit: "DARTS_V2" or "runs/x:1".
    source: str
    # A short name for run folders: "DARTS_V2" or "x-learner1".
    label: str
    learner: int | None = None
    search_val_acc: float | None = None


def read_search_summary(folder: str | Path) -> SearchSummary:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"search run folder {str(folder)!r} does not exist; {USAGE}")
    path = folder / SUMMARY_FILE
    try:
        summary = read_summary(folder)
    except SummaryMissing:
        raise ConfigError(
            f"{folder} has no summary.json: the search there has not finished (a search writes it "
            "at its end); let it finish, or pick a finished search run folder"
        ) from None
    except SummaryUnreadable as error:
        raise ConfigError(f"{path} is not valid JSON ({error.reason}); rerun the search") from None
    except SummaryError:
        summary = None
    if not isinstance(summary, SearchSummary):
        raise ConfigError(
            f"{path} has no 'genotypes' list: it is not the summary of a search run "
            "(an evaluation run folder cannot be a genotype source)"
        )
    return summary


def best_learner(summary: dict | SearchSummary) -> int:
    """The learner with the highest search validation accuracy (the first of equals)."""
    if isinstance(summary, dict):
        summary = SearchSummary.from_dict(summary)
    accuracies = summary.val_acc or []

    def score(index: int) -> float:
        value = accuracies[index] if index < len(accuracies) else None
        return value if isinstance(value, int | float) and math.isfinite(value) else -math.inf

    return max(range(len(summary.genotypes)), key=score)


def genotype_of_learner(folder: str | Path, learner: int | None = None) -> GenotypeChoice:
    folder = Path(folder)
    summary = read_search_summary(folder)
    count = len(summary.genotypes)
    if count == 0:
        raise ConfigError(f"{folder / 'summary.json'} lists no genotypes; rerun the search")
    if learner is None:
        learner = best_learner(summary)
    if not 0 <= learner < count:
        raise ConfigError(
            f"learner {learner} is out of range: the search in {folder} had {count} learner(s), "
            f"numbered 0..{count - 1}; use eval.genotype={folder}:0"
            + (f" .. {folder}:{count - 1}" if count > 1 else "")
        )
    try:
        genotype = genotype_from_dict(summary.genotypes[learner])
        # A search with search.steps intermediate nodes keeps 2 edges per node.
        validate_genotype(genotype, steps=len(genotype.normal) // 2)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"the genotype of learner {learner} in {folder / 'summary.json'} is malformed: {error}"
        ) from None
    accuracies = summary.val_acc or []
    return GenotypeChoice(
        genotype=genotype,
        source=f"{folder}:{learner}",
        label=f"{folder.name}-learner{learner}",
        learner=learner,
        search_val_acc=accuracies[learner] if learner < len(accuracies) else None,
    )


def resolve_eval_genotype(spec: str | None) -> GenotypeChoice:
    """The genotype ``eval.genotype`` names; ConfigError saying what is wrong and what to write."""
    if spec is None or not str(spec).strip():
        raise ConfigError(f"eval.genotype is not set; {USAGE}")
    spec = str(spec).strip()
    if spec in PUBLISHED:
        return GenotypeChoice(PUBLISHED[spec], source=spec, label=spec)
    folder, separator, learner_text = spec.rpartition(":")
    if separator and folder:
        try:
            learner = int(learner_text)
        except ValueError:
            raise ConfigError(
                f"eval.genotype={spec!r}: {learner_text!r} after ':' is not a learner number; "
                f"write <search run folder>:<learner>, e.g. {folder}:0"
            ) from None
        return genotype_of_learner(folder, learner)
    if Path(spec).is_dir():
        return genotype_of_learner(spec)
    raise ConfigError(
        f"eval.genotype={spec!r} is neither a published genotype nor a search run folder; {USAGE}"
    )
