"""The command line shared by the recipes (cifar100.py, cifar10.py, imagenet.py)."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from sgl_betty.errors import UserError
from sgl_betty.evaluation.distributed import shutdown_distributed
from sgl_betty.experiment.config import ConfigError, load_config, load_run_config
from sgl_betty.experiment.interruption import RunInterrupted
from sgl_betty.problems import NonFiniteError
from sgl_betty.secret_env import redact
from sgl_betty.tracking import TRUST_FLAG

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def search_stage(cfg, resume=False, trust_checkpoint=False):
    from sgl_betty.experiment.search import run_search

    return run_search(cfg, resume=resume, trust_checkpoint=trust_checkpoint)


def eval_stage(cfg, resume=False, trust_checkpoint=False):
    from sgl_betty.experiment.pipeline import evaluate_stage

    return evaluate_stage(cfg, resume=resume, trust_checkpoint=trust_checkpoint)


def all_stage(cfg):
    from sgl_betty.experiment.pipeline import search_and_evaluate_stage

    return search_and_evaluate_stage(cfg)


def resume_stage(stage, run_dir, overrides, trust_checkpoint=False):
    from sgl_betty.experiment.checkpoints import folder_kind

    if stage == "all":
        raise ConfigError(
            "--resume continues one search or evaluation run, not --stage all: resume the search "
            "folder with --stage search, then each of its eval-learner<k> folders with --stage eval "
            "(or start those evaluations with --stage eval eval.genotype=<search folder>:<k>)"
        )
    if not (Path(run_dir) / "config.yaml").is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no config.yaml (is it a run folder?)")
    # Only the first process converts a checkpoint of an earlier version.
    writer = int(os.environ.get("RANK", "0")) == 0
    kind = folder_kind(run_dir, trust=trust_checkpoint, writer=writer)
    if kind is None:
        raise ConfigError(
            f"cannot resume {run_dir}: it has a config.yaml but no run.json, checkpoint.pt or "
            "summary.json that says what ran there; start the run again without --resume"
        )
    if stage == "search" and kind != "search":
        raise ConfigError(
            f"{run_dir} is an evaluation run; resume it with --stage eval --resume {run_dir}"
        )
    if stage == "eval" and kind == "search":
        raise ConfigError(
            f"{run_dir} is a search run, not an evaluation; resume it with "
            f"--stage search --resume {run_dir}"
        )
    cfg = load_run_config(run_dir, overrides)
    prepare(cfg)
    run = search_stage if stage == "search" else eval_stage
    return run(cfg, resume=True, trust_checkpoint=trust_checkpoint)


def prepare(cfg) -> None:
    """What every stage does first: torch's CPU threads, said on the console."""
    from sgl_betty.experiment.resources import choose_threads

    _, line = choose_threads(cfg.run.threads, cfg.data.num_workers)
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, flush=True)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # A warning tells the user something about the run, not where in the code it was raised.
    print(f"warning: {redact(str(message))}", file=file or sys.stderr)


STAGES = {"search": search_stage, "eval": eval_stage, "all": all_stage}
STAGE_HELP = {
    "search": "SGL architecture search",
    "eval": "train eval.genotype's network from scratch and report its test error",
    "all": "search, then evaluate the best learner's genotype (eval.learners=all: every learner's)",
}
# Stages a recipe offers, its default first: ImageNet only evaluates cells searched on CIFAR.
RECIPE_STAGES = {"imagenet": ("eval",)}
EXAMPLES = {
    "eval": "preset=tiny eval.genotype=DARTS_V2 run.dir=runs/x",
    "search": "preset=smoke hypergrad.type=neumann learners=3 lam=0.5 run.dir=runs/x",
}


def main(recipe: str, argv: list[str] | None = None) -> int:
    stages = RECIPE_STAGES.get(recipe, ("search", "eval", "all"))
    parser = argparse.ArgumentParser(
        prog=f"{recipe}.py",
        description=f"{recipe}: "
        + "; ".join(f"--stage {name}: {STAGE_HELP[name]}" for name in stages)
        + f". Overrides are key=value, e.g. {EXAMPLES[stages[0]]}",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--stage", choices=stages, default=stages[0])
    resumable = [stage for stage in ("search", "eval") if stage in stages]
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help=f"continue an interrupted run of --stage {' or '.join(resumable)} from its last "
        "checkpoint, with its config.yaml; overrides of logging, progress, tracking, checkpoints, "
        "threads, device and the data location apply, others are refused; a finished evaluation "
        "is left as it is",
    )
    parser.add_argument(
        TRUST_FLAG,
        action="store_true",
        help="with --resume: load a checkpoint of an earlier sgl-betty version that holds other "
        "objects than tensors and plain data by unpickling it, which runs any code it contains "
        "(only for your own files); it is rewritten in the safe format",
    )
    args = parser.parse_args(argv)
    if args.trust_checkpoint and not args.resume:
        parser.error(f"{TRUST_FLAG} only applies to --resume RUN_DIR")
    resume = args.resume
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            if resume:
                resume_stage(args.stage, resume, args.overrides, args.trust_checkpoint)
                return 0
            cfg = load_config(args.overrides, recipe=recipe, config_dir=CONFIG_DIR)
            prepare(cfg)
            STAGES[args.stage](cfg)
    except UserError as error:
        print(f"error: {redact(str(error))}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except RunInterrupted as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    return 0
