"""One architecture search, start to finish: data, K learners, the SGL engine, the run folder.

The whole training step is ``engine.step()``; the run folder, checkpoints, RNG states, the stop
vote and summary.json are the ``RunLifecycle``'s (``lifecycle.py``). A search runs in the stages
its method plans, with fresh learners each (P-DARTS's progressive stages; one for most methods).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from sgl_betty.data import build_search_data
from sgl_betty.engine import build_sgl_engine
from sgl_betty.engine.precision import describe_policy
from sgl_betty.errors import RunFolderError, RunInterrupted
from sgl_betty.genotypes import genotype_to_dict
from sgl_betty.runtime import (
    DistributedContext,
    configure_backends,
    init_distributed,
    machine_description,
    resolve_device,
    seed_everything,
    weights_checksum,
)
from sgl_betty.tracking import RunFolder
from sgl_betty.tracking.summaries import SearchSummary, cost_label, device_hours

from .config import ConfigError, batch_per_process, sgl_config
from .interruption import CHECKPOINT  # noqa: F401  (for callers)
from .lifecycle import RunLifecycle
from .methods import SearchMethod, SearchStage, search_method, stage_learners
from .resources import out_of_memory
from .run_dirs import default_search_dir


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
    methods, several for a method whose builder plans them (P-DARTS's stages of growing depth
    and shrinking op subsets). With ``resume``, continue the run in ``cfg.run.dir`` from its
    last checkpoint (read as plain data; ``trust_checkpoint`` unpickles an earlier version's
    checkpoint that holds other objects). Under torchrun every process runs the search on its
    shard of the data; rank 0 writes the folder.
    """
    device = resolve_device(cfg.device)
    context = init_distributed(device)
    configure_backends(context.device, cfg.search.deterministic)
    batch_size = batch_per_process("search.batch_size", cfg.search.batch_size, context.world_size)
    seed_everything(cfg.seed)
    data = build_data(cfg, batch_size, context.device)
    loaders = process_loaders(data, cfg.seed, context)
    plan = plan_search(cfg, batches=len(loaders[0]))
    lifecycle = RunLifecycle(
        cfg,
        "search",
        context,
        line_files=LINE_FILES,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
    )
    saved = lifecycle.load_checkpoint() if resume else None
    lifecycle.open_folder(default_search_dir(cfg), saved)
    with lifecycle.first_steps():
        run = start_search(plan, lifecycle, data, batch_size, saved)
        learners, val_acc = run_stages(run, data, loaders, saved)
    summary = lifecycle.finish(search_summary(run, learners, val_acc, lifecycle.elapsed()))
    if run.announces:
        print_summary(summary, lifecycle.folder.path)
    return summary.to_dict()


def process_loaders(data, seed: int, context: DistributedContext) -> tuple:
    """D_tr, D_val and D_u as this process reads them: under torchrun each its own shard."""
    loaders = (data.train, data.val, data.unlabeled)
    if not context.enabled:
        return loaders
    return tuple(
        shard_loader(loader, context.rank, context.world_size, seed + index)
        for index, loader in enumerate(loaders)
    )


@dataclass(frozen=True)
class SearchPlan:
    """What a search will run: its method, its stages and their steps."""

    cfg: DictConfig
    method: SearchMethod
    stages: list[SearchStage]
    steps_per_epoch: int
    total_steps: int


def plan_search(cfg: DictConfig, batches: int) -> SearchPlan:
    """The plan of the search ``cfg`` describes, whose epochs have ``batches`` batches of D_tr
    (at most search.steps_per_epoch of them are used)."""
    steps_per_epoch = batches
    if cfg.search.steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.search.steps_per_epoch)
    method = search_method(cfg.search.method)
    stages = method.staging.stages(cfg)
    total_steps = sum(stage.epochs for stage in stages) * steps_per_epoch
    return SearchPlan(cfg, method, stages, steps_per_epoch, total_steps)


