"""One Weights & Biases run per search or evaluation run, kept inside the run folder.

Betty's own ``WandBLogger`` never starts a run, so the project logs to W&B itself:

- the resolved run config is the W&B run config, so W&B's run table and parallel-coordinates
  views compare ``hypergrad.type``, ``learners`` (K), ``lam`` and ``search.method`` directly;
- every logged step's metrics (``learner{k}/{stage}_{name}``, one W&B section per learner);
- the genotypes after every epoch as the W&B table ``genotypes``;
- at the end, the run's pictures (``figures/...``) and its summary's numbers.

The W&B files go to ``<run folder>/wandb/`` and the run is named after the run folder. The
default mode, offline, needs no account and no network; upload later with ``wandb sync``.
Online mode without W&B credentials falls back to offline instead of waiting for a login.
"""

from __future__ import annotations

import netrc
import os
import sys
import warnings
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

from .run_folder import run_name
from .tracker import FigureTracker

GENOTYPE_COLUMNS = ["epoch", "step", "learner", "normal", "reduce", "genotype"]


def has_wandb_credentials() -> bool:
    """Whether W&B could log in without asking: an API key or identity token in the
    environment, or a ``wandb login`` entry in the netrc file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or Path.home() / ".netrc"
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def describe_cell(edges: list) -> str:
    """``0: sep_conv_3x3(c_{k-1}) + skip_connect(c_{k-2}); 1: ...``: a cell's edges by node."""
    from .figures import input_name

    nodes = []
    for node in range(len(edges) // 2):
        pair = edges[2 * node : 2 * node + 2]
        nodes.append(
            f"{node}: " + " + ".join(f"{op}({input_name(int(source))})" for op, source in pair)
        )
    return "; ".join(nodes)


def genotype_code(genotype: dict) -> str:
    """The genotype as DARTS's genotypes.py writes one, ready to paste."""

    def edges(cell: str) -> str:
        return "[" + ", ".join(f"('{op}', {int(source)})" for op, source in genotype[cell]) + "]"

    return (
        f"Genotype(normal={edges('normal')}, normal_concat={list(genotype['normal_concat'])}, "
        f"reduce={edges('reduce')}, reduce_concat={list(genotype['reduce_concat'])})"
    )


def summary_numbers(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's scalars, plus each list of numbers (``val_acc`` per learner) as
    ``val_acc/0``, ``val_acc/1``, ..., ``val_acc_mean`` and ``val_acc_max``: what W&B's run
    table and parallel-coordinates views can sort and plot."""
    numbers: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, (bool, int, float, str)) or value is None:
            numbers[key] = value
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value)
        ):
            for index, item in enumerate(value):
                numbers[f"{key}/{index}"] = item
            numbers[f"{key}_mean"] = sum(value) / len(value)
            numbers[f"{key}_max"] = max(value)
    return numbers


class WandbTracker(FigureTracker):
    """Logs a run to W&B; draws the run's figures at the end and logs them as images."""

    def __init__(
        self,
        run_dir: str | Path,
        project: str = "sgl-betty",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str = "offline",
        figures: bool = True,
        announce: bool = True,
        stream: TextIO | None = None,
    ):
        super().__init__(run_dir, figures=figures)
        if mode not in ("online", "offline"):
            raise ValueError(
                f"W&B mode {mode!r}: use 'online' or 'offline' ('disabled' means no WandbTracker)"
            )
        self.project, self.entity, self.group = project, entity, group
        self.tags = list(tags or [])
        self.mode = mode
        self.announce = announce
        # None: whatever sys.stdout is when the run ends (a test's capture, a redirected log).
        self.stream = stream
        self.run = None
        self.last_step: int | None = None
        self.metric_keys: set[str] = set()
        self.genotype_rows: list[list] = []
        # Environment variables this tracker set, and unsets when the run ends.
        self._environment_keys: list[str] = []

    @property
    def wandb_dir(self) -> Path:
        return self.run_dir.resolve() / "wandb"

    def _set_environment(self) -> None:
        # Tables are logged through artifacts staged under WANDB_DATA_DIR (the user's home by
        # default); staging them in the run folder keeps an offline run complete for `wandb sync`.
        values = {"WANDB_SILENT": "true", "WANDB_DATA_DIR": str(self.wandb_dir / "data")}
        for key, value in values.items():
            if key not in os.environ:
                os.environ[key] = value
                self._environment_keys.append(key)

    def _restore_environment(self) -> None:
        for key in self._environment_keys:
            os.environ.pop(key, None)
        self._environment_keys = []

    def start(self, config: dict[str, Any], kind: str) -> None:
        import wandb

        mode = self.mode
        if mode == "online" and not has_wandb_credentials():
            warnings.warn(
                "tracking.mode=online but no W&B credentials were found (run `wandb login` or set "
                "WANDB_API_KEY); logging offline instead, upload later with `wandb sync`",
                RuntimeWarning,
                stacklevel=2,
            )
            mode = "offline"
        self.wandb_dir.mkdir(parents=True, exist_ok=True)
        self._set_environment()
        try:
            self.run = wandb.init(
                dir=str(self.run_dir),
                project=self.project,
                entity=self.entity,
                group=self.group,
                tags=self.tags or None,
                name=run_name(self.run_dir),
                job_type=kind,
                config=config,
                mode=mode,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off", save_code=False),
            )
        except Exception as error:
            # A tracking problem (network, quota, a bad entity) must not stop a search.
            self._restore_environment()
            self.run = None
            warnings.warn(
                f"W&B did not start ({type(error).__name__}: {error}); the run continues without W&B "
                "(its run folder has every metric)",
                RuntimeWarning,
                stacklevel=2,
            )

    def log_metrics(self, row: dict[str, Any], step: int) -> None:
        self.last_step = step
        self.metric_keys.update(row)
        if self.run is not None:
            self.run.log(dict(row), step=step)

    def _log(self, data: dict[str, Any]) -> None:
        # Logged at the last metrics step: W&B's steps only go forward.
        if self.last_step is None:
            self.run.log(data)
        else:
            self.run.log(data, step=self.last_step)

    def _genotypes_table(self):
        import wandb

        return wandb.Table(columns=GENOTYPE_COLUMNS, data=[list(row) for row in self.genotype_rows])

    def log_architecture(
        self, epoch: int, genotypes: list[dict], weights: list[dict[str, list]]
    ) -> None:
        for learner, genotype in enumerate(genotypes):
            self.genotype_rows.append(
                [
                    epoch,
                    self.last_step,
                    learner,
                    describe_cell(genotype["normal"]),
                    describe_cell(genotype["reduce"]),
                    genotype_code(genotype),
                ]
            )
        if self.run is not None:
            self._log({"genotypes": self._genotypes_table()})

    def finish(self, summary: dict[str, Any]) -> None:
        super().finish(summary)
        if self.run is None:
            return
        import wandb

        logged: dict[str, Any] = {}
        if not self.genotype_rows and isinstance(summary.get("genotype"), dict):
            # An evaluation run trains one given genotype and reports no architecture per epoch.
            genotype = summary["genotype"]
            learner = summary.get("learner")
            self.genotype_rows.append(
                [
                    None,
                    self.last_step,
                    learner,
                    describe_cell(genotype["normal"]),
                    describe_cell(genotype["reduce"]),
                    genotype_code(genotype),
                ]
            )
            logged["genotypes"] = self._genotypes_table()
        for path in self.figure_paths:
            logged[f"figures/{path.stem}"] = wandb.Image(str(path))
        if logged:
            self._log(logged)
        # W&B's summary already holds each metric's last logged value; a summary number of the
        # same name (seconds_per_step over the whole run) goes under run/ instead of replacing it.
        numbers = summary_numbers(summary)
        self.run.summary.update(
            {
                f"run/{key}" if key in self.metric_keys else key: value
                for key, value in numbers.items()
            }
        )
        offline = self.run.settings.mode == "offline"
        where = self.run.settings.sync_dir if offline else self.run.url
        self.run.finish()
        self.run = None
        self._restore_environment()
        if self.announce:
            if offline:
                print(
                    f"W&B offline run: {where}\n  upload it with: wandb sync {where}",
                    file=self.stream or sys.stdout,
                )
            else:
                print(f"W&B run: {where}", file=self.stream or sys.stdout)
