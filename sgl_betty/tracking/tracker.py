"""The seam between a run and experiment trackers (W&B, figures): a run reports to a Tracker.

The base class does nothing, so a run without tracking pays nothing; ``build_tracker``
(``from_config.py``) picks the tracker a run config asks for.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


class Tracker:
    def start(self, config: dict[str, Any], kind: str) -> None:
        """A run begins; ``config`` is the resolved config as a plain dict, kind 'search' or 'eval'."""

    def log_metrics(self, row: dict[str, Any], step: int) -> None:
        """One logged step (the same row as a line of metrics.jsonl)."""

    def log_architecture(
        self, epoch: int, genotypes: list[dict], weights: list[dict[str, list]]
    ) -> None:
        """End of an epoch: per learner its genotype and its softmaxed architecture weights."""

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended; ``summary`` is what summary.json holds."""


class FigureTracker(Tracker):
    """Draws the run's pictures into ``<run>/figures/`` when the run finishes.

    The pictures come from the run folder's files, not from what the run reported, so
    ``draw_run_figures`` gives the same pictures for any run folder later.
    """

    def __init__(self, run_dir: str | Path, figures: bool = True):
        self.run_dir = Path(run_dir)
        self.figures = figures
        self.figure_paths: list[Path] = []

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.figures:
            return
        from .figures import draw_run_figures

        # Everything the run produced is already on disk; a plotting failure must not turn a
        # finished search into a failed one.
        try:
            self.figure_paths = draw_run_figures(self.run_dir)
        except Exception as error:
            warnings.warn(
                f"could not draw the figures of {self.run_dir} ({type(error).__name__}: {error}); "
                f'draw them later with: python -c "from sgl_betty.tracking import draw_run_figures; '
                f"draw_run_figures('{self.run_dir}')\"",
                RuntimeWarning,
                stacklevel=2,
            )
