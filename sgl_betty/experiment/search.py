"""One architecture search, start to finish: data, K learners, the SGL engine, the run folder.

The whole training step is ``engine.step()``; everything else here is bookkeeping. A search
runs in stages with fresh learners each (P-DARTS's progressive stages; one for other methods).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from sgl_betty.data import build_search_data
from sgl_betty.engine import build_sgl_engine
from sgl_betty.engine.precision import describe_policy
from sgl_betty.errors import RunFolderError
from sgl_betty.evaluation.distributed import DistributedContext, init_distributed, weights_checksum
from sgl_betty.genotypes import genotype_to_dict
from sgl_betty.runtime import configure_backends
from sgl_betty.tracking import RunFolder, build_tracker

from .checkpoints import read_checkpoint, write_checkpoint
from .config import ConfigError, batch_per_process, sgl_config, to_yaml
from .interruption import (
    CHECKPOINT,
    RunInterrupted,
    StopRequests,
    StopVote,
    rng_state,
    set_rng_state,
)
from .methods import SearchMethod, SearchStage, search_method, search_stages, stage_learners
from .resources import out_of_memory
from .run_dirs import claim_for_run, default_search_dir, discarded_on_failed_start


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible; use device=cpu or device=auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def data_settings(cfg: DictConfig) -> dict:
    """The data builders' arguments that search and evaluation share."""
    data = cfg.data
    return {
        "root": data.root,
        "download": data.download,
        "seed": cfg.seed,
        "image_size": data.image_size,
        "synthetic": dict(OmegaConf.to_container(data.synthetic)),
        "limit": data.limit,
        "local_checksums": data.local_checksums,
    }


@contextmanager
def data_settings_checked(what: str, batch_key: str, batch_size: int) -> Iterator[None]:
    """The data builders' ValueErrors (sizes, names, options) as ConfigErrors naming the batch."""
    try:
        yield
    except ValueError as error:
        raise ConfigError(
            f"the {what} data cannot be built from these settings: {error} "
            f"({batch_key}={batch_size}, data.*)"
        ) from None


def build_data(cfg: DictConfig, batch_size: int, device: torch.device):
    """The search loaders with ``batch_size`` images per batch (one process's share), pinned
    for a CUDA run so that the engine's non-blocking copies to the GPU are asynchronous."""
    settings = data_settings(cfg)
    if cfg.data.image_size is not None:
        settings["synthetic"]["image_size"] = cfg.data.image_size
    with data_settings_checked("search", "search.batch_size", cfg.search.batch_size):
        return build_search_data(
            cfg.data.dataset,
            cfg.data.unlabeled,
            batch_size=batch_size,
            train_portion=cfg.data.train_portion,
            num_workers=cfg.data.num_workers,
            pin_memory=device.type == "cuda",
            **settings,
        )


@torch.no_grad()
def validation_accuracy(
    net: torch.nn.Module, arch: torch.nn.Module, loader, device, max_batches=None
) -> float:
    """Top-1 accuracy of a search network on D_val, in eval mode as DARTS's ``infer``."""
    was_training = net.training
    net.eval()
    correct = total = 0
    weights = arch()
    for index, (x, y) in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            break
        x, y = x.to(device), y.to(device)
        correct += (net(x, weights).argmax(-1) == y).sum().item()
        total += y.numel()
    net.train(was_training)
    return correct / max(total, 1)


@torch.no_grad()
def softmaxed_weights(arch: torch.nn.Module) -> dict[str, list]:
    """Every architecture parameter, softmaxed over candidate ops, as nested lists
    (or the method's own normalisation where it has one, e.g. PC-DARTS's per-node betas)."""
    if hasattr(arch, "normalized_weights"):
        return {
            name: w.detach().float().cpu().tolist() for name, w in arch.normalized_weights().items()
        }
    return {
        name: torch.softmax(p.detach().float(), dim=-1).cpu().tolist()
        for name, p in arch.named_parameters()
    }


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} threads"


LINE_FILES = ("metrics.jsonl", "genotypes.jsonl")
NETWORK_SIZE = "search.init_channels, search.layers or learners"


class SearchInterrupted(RunInterrupted):
    """SIGINT/SIGTERM stopped the search after a checkpoint; the message says how to resume."""