def start_search(
    plan: SearchPlan, lifecycle: RunLifecycle, data, batch_size: int, saved: dict | None
) -> SearchRun:
    """The tracker, the progress bar and the bookkeeping of ``plan`` (continued from
    ``saved``)."""
    cfg, context = plan.cfg, lifecycle.context
    lifecycle.start_tracker(
        {**OmegaConf.to_container(cfg, resolve=True), "precision_policy": precision_policy(cfg)}
    )
    announces = cfg.run.progress and context.is_main
    if announces:
        shared = (
            f"\n  {context.world_size} processes: global batch {cfg.search.batch_size}, "
            f"{batch_size} images per process"
            if context.enabled
            else ""
        )
        tqdm.write(f"run folder: {lifecycle.folder.path}\n" + data.describe() + shared)
    if saved is None:
        position = SearchPosition(op_subsets=[None] * cfg.learners)
    else:
        position = SearchPosition(**saved["position"])
    lifecycle.start_clock(saved)
    done = plan.stages[position.stage].first_epoch * plan.steps_per_epoch
    return SearchRun(
        cfg=cfg,
        method=plan.method,
        stages=plan.stages,
        lifecycle=lifecycle,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        position=position,
        announces=announces,
        # Started at the checkpoint's step: its rate and ETA count this session's steps only.
        progress=tqdm(
            total=plan.total_steps,
            initial=done + (saved["engine"]["global_step"] if saved else 0),
            desc="search",
            disable=not announces,
        ),
    )


def run_stages(run: SearchRun, data, loaders, saved: dict | None):
    """Every stage from the run's position on; the last stage's learners and their search
    validation accuracy. ``saved``: the checkpoint of the first of them, to continue from."""
    with run.lifecycle.stop_requests():
        for stage in run.stages[run.position.stage :]:
            learners, engine = build_stage(run, stage, data.num_classes, loaders)
            if saved is not None:  # the stage the checkpoint was taken in
                restore_engine(engine, run.lifecycle, saved)
                saved = None
            with out_of_memory("training the search", f"search.batch_size, {NETWORK_SIZE}"):
                train_stage(run, stage, learners, engine)
                val_acc = finish_stage(run, stage, learners, loaders[1])
    run.progress.close()
    return learners, val_acc


def build_stage(run: SearchRun, stage: SearchStage, num_classes: int, loaders):
    """The learners of ``stage`` and their engine."""
    cfg, context = run.cfg, run.context
    stage_steps = stage.epochs * run.steps_per_epoch
    with out_of_memory("building the search networks", NETWORK_SIZE):
        learners = stage_learners(cfg, num_classes, stage, stage_steps, run.position.op_subsets)
        # Same initial weights everywhere (broadcast anyway), each process its own
        # augmentations.
        if context.enabled:
            seed_everything(cfg.seed + 1000 * context.rank + stage.index)
        sgl = sgl_config(cfg)
        sgl.arch_warmup_steps = stage.arch_warmup_epochs * run.steps_per_epoch
        engine = build_sgl_engine(
            learners, *loaders, sgl, train_iters=stage_steps, device=context.device
        )
    return learners, engine


def search_summary(
    run: SearchRun, learners, val_acc: list[float], wall_seconds: float
) -> SearchSummary:
    """What summary.json holds; architecture.pt is written on the way."""
    cfg, context, device = run.cfg, run.context, run.context.device
    run.folder.save_torch(
        "architecture.pt", {k: learner.arch.state_dict() for k, learner in enumerate(learners)}
    )
    checksums = context.gather([weights_checksum(learner.arch) for learner in learners])
    return SearchSummary(
        method=cfg.search.method,
        hypergrad=cfg.hypergrad.type,
        learners=cfg.learners,
        lam=cfg.lam,
        seed=cfg.seed,
        dataset=cfg.data.dataset,
        genotypes=[genotype_to_dict(learner.arch.genotype()) for learner in learners],
        val_acc=val_acc,
        steps=run.total_steps,
        wall_seconds=wall_seconds,
        seconds_per_step=wall_seconds / max(run.total_steps, 1),
        device=str(device),
        machine=machine_description(device),
        precision_policy=precision_policy(cfg),
        processes=context.world_size,
        global_batch_size=cfg.search.batch_size,
        per_rank_batch_size=batch_per_process(
            "search.batch_size", cfg.search.batch_size, context.world_size
        ),
        arch_checksums=checksums,
        device_hours=device_hours(wall_seconds, context.world_size),
        device_type=device.type,
        stages=run.position.stages or None,
    )


