"""Run folders, experiment trackers (W&B, figures) and the comparison of runs."""

from .compare import (
    Comparison,
    RunRecord,
    SettingGroup,
    compare_runs,
    markdown_report,
    plot_comparison,
)
from .durable import atomic_write_bytes, durable_write
from .figures import draw_cell, draw_run_figures, draw_training_curves, draw_weight_heatmaps
from .run_folder import RunFolder, claim_run_folder, read_jsonl, read_run_kind
from .torch_files import TRUST_FLAG, UnsafeFileError, load_torch_file, save_torch_file
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
    "TRUST_FLAG",
    "UnsafeFileError",
    "atomic_write_bytes",
    "claim_run_folder",
    "durable_write",
    "load_torch_file",
    "read_run_kind",
    "save_torch_file",
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