def precision_policy(cfg: DictConfig) -> dict:
    """The precisions the search runs its descent steps and its hypergradients in."""
    return describe_policy(sgl_config(cfg).autocast_dtype, cfg.hypergrad.type != "first_order")


def shard_loader(loader: DataLoader, rank: int, world_size: int, seed: int) -> DataLoader:
    """The same data and loading settings, each process taking its own part of every epoch's
    shuffle."""
    sampler = DistributedSampler(
        loader.dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        drop_last=True,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        prefetch_factor=loader.prefetch_factor,
    )


def run_search(cfg: DictConfig, resume: bool = False, trust_checkpoint: bool = False) -> dict:
    """Run the search described by ``cfg`` and return its summary (also in summary.json).

    The search runs in stages, each with fresh learners and its own engine: one stage for most
    methods, P-DARTS's stages of growing depth and shrinking op subsets for p_darts.
    With ``resume``, continue the run in ``cfg.run.dir`` from its last checkpoint (read as
    plain data; ``trust_checkpoint`` unpickles an earlier version's checkpoint that holds other
    objects). Under torchrun every process runs the search on its shard of the data; rank 0
    writes the folder.
    """
    device = resolve_device(cfg.device)
    context = init_distributed(device)
    device = context.device
    configure_backends(device, cfg.search.deterministic)
    batch_size = batch_per_process("search.batch_size", cfg.search.batch_size, context.world_size)
    seed_everything(cfg.seed)
    data = build_data(cfg, batch_size, device)
    train, val, unlabeled = data.train, data.val, data.unlabeled
    if context.enabled:
        train, val, unlabeled = (
            shard_loader(loader, context.rank, context.world_size, cfg.seed + index)
            for index, loader in enumerate((train, val, unlabeled))
        )
    steps_per_epoch = len(train)
    if cfg.search.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.search.steps_per_epoch)
    stages = search_stages(cfg)
    total_steps = sum(stage.epochs for stage in stages) * steps_per_epoch

    saved = None
    if resume:
        folder = RunFolder(cfg.run.dir, enabled=context.is_main)
        folder.remove_stale_temporaries()
        saved = read_search_checkpoint(folder, context, trust_checkpoint)
    else:
        folder = claim_for_run(cfg, "search", context, default_search_dir(cfg))
    # On a resume: with the overrides that apply (logging, checkpoints, device, ...).
    folder.write_text("config.yaml", to_yaml(cfg))
    if saved is None:
        position = SearchPosition(op_subsets=[None] * cfg.learners)
    else:
        position = SearchPosition(**saved["position"])
    with discarded_on_failed_start(folder, claimed=not resume):
        tracker = build_tracker(cfg, folder)
        tracker.start(
            {
                **OmegaConf.to_container(cfg, resolve=True),
                "precision_policy": precision_policy(cfg),
            },
            kind="search",
        )
        quiet = not cfg.run.progress or not context.is_main
        if not quiet:
            shared = (
                f"\n  {context.world_size} processes: global batch {cfg.search.batch_size}, "
                f"{batch_size} images per process"
                if context.enabled
                else ""
            )
            tqdm.write(f"run folder: {folder.path}\n" + data.describe() + shared)
        run = SearchRun(
            cfg=cfg,
            method=search_method(cfg.search.method),
            context=context,
            folder=folder,
            tracker=tracker,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            started=time.perf_counter() - (saved["elapsed_seconds"] if saved else 0.0),
            position=position,
            # Started at the checkpoint's step: its rate and ETA count this session's steps only.
            progress=tqdm(
                total=total_steps,
                initial=stages[position.stage].first_epoch * steps_per_epoch
                + (saved["engine"]["global_step"] if saved else 0),
                desc="search",
                disable=quiet,
            ),
        )
        learners, val_acc = run_stages(run, stages, data, (train, val, unlabeled), saved)
    summary = search_summary(run, learners, val_acc, run.elapsed())
    folder.write_json("summary.json", summary)
    tracker.finish(summary)
    if not quiet:
        print_summary(summary, folder.path)
    return summary