@dataclass
class SearchPosition:
    """Where a search is, beyond its engine's state: saved in every checkpoint."""

    stage: int = 0
    # Per learner what the method carries into this stage (P-DARTS: its (normal, reduce)
    # per-edge op lists), None: the first stage's.
    op_subsets: list = field(default_factory=list)
    # The finished stages' records (a staged method's): what stages.json holds.
    stages: list[dict] = field(default_factory=list)


@dataclass
class SearchRun:
    """What every stage of one search shares: the config, the method, the run's lifecycle
    (folder, tracker, checkpoints, stop vote) and the bookkeeping."""

    cfg: DictConfig
    method: SearchMethod
    stages: list[SearchStage]
    lifecycle: RunLifecycle
    steps_per_epoch: int
    total_steps: int
    position: SearchPosition
    announces: bool  # whether this process prints progress and the summary
    progress: tqdm

    @property
    def context(self) -> DistributedContext:
        return self.lifecycle.context

    @property
    def folder(self) -> RunFolder:
        return self.lifecycle.folder

    @property
    def tracker(self):
        return self.lifecycle.tracker

    @property
    def staged(self) -> bool:
        return self.method.staging.staged


def train_stage(run: SearchRun, stage: SearchStage, learners, engine) -> None:
    """Step ``engine`` to the end of ``stage``: log the metrics, record the architectures after
    every epoch, checkpoint, and stop cleanly (SearchInterrupted) when a signal asks to.

    The steps themselves never read a value back (engine/sgl_engine.py); NaN and infinite values
    are looked for on logging steps, before the architectures are recorded and before every
    checkpoint, so no record and no checkpoint is written from a non-finite state, and the
    NonFiniteError names the step the first such value came from."""
    steps_per_epoch, every = run.steps_per_epoch, run.cfg.checkpoint.every_steps
    stage_steps = stage.epochs * steps_per_epoch
    first_step = stage.first_epoch * steps_per_epoch  # steps of the stages before this one
    window = StepWindow()
    while engine.global_step < stage_steps:
        epoch = stage.first_epoch + engine.global_step // steps_per_epoch
        with window.timed():
            if run.method.on_step is not None:
                run.method.on_step(learners, engine.global_step / stage_steps)
            engine.step()
        run.progress.update(1)
        step = first_step + engine.global_step  # steps since the search started
        if step % run.cfg.run.log_every == 0 or engine.global_step == stage_steps:
            log_metrics(run, stage, engine, window, step, epoch)
        periodic = bool(every) and step % every == 0
        if step % steps_per_epoch == 0:
            engine.check_finite()
            stage_index = stage.index if run.staged else None
            record_architectures(run.folder, run.tracker, learners, epoch, step, stage_index)
            save_checkpoint(run, engine)
        elif periodic:
            save_checkpoint(run, engine)
        if step < run.total_steps and run.lifecycle.should_stop():
            if step % steps_per_epoch and not periodic:
                save_checkpoint(run, engine)
            run.progress.close()
            message = run.lifecycle.stop_message(f"step {step} of {run.total_steps}")
            raise SearchInterrupted(f"{message}; resume with: {run.lifecycle.resume_command()}")


