"""The command line shared by the search recipes (cifar100.py, cifar10.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgl_betty.data import DatasetNotFoundError
from sgl_betty.experiment.config import ConfigError, load_config
from sgl_betty.problems import NonFiniteError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def search_stage(cfg):
    from sgl_betty.experiment.search import run_search

    return run_search(cfg)


STAGES = {"search": search_stage}


def main(recipe: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{recipe}.py",
        description=f"SGL architecture search on {recipe}. Overrides are key=value, e.g. "
        "preset=smoke hypergrad.type=neumann learners=3 lam=0.5 run.dir=runs/x",
    )
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    parser.add_argument("--stage", choices=sorted(STAGES), default="search")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.overrides, recipe=recipe, config_dir=CONFIG_DIR)
        STAGES[args.stage](cfg)
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