def run_stages(run: SearchRun, stages, data, loaders, saved: dict | None):
    """Every stage from the run's position on; the last stage's learners and their search
    validation accuracy. ``saved``: the checkpoint of the first of them, to continue from."""
    cfg, context, device = run.cfg, run.context, run.context.device
    train, val, unlabeled = loaders
    with StopRequests() as stop:
        for stage in stages[run.position.stage :]:
            stage_steps = stage.epochs * run.steps_per_epoch
            with out_of_memory("building the search networks", NETWORK_SIZE):
                learners = stage_learners(
                    cfg, data.num_classes, stage, stage_steps, run.position.op_subsets
                )
                # Same initial weights everywhere (broadcast anyway), each process its own
                # augmentations.
                if context.enabled:
                    seed_everything(cfg.seed + 1000 * context.rank + stage.index)
                sgl = sgl_config(cfg)
                sgl.arch_warmup_steps = stage.arch_warmup_epochs * run.steps_per_epoch
                engine = build_sgl_engine(
                    learners, train, val, unlabeled, sgl, train_iters=stage_steps, device=device
                )
            if saved is not None:  # the stage the checkpoint was taken in
                restore_engine(engine, context, saved)
                saved = None
            with out_of_memory("training the search", f"search.batch_size, {NETWORK_SIZE}"):
                train_stage(run, stage, learners, engine, stop)
                val_acc = finish_stage(run, stage, learners, val, device)
    run.progress.close()
    return learners, val_acc


def search_summary(run: SearchRun, learners, val_acc: list[float], wall_seconds: float) -> dict:
    """What summary.json holds; architecture.pt is written on the way."""
    cfg, context, device = run.cfg, run.context, run.context.device
    run.folder.save_torch(
        "architecture.pt", {k: learner.arch.state_dict() for k, learner in enumerate(learners)}
    )
    checksums = context.gather([weights_checksum(learner.arch) for learner in learners])
    summary = {
        "method": cfg.search.method,
        "hypergrad": cfg.hypergrad.type,
        "learners": cfg.learners,
        "lam": cfg.lam,
        "seed": cfg.seed,
        "dataset": cfg.data.dataset,
        "genotypes": [genotype_to_dict(learner.arch.genotype()) for learner in learners],
        "val_acc": val_acc,
        "steps": run.total_steps,
        "wall_seconds": wall_seconds,
        "seconds_per_step": wall_seconds / max(run.total_steps, 1),
        "device": str(device),
        "machine": machine_description(device),
        "precision_policy": precision_policy(cfg),
        "processes": context.world_size,
        "global_batch_size": cfg.search.batch_size,
        "per_rank_batch_size": batch_per_process(
            "search.batch_size", cfg.search.batch_size, context.world_size
        ),
        "arch_checksums": checksums,
        "gpu_hours" if device.type == "cuda" else "cpu_hours": wall_seconds
        * context.world_size
        / 3600,
    }
    if run.position.stages:
        summary["stages"] = run.position.stages
    return summary


@dataclass
class SearchPosition:
    """Where a search is, beyond its engine's state: saved in every checkpoint."""

    stage: int = 0
    # Per learner its (normal, reduce) per-edge op lists in this stage (P-DARTS), None: every op.
    op_subsets: list = field(default_factory=list)
    # The finished stages' records (P-DARTS): what stages.json holds.
    stages: list[dict] = field(default_factory=list)


