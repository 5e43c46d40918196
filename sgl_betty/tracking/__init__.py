"""Run folders, experiment trackers (W&B, figures) and the comparison of runs."""

from .compare import (
    Comparison,
    RunRecord,
    SettingGroup,
    compare_runs,
    markdown_report,
    plot_comparison,
)
from .figures import draw_cell, draw_run_figures, draw_training_curves, draw_weight_heatmaps
from .run_folder import RunFolder, atomic_torch_save, atomic_write_bytes, read_jsonl
from .tracker import FigureTracker, Tracker, build_tracker
from .wandb_tracker import WandbTracker

__all__ = [
    "Comparison",
    "FigureTracker",
    "RunFolder",
    "RunRecord",
    "SettingGroup",
    "Tracker",
    "WandbTracker",
    "atomic_torch_save",
    "atomic_write_bytes",
    "build_tracker",
    "compare_runs",
    "draw_cell",
    "draw_run_figures",
    "draw_training_curves",
    "draw_weight_heatmaps",
    "markdown_report",
    "plot_comparison",
    "read_jsonl",
]
