"""The recipe stages built from single runs: evaluation over several seeds, and search followed
by evaluation.

``seeds=[1,2,3]`` runs the stage once per seed into ``<run>/seed-<s>/`` and writes
``<run>/summary.json`` with the mean and the sample standard deviation (n - 1) of the test
error, as the paper's tables report them. ``--stage all`` searches, then evaluates the best
learner's genotype (the highest search validation accuracy) or every learner's
(``eval.learners``) in ``<search run>/eval-learner<k>/``.

``--stage eval --resume <run>`` on such a folder skips the seeds that finished, resumes the one
that was stopped (from its checkpoint; one stopped before its first checkpoint starts again),
runs the rest and writes the aggregate.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from sgl_betty.evaluation.distributed import init_distributed, launched_distributed
from sgl_betty.tracking import RunFolder

from .config import ConfigError, to_yaml
from .evaluate import (
    EvaluationInterrupted,
    check_eval_config,
    cost_key,
    finished_summary,
    run_evaluation,
)
from .genotype_source import best_learner, resolve_eval_genotype
from .run_dirs import (
    claim_for_run,
    default_eval_dir,
    default_search_dir,
    discarded_on_failed_start,
)
from .search import resolve_device


def evaluate_stage(cfg: DictConfig, resume: bool = False, trust_checkpoint: bool = False) -> dict:
    """``--stage eval``: one evaluation, or one per seed and their aggregate; with ``resume``,
    continue the run (or the seeds' runs) in ``cfg.run.dir``."""
    context = init_distributed(resolve_device(cfg.device))
    check_eval_config(cfg, context.world_size)
    if not cfg.seeds:
        return run_evaluation(cfg, resume=resume, trust_checkpoint=trust_checkpoint)
    if resume:
        root = Path(cfg.run.dir)
        finished = finished_summary(root, "seeds", "an evaluation over seeds")
        if finished is not None:
            if context.is_main:
                print(
                    f"nothing to resume: the {len(finished['runs'])} seeds in {root} are finished"
                )
            return finished
        genotype_source = None
    else:
        # Resolved once, before the first seed, so that a bad genotype costs no training.
        choice = resolve_eval_genotype(cfg.eval.genotype)
        top = claim_for_run(cfg, "seeds", context, default_eval_dir(cfg, choice.label))
        root = top.path
        genotype_source = choice.source
        # Written first, so that the whole set of seeds can be resumed from this folder.
        top.write_text("config.yaml", to_yaml(cfg))

    def run_one(seed_cfg: DictConfig) -> dict:
        folder = Path(seed_cfg.run.dir)
        # A seed folder is this run's own: resumed (from its checkpoint, or from its start if
        # it stopped before the first); the seeds not started yet get their folders.
        resumable = resume and folder.is_dir()
        try:
            return run_evaluation(seed_cfg, resume=resumable, trust_checkpoint=trust_checkpoint)
        except EvaluationInterrupted as error:
            # Resuming the top folder continues this seed and then the others.
            raise EvaluationInterrupted(
                f"{error.what} in {folder}", root, context.world_size
            ) from None

    with discarded_on_failed_start(RunFolder(root, enabled=context.is_main), claimed=not resume):
        runs = [_seed_row(seed, summary) for seed, summary in _per_seed(cfg, root, run_one)]
    if genotype_source is None:
        genotype_source = runs[0]["genotype_source"]
    return _write_aggregate(cfg, root, runs, context.is_main, genotype_source=genotype_source)


def search_and_evaluate_stage(cfg: DictConfig) -> dict:
    """``--stage all``: search, then evaluate; per seed when ``seeds`` is set."""
    if launched_distributed():
        raise ConfigError(
            "--stage all runs its search in one process; under torchrun run --stage search first, "
            "then torchrun ... --stage eval eval.genotype=<search run folder>:<learner>"
        )
    check_eval_config(cfg)
    if not cfg.seeds:
        return search_then_evaluate(cfg)
    context = init_distributed(resolve_device(cfg.device))
    top = claim_for_run(cfg, "seeds", context, default_search_dir(cfg))
    top.write_text("config.yaml", to_yaml(cfg))
    root = top.path
    with discarded_on_failed_start(top, claimed=True):
        results = list(_per_seed(cfg, root, search_then_evaluate))
    runs = []
    for seed, result in results:
        selected = result["evaluations"][result["selected_learner"]]
        row = _seed_row(seed, selected)
        row["learner"] = result["selected_learner"]
        row["search_run_dir"] = result["run_dir"]
        key = cost_key(selected)
        row[f"search_{key}"] = result["search"].get(key, 0.0)
        row[key] = result[key]
        runs.append(row)
    return _write_aggregate(cfg, root, runs, True)


def search_then_evaluate(cfg: DictConfig) -> dict:
    """Search into ``run.dir``, then evaluate the chosen learners inside it.

    Returns the search summary, the evaluation summaries by learner, the learner with the
    best search validation accuracy and the total cost of search and evaluations.
    """
    from .search import run_search

    search_summary = run_search(cfg)  # sets run.dir to the search's folder
    folder = Path(cfg.run.dir)
    selected = best_learner(search_summary)
    if cfg.eval.learners == "best":
        learners = [selected]
    else:
        learners = list(range(len(search_summary["genotypes"])))
    evaluations = {}
    for learner in learners:
        eval_cfg = copy.deepcopy(cfg)
        eval_cfg.eval.genotype = f"{folder}:{learner}"
        eval_cfg.run.dir = str(folder / f"eval-learner{learner}")
        evaluations[learner] = run_evaluation(eval_cfg)
    key = cost_key(evaluations[selected])
    total = search_summary.get(key, 0.0) + sum(summary[key] for summary in evaluations.values())
    return {
        "run_dir": str(folder),
        "search": search_summary,
        "evaluations": evaluations,
        "selected_learner": selected,
        key: total,
    }


def _per_seed(cfg: DictConfig, root: Path, run_one: Callable[[DictConfig], dict]):
    for seed in cfg.seeds:
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg.seed = seed
        # Each seed's folder describes a single run, reproducible on its own.
        seed_cfg.seeds = None
        seed_cfg.run.dir = str(root / f"seed-{seed}")
        yield seed, run_one(seed_cfg)


def _seed_row(seed: int, summary: dict) -> dict:
    key = cost_key(summary)
    return {
        "seed": seed,
        "test_error": summary["test_error"],
        "params_m": summary["params_m"],
        "genotype_source": summary["genotype_source"],
        key: summary[key],
    }


def aggregate_seed_runs(runs: list[dict]) -> dict:
    """Mean and sample standard deviation of the test error over the seeds' runs; the mean
    model size; the summed cost."""
    errors = [run["test_error"] for run in runs]
    key = cost_key(runs[0])
    return {
        "seeds": [run["seed"] for run in runs],
        "test_error_mean": statistics.fmean(errors),
        "test_error_std": statistics.stdev(errors) if len(errors) > 1 else 0.0,
        "params_m": statistics.fmean(run["params_m"] for run in runs),
        key: sum(run[key] for run in runs),
        "runs": runs,
    }


def _write_aggregate(cfg: DictConfig, root: Path, runs: list[dict], writer: bool, **extra) -> dict:
    summary = {"kind": "seeds", **extra, **aggregate_seed_runs(runs)}
    folder = RunFolder(root, enabled=writer)
    folder.write_text("config.yaml", to_yaml(cfg))
    folder.write_json("summary.json", summary)
    if writer:
        print_seed_summary(summary, root)
    return summary


def print_seed_summary(summary: dict, path: Path) -> None:
    key = cost_key(summary)
    errors = ", ".join(f"{run['seed']}: {run['test_error']:.2f}%" for run in summary["runs"])
    print(
        f"over {len(summary['runs'])} seeds: test error {summary['test_error_mean']:.2f} "
        f"+- {summary['test_error_std']:.2f}% (seeds {errors}), params {summary['params_m']:.2f} M, "
        f"{summary[key]:.4f} {key.replace('_', '-')} in total\nrun folder: {path}"
    )