@dataclass
class SearchRun:
    """What every stage of one search shares: the config, the folder and the bookkeeping."""

    cfg: DictConfig
    method: SearchMethod
    context: DistributedContext
    folder: RunFolder
    tracker: Any
    steps_per_epoch: int
    total_steps: int
    started: float  # perf_counter() when the search would have started had it never stopped
    position: SearchPosition
    progress: tqdm

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def train_stage(run: SearchRun, stage: SearchStage, learners, engine, stop: StopRequests) -> None:
    """Step ``engine`` to the end of ``stage``: log the metrics, record the architectures after
    every epoch, checkpoint, and stop cleanly (SearchInterrupted) when a signal asks to.

    The steps themselves never read a value back (engine/sgl_engine.py); NaN and infinite values
    are looked for on logging steps, before the architectures are recorded and before every
    checkpoint, so no record and no checkpoint is written from a non-finite state, and the
    NonFiniteError names the step the first such value came from."""
    cfg, folder, steps_per_epoch = run.cfg, run.folder, run.steps_per_epoch
    stage_steps = stage.epochs * steps_per_epoch
    first_step = stage.first_epoch * steps_per_epoch  # steps of the stages before this one
    staged = stage.p_darts is not None
    window_seconds, window_steps = 0.0, 0
    wants_stop = StopVote(run.context, stop)

    def checkpoint() -> None:
        engine.check_finite()  # a checkpoint never holds a non-finite state
        save_checkpoint(folder, engine, run.context, run.elapsed(), run.position)

    while engine.global_step < stage_steps:
        epoch = stage.first_epoch + engine.global_step // steps_per_epoch
        tick = time.perf_counter()
        if run.method.on_step is not None:
            run.method.on_step(learners, engine.global_step / stage_steps)
        engine.step()
        window_seconds += time.perf_counter() - tick
        window_steps += 1
        run.progress.update(1)
        step = first_step + engine.global_step  # steps since the search started
        if step % cfg.run.log_every == 0 or engine.global_step == stage_steps:
            # The steps never wait for the device; these reads do, so they count in the window.
            tick = time.perf_counter()
            engine.check_finite()
            metrics = engine.metrics()
            window_seconds += time.perf_counter() - tick
            row = {"step": step, "epoch": epoch}
            if staged:
                row["stage"] = stage.index
            row["seconds_per_step"] = window_seconds / window_steps
            row.update(metrics)
            folder.append_jsonl("metrics.jsonl", row)
            run.tracker.log_metrics(row, step)
            window_seconds, window_steps = 0.0, 0
            run.progress.set_postfix(
                epoch=epoch, loss=f"{row.get('learner0/w_train_loss', math.nan):.3f}"
            )
        if step % steps_per_epoch == 0:
            engine.check_finite()
            record_architectures(
                folder, run.tracker, learners, epoch, step, stage.index if staged else None
            )
            checkpoint()
        elif cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
            checkpoint()
        if step < run.total_steps and wants_stop():
            if step % steps_per_epoch and not (
                cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0
            ):
                checkpoint()
            run.progress.close()
            raise SearchInterrupted(
                f"search stopped by signal {stop.received or 'on another process'} after step {step} of "
                f"{run.total_steps}; resume with: --resume {folder.path}"
            )


def finish_stage(run: SearchRun, stage: SearchStage, learners, val, device) -> list[float]:
    """The learners' search validation accuracy after ``stage``. A P-DARTS stage also goes on
    record (stages.json, architecture-stage{i}.pt) and, unless it is the last, hands each
    learner's strongest ``ops_kept`` ops per edge to the next stage."""
    cfg, context = run.cfg, run.context
    val_acc = [
        validation_accuracy(learner.w_net, learner.arch, val, device, cfg.search.val_batches)
        for learner in learners
    ]
    if context.enabled:
        val_acc = [acc / context.world_size for acc in context.all_reduce_sum(val_acc)]
    if stage.p_darts is None:
        return val_acc

    drops = [None] * len(learners)
    if not stage.is_last:
        drops = [learner.arch.drop_weakest_ops(stage.p_darts.ops_kept) for learner in learners]
        # Every process goes on with rank 0's op subsets, even if a near-tie ranked ops otherwise.
        drops = context.gather(drops)[0]
    architecture_file = f"architecture-stage{stage.index}.pt"
    run.folder.save_torch(
        architecture_file, {k: learner.arch.state_dict() for k, learner in enumerate(learners)}
    )
    position = run.position
    position.stages.append(
        {
            "index": stage.index,
            "cells": stage.p_darts.layers,
            "ops_per_edge": stage.p_darts.ops_per_edge,
            "ops_kept": None if stage.is_last else stage.p_darts.ops_kept,
            "skip_dropout": stage.p_darts.skip_dropout,
            "epochs": stage.epochs,
            "steps": stage.epochs * run.steps_per_epoch,
            "architecture": architecture_file,
            "learners": [
                {
                    "ops": {
                        "normal": as_lists(learner.arch.normal_primitives),
                        "reduce": as_lists(learner.arch.reduce_primitives),
                    },
                    "dropped": None
                    if drop is None
                    else {"normal": as_lists(drop[0].dropped), "reduce": as_lists(drop[1].dropped)},
                    "genotype": genotype_to_dict(learner.arch.genotype()),
                    "val_acc": acc,
                }
                for learner, drop, acc in zip(learners, drops, val_acc, strict=True)
            ],
        }
    )
    run.folder.write_json("stages.json", position.stages)
    if not stage.is_last:
        position.stage += 1
        position.op_subsets = [(normal.kept, reduce.kept) for normal, reduce in drops]
    return val_acc