@dataclass
class StepWindow:
    """The seconds and steps since the last logged row (the seconds per step it reports)."""

    seconds: float = 0.0
    steps: int = 0

    @contextmanager
    def timed(self, steps: int = 1) -> Iterator[None]:
        tick = time.perf_counter()
        yield
        self.seconds += time.perf_counter() - tick
        self.steps += steps

    def seconds_per_step(self) -> float:
        seconds = self.seconds / self.steps
        self.seconds, self.steps = 0.0, 0
        return seconds


def log_metrics(run: SearchRun, stage: SearchStage, engine, window: StepWindow, step, epoch):
    """A row of metrics.jsonl and of the tracker, after a non-finite check."""
    # The steps never wait for the device; these reads do, so they count in the window.
    with window.timed(steps=0):
        engine.check_finite()
        metrics = engine.metrics()
    row = {"step": step, "epoch": epoch}
    if run.staged:
        row["stage"] = stage.index
    row["seconds_per_step"] = window.seconds_per_step()
    row.update(metrics)
    run.folder.append_jsonl("metrics.jsonl", row)
    run.tracker.log_metrics(row, step)
    run.progress.set_postfix(epoch=epoch, loss=f"{row.get('learner0/w_train_loss', math.nan):.3f}")


def finish_stage(run: SearchRun, stage: SearchStage, learners, val) -> list[float]:
    """The learners' search validation accuracy after ``stage``. A staged method's stage also
    goes on record (stages.json, architecture-stage{i}.pt) and, unless it is the last, hands
    the method's state (P-DARTS: each learner's strongest ops per edge) to the next stage."""
    cfg, context = run.cfg, run.context
    val_acc = [
        validation_accuracy(
            learner.w_net, learner.arch, val, context.device, cfg.search.val_batches
        )
        for learner in learners
    ]
    if context.enabled:
        val_acc = [acc / context.world_size for acc in context.all_reduce_sum(val_acc)]
    if not run.staged:
        return val_acc
    architecture_file = f"architecture-stage{stage.index}.pt"
    end = run.method.staging.end_stage(
        stage,
        learners,
        val_acc,
        stage.epochs * run.steps_per_epoch,
        architecture_file,
        agree=lambda value: context.gather(value)[0],
    )
    run.folder.save_torch(
        architecture_file, {k: learner.arch.state_dict() for k, learner in enumerate(learners)}
    )
    position = run.position
    if end.record is not None:
        position.stages.append(end.record)
        run.folder.write_json("stages.json", position.stages)
    if not stage.is_last:
        position.stage += 1
        position.op_subsets = end.next_state
    return val_acc


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


def save_checkpoint(run: SearchRun, engine) -> None:
    """The engine and the search's position into checkpoint.pt (never a non-finite state)."""
    engine.check_finite()
    run.lifecycle.save_checkpoint(
        {"engine": engine.state_dict(), "position": dataclasses.asdict(run.position)}
    )


def restore_engine(engine, lifecycle: RunLifecycle, state: dict) -> None:
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
    lifecycle.restore_rng(state)


def print_summary(summary: SearchSummary, path: Path) -> None:
    print(
        f"\nsearch finished: {summary.method} with SGL K={summary.learners}, "
        f"hypergrad={summary.hypergrad}, {summary.steps} steps in {summary.wall_seconds:.1f} s "
        f"({summary.device_hours:.4f} {cost_label(summary.device_type)} on {summary.machine})"
    )
    for k, (acc, genotype) in enumerate(zip(summary.val_acc, summary.genotypes)):
        normal = ", ".join(f"{op}<-{src}" for op, src in genotype["normal"])
        reduce = ", ".join(f"{op}<-{src}" for op, src in genotype["reduce"])
        print(
            f"  learner {k}: search val acc {100 * acc:.2f}%\n    normal: {normal}\n    reduce: {reduce}"
        )
    print(f"run folder: {path}")