def as_lists(per_edge) -> list[list[str]]:
    """Per-edge op lists as JSON has them (the returned summary equals summary.json)."""
    return [list(ops) for ops in per_edge]


def record_architectures(
    folder, tracker, learners, epoch: int, step: int, stage: int | None = None
) -> None:
    genotypes = [genotype_to_dict(learner.arch.genotype()) for learner in learners]
    weights = [softmaxed_weights(learner.arch) for learner in learners]
    row = {"epoch": epoch, "step": step}
    if stage is not None:
        row["stage"] = stage
    row.update(genotypes=genotypes, weights=weights)
    folder.append_jsonl("genotypes.jsonl", row)
    tracker.log_architecture(epoch, genotypes, weights)


def save_checkpoint(
    folder: RunFolder, engine, context, elapsed: float, position: SearchPosition
) -> None:
    """Atomically replace the checkpoint (rank 0 writes; every rank's RNG state is in it)."""
    rng = context.gather(rng_state())
    write_checkpoint(
        folder,
        "search",
        {
            "engine": engine.state_dict(),
            "position": dataclasses.asdict(position),
            "rng": rng,
            "line_files": folder.line_file_sizes(LINE_FILES),
            "elapsed_seconds": elapsed,
        },
    )


def read_search_checkpoint(folder: RunFolder, context, trust: bool = False) -> dict | None:
    """The last checkpoint; the line files are cut back to it (their later lines describe steps
    that will be run again). None when the run stopped before its first checkpoint: it starts
    again from its first step, in its folder."""
    path = folder.file(CHECKPOINT)
    if not path.is_file():
        if context.is_main:
            print(
                f"note: {folder.path} has no checkpoint yet (the search stopped before its first "
                "one); it starts again from its first step",
                file=sys.stderr,
            )
        folder.truncate_line_files(dict.fromkeys(LINE_FILES, 0))
        return None
    state = read_checkpoint(folder.path, "search", trust=trust, writer=context.is_main)
    folder.truncate_line_files(state["line_files"])
    return state


def restore_engine(engine, context, state: dict) -> None:
    """Put ``engine`` (built for the checkpoint's stage) and the RNGs back where ``state`` was."""
    try:
        engine.load_state_dict(state["engine"])
    except (KeyError, RuntimeError, ValueError) as error:
        # A checkpoint that does not fit the networks its run's config.yaml describes.
        reason = str(error).splitlines()[0]
        raise RunFolderError(
            f"the checkpoint does not fit the search that config.yaml describes ({reason}): "
            "config.yaml or checkpoint.pt was changed or replaced after the run wrote them; "
            "put back the run's own files, or start a new run without --resume"
        ) from None
    # After the data position was replayed: replaying it draws augmentations from the RNG.
    set_rng_state(state["rng"][context.rank])


def print_summary(summary: dict, path: Path) -> None:
    cost_key = "gpu_hours" if "gpu_hours" in summary else "cpu_hours"
    print(
        f"\nsearch finished: {summary['method']} with SGL K={summary['learners']}, "
        f"hypergrad={summary['hypergrad']}, {summary['steps']} steps in {summary['wall_seconds']:.1f} s "
        f"({summary[cost_key]:.4f} {cost_key.replace('_', '-')} on {summary['machine']})"
    )
    for k, (acc, genotype) in enumerate(zip(summary["val_acc"], summary["genotypes"])):
        normal = ", ".join(f"{op}<-{src}" for op, src in genotype["normal"])
        reduce = ", ".join(f"{op}<-{src}" for op, src in genotype["reduce"])
        print(
            f"  learner {k}: search val acc {100 * acc:.2f}%\n    normal: {normal}\n    reduce: {reduce}"
        )
    print(f"run folder: {path}")
