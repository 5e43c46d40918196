"""One evaluation run: train the network of a found cell from scratch and report its test error.

``run_evaluation(cfg)`` reads ``cfg.eval`` (the paper's Section 3.2: 20 cells, C=36, 600 epochs,
batch 96, cutout 16, auxiliary weight 0.4, drop path 0.2, gradient clip 5, cosine learning
rate; the ImageNet preset switches to DARTS's train_imagenet.py) and writes the run folder:
config.yaml, metrics.jsonl (a row per epoch), model.pt and summary.json. Under torchrun it
trains with DistributedDataParallel; only rank 0 writes.

While it trains, the run keeps checkpoint.pt (written atomically every
``checkpoint.every_steps`` optimizer steps and at the end of every epoch, removed once
summary.json is written): weights, optimizer, the epoch and the step inside it, every rank's
RNG states (also those at the start of the epoch, to replay its shuffle and augmentations) and
partial sums, the length of metrics.jsonl. ``run_evaluation(cfg, resume=True)`` (the recipes'
``--stage eval --resume RUN_DIR``) continues from it to the weights and test error an
uninterrupted run gets (bitwise on CPU). SIGINT/SIGTERM stop the run between two steps after a
checkpoint (EvaluationInterrupted, exit 130 in the recipes).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from sgl_betty.data import build_eval_data
from sgl_betty.data.imagenet import load_imagenet
from sgl_betty.data.seeding import seeded_generator
from sgl_betty.evaluation.distributed import (
    DistributedContext,
    init_distributed,
    weights_checksum,
)
from sgl_betty.evaluation.saved_model import NetworkSpec, trained_network_payload
from sgl_betty.evaluation.trainer import (
    LR_SCHEDULES,
    EpochResult,
    EpochSums,
    EvalTrainer,
    TestResult,
    TrainingSettings,
)
from sgl_betty.genotypes import Genotype, genotype_from_dict, genotype_to_dict
from sgl_betty.params import count_parameters_m
from sgl_betty.problems import NonFiniteError
from sgl_betty.runtime import configure_backends
from sgl_betty.tracking import RunFolder, Tracker, build_tracker

from .checkpoints import read_checkpoint, write_checkpoint
from .config import ConfigError, batch_per_process, to_yaml
from .genotype_source import GenotypeChoice, resolve_eval_genotype
from .interruption import (
    CHECKPOINT,
    RunInterrupted,
    StopRequests,
    StopVote,
    rng_state,
    set_rng_state,
)
from .resources import out_of_memory
from .run_dirs import claim_for_run, default_eval_dir, discarded_on_failed_start
from .search import (
    data_settings,
    data_settings_checked,
    machine_description,
    resolve_device,
    seed_everything,
)

EVAL_DATASETS = ("cifar100", "cifar10", "synthetic", "imagenet")
CIFAR_IMAGE_SIZE = 32
# The smallest map each auxiliary head accepts: CIFAR's pools 5/3 then convolves 2x2, ImageNet's
# pools 5/2 then convolves 2x2.
AUXILIARY_MIN_SIZE = {"cifar": 8, "imagenet": 7}
# Stride-2 stages before the auxiliary head: the ImageNet stem's three, then two reduction cells.
HALVINGS_BEFORE_AUXILIARY = {"cifar": 2, "imagenet": 5}


def eval_dataset(cfg: DictConfig) -> str:
    return cfg.eval.dataset or cfg.data.dataset


def network_kind(dataset: str) -> str:
    return "imagenet" if dataset == "imagenet" else "cifar"


def eval_image_size(cfg: DictConfig) -> int:
    if eval_dataset(cfg) == "imagenet":
        return cfg.eval.imagenet.crop_size
    return cfg.data.image_size or CIFAR_IMAGE_SIZE


def _auxiliary_input_size(image_size: int, kind: str) -> int:
    size = image_size
    for _ in range(HALVINGS_BEFORE_AUXILIARY[kind]):
        size = math.ceil(size / 2)
    return size


def check_eval_config(cfg: DictConfig, world_size: int = 1) -> None:
    """The checks of ``cfg.eval`` the schema cannot express; ConfigError naming key and fix."""
    e = cfg.eval
    dataset = eval_dataset(cfg)
    if dataset not in EVAL_DATASETS:
        raise ConfigError(
            f"eval.dataset={dataset!r} is not allowed; choose one of: {', '.join(EVAL_DATASETS)}"
        )
    if e.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(
            f"eval.lr_schedule={e.lr_schedule!r} is not allowed; choose one of: {', '.join(LR_SCHEDULES)}"
        )
    if not 0 <= e.label_smoothing < 1:
        raise ConfigError(f"eval.label_smoothing={e.label_smoothing} must be in [0, 1)")
    if not e.lr_gamma > 0:
        raise ConfigError(f"eval.lr_gamma={e.lr_gamma} must be > 0")
    if e.lr_decay_period < 1:
        raise ConfigError(f"eval.lr_decay_period={e.lr_decay_period} must be >= 1 (epochs)")
    if e.layers < 3:
        raise ConfigError(
            f"eval.layers={e.layers} must be >= 3 (the network has two reduction cells)"
        )
    batch_per_process("eval.batch_size", e.batch_size, world_size)
    if cfg.seeds is not None:
        if not cfg.seeds:
            raise ConfigError(
                "seeds=[] is empty; list at least one seed (seeds=[1,2,3]) or leave seeds unset"
            )
        if len(set(cfg.seeds)) != len(cfg.seeds):
            raise ConfigError(
                f"seeds={list(cfg.seeds)} repeats a seed; each seed is one run folder seed-<s>"
            )
    kind = network_kind(dataset)
    if kind == "imagenet":
        crop = e.imagenet.crop_size
        if crop <= 0 or crop % 32:
            raise ConfigError(
                f"eval.imagenet.crop_size={crop} must be a positive multiple of 32: the ImageNet "
                "network halves it five times (224 in the reference)"
            )
        if len(e.imagenet.color_jitter) != 4:
            raise ConfigError(
                f"eval.imagenet.color_jitter={list(e.imagenet.color_jitter)} needs 4 values: "
                "brightness, contrast, saturation, hue"
            )
    if e.auxiliary:
        image_size = eval_image_size(cfg)
        minimum = AUXILIARY_MIN_SIZE[kind]
        if _auxiliary_input_size(image_size, kind) < minimum:
            # ImageNet crops also have to be multiples of 32.
            step = 32 if kind == "imagenet" else 1
            smallest = next(
                s for s in range(step, 4096, step) if _auxiliary_input_size(s, kind) >= minimum
            )
            key = "eval.imagenet.crop_size" if kind == "imagenet" else "data.image_size"
            raise ConfigError(
                f"eval.auxiliary=true: the auxiliary head needs {minimum}x{minimum} maps or larger, "
                f"but {image_size} px images give {_auxiliary_input_size(image_size, kind)} px there; "
                f"use {key} >= {smallest} or eval.auxiliary=false"
            )


def training_settings(cfg: DictConfig) -> TrainingSettings:
    e = cfg.eval
    return TrainingSettings(
        epochs=e.epochs,
        lr=e.lr,
        momentum=e.momentum,
        weight_decay=e.weight_decay,
        lr_schedule=e.lr_schedule,
        lr_gamma=e.lr_gamma,
        lr_decay_period=e.lr_decay_period,
        auxiliary_weight=e.auxiliary_weight,
        drop_path_prob=e.drop_path_prob,
        grad_clip=e.grad_clip,
        label_smoothing=e.label_smoothing,
        steps_per_epoch=e.steps_per_epoch,
        precision=e.precision,
    )


def network_spec(cfg: DictConfig, genotype: Genotype, num_classes: int) -> NetworkSpec:
    return NetworkSpec(
        kind=network_kind(eval_dataset(cfg)),
        init_channels=cfg.eval.init_channels,
        num_classes=num_classes,
        layers=cfg.eval.layers,
        auxiliary=cfg.eval.auxiliary,
        genotype=genotype_to_dict(genotype),
    )


@dataclass
class EvalDatasets:
    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    description: str


def build_eval_datasets(cfg: DictConfig, batch_size: int) -> EvalDatasets:
    """Training and test sets of the evaluation (augmentation included), before any loader."""
    dataset = eval_dataset(cfg)
    if dataset == "imagenet":
        spec = cfg.eval.imagenet
        splits = load_imagenet(
            spec.root,
            crop_size=spec.crop_size,
            resize_size=spec.resize_size,
            color_jitter=list(spec.color_jitter),
        )
        return EvalDatasets(
            dataset, splits.train, splits.test, splits.num_classes, splits.describe()
        )
    with data_settings_checked("evaluation", "eval.batch_size", cfg.eval.batch_size):
        eval_data = build_eval_data(
            dataset,
            batch_size=batch_size,
            cutout=cfg.eval.cutout,
            cutout_length=cfg.eval.cutout_length,
            num_workers=0,
            **data_settings(cfg),
        )
    return EvalDatasets(
        dataset,
        eval_data.train.dataset,
        eval_data.test.dataset,
        eval_data.num_classes,
        eval_data.describe(),
    )


def build_loaders(
    datasets: EvalDatasets, cfg: DictConfig, context: DistributedContext
) -> tuple[DataLoader, DataLoader]:
    """Each rank's loaders: a disjoint share of every shuffled epoch, and of the test set."""
    batch_size = cfg.eval.batch_size
    if len(datasets.train) < batch_size:
        raise ConfigError(
            f"the {datasets.name} training set has {len(datasets.train)} images, fewer than one "
            f"batch of eval.batch_size={batch_size}; lower eval.batch_size or use more data"
        )
    per_rank = batch_size // context.world_size
    workers = cfg.data.num_workers
    pin_memory = context.device.type == "cuda"
    # Given num_replicas and rank explicitly, the sampler needs no process group, so one
    # process uses it too: a shuffle reproducible from the seed, reshuffled by set_epoch.
    # Not persistent: a worker's augmentation RNG would then run on across epochs, and a run
    # resumed in epoch e could not replay it. Fresh workers draw their seeds from the RNG state
    # at the start of the epoch, which the checkpoint keeps.
    sampler = DistributedSampler(
        datasets.train,
        num_replicas=context.world_size,
        rank=context.rank,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
    )
    train = DataLoader(
        datasets.train,
        batch_size=per_rank,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=pin_memory,
    )
    test_size = len(datasets.test)
    if cfg.eval.test_batches is not None:
        test_size = min(test_size, cfg.eval.test_batches * batch_size)
    # Strided shares without padding, so that every test image is counted exactly once.
    share = Subset(datasets.test, range(context.rank, test_size, context.world_size))
    test = DataLoader(
        share, batch_size=per_rank, shuffle=False, num_workers=workers, pin_memory=pin_memory
    )
    return train, test


def _seed_this_rank(seed: int, rank: int) -> None:
    # Rank 0 keeps the stream of a one-process run; the others draw their own augmentation and
    # drop-path masks, as separate GPUs would.
    if rank:
        seed_everything(seeded_generator(seed, rank).initial_seed())


NETWORK_SIZE = "eval.init_channels or eval.layers"
LINE_FILES = ("metrics.jsonl",)


class EvaluationInterrupted(RunInterrupted):
    """SIGINT/SIGTERM stopped the evaluation after a checkpoint; the message says how to resume.

    ``what`` is the message without the resume command."""

    def __init__(self, what: str, path: Path, world_size: int):
        super().__init__(f"{what}; resume with: {resume_command(path, world_size)}")
        self.what = what


def resume_command(path: Path, world_size: int) -> str:
    command = f"--stage eval --resume {path}"
    if world_size > 1:
        command += f" (under torchrun with --nproc_per_node {world_size}, as before)"
    return command


@dataclass
class _Progress:
    """Where the run is: what a checkpoint needs beyond the trainer's state and the RNGs."""

    epoch: int = 0
    # The results of the last finished epoch (for summary.json).
    train_result: EpochResult | None = None
    test_result: TestResult | None = None


def _choice_state(choice: GenotypeChoice) -> dict:
    state = dataclasses.asdict(choice)
    state["genotype"] = genotype_to_dict(choice.genotype)
    return state


def _choice_from_state(state: dict) -> GenotypeChoice:
    return GenotypeChoice(**{**state, "genotype": genotype_from_dict(state["genotype"])})


def finished_summary(path: Path, kind: str = "eval", what: str = "an evaluation") -> dict | None:
    """The summary.json of a finished run of ``kind`` in ``path``, None while it is unfinished."""
    file = Path(path) / "summary.json"
    if not file.is_file():
        return None
    summary = json.loads(file.read_text())
    if summary.get("kind") != kind:
        raise ConfigError(
            f"cannot resume {path} as {what}: its summary.json is that of a finished "
            f"{summary.get('kind', 'search')} run"
        )
    return summary


def read_eval_checkpoint(
    path: Path, context: DistributedContext, trust: bool = False
) -> dict | None:
    """The evaluation checkpoint in ``path``; None when the run stopped before its first (at
    the end of its first epoch or after checkpoint.every_steps steps): it starts again."""
    file = path / CHECKPOINT
    if not file.is_file():
        if context.is_main:
            print(
                f"note: {path} has no checkpoint yet (the evaluation stopped before its first "
                "one); it starts again from its first step",
                file=sys.stderr,
            )
        return None
    state = read_checkpoint(path, "eval", trust=trust, writer=context.is_main)
    if state["world_size"] != context.world_size:
        raise ConfigError(
            f"{file} was written by {state['world_size']} process(es), and this run has "
            f"{context.world_size}: each process's data shard and random streams are in it; "
            f"resume with torchrun --nproc_per_node {state['world_size']}"
            if state["world_size"] > 1
            else f"{file} was written by a single process; resume it without torchrun"
        )
    return state


def _already_finished(cfg: DictConfig, summary: dict, path: Path, context) -> dict:
    if summary.get("epochs") not in (None, cfg.eval.epochs):
        raise ConfigError(
            f"the evaluation in {path} finished after {summary['epochs']} epochs and keeps no "
            f"checkpoint to continue from; for eval.epochs={cfg.eval.epochs} start a new run "
            "(without --resume)"
        )
    if context.is_main:
        print(
            f"nothing to resume: the evaluation in {path} is finished (test error "
            f"{summary['test_error']:.2f}%, summary.json)"
        )
    return summary


def run_evaluation(cfg: DictConfig, resume: bool = False, trust_checkpoint: bool = False) -> dict:
    """Train ``cfg.eval``'s network on ``eval.dataset`` and return the summary (summary.json).

    With ``resume``, continue the run in ``cfg.run.dir`` from its checkpoint (read as plain
    data; ``trust_checkpoint`` unpickles an earlier version's checkpoint that holds other
    objects); a finished run is left as it is (its summary is returned).
    """
    context = init_distributed(resolve_device(cfg.device))
    check_eval_config(cfg, context.world_size)
    saved = None
    if resume:
        path = Path(cfg.run.dir)
        summary = finished_summary(path)
        if summary is not None:
            return _already_finished(cfg, summary, path, context)
        saved = read_eval_checkpoint(path, context, trust_checkpoint)
    if saved is not None:
        choice = _choice_from_state(saved["genotype"])
        if saved["position"]["epoch"] > cfg.eval.epochs:
            raise ConfigError(
                f"eval.epochs={cfg.eval.epochs}, but the run in {cfg.run.dir} has trained "
                f"{saved['position']['epoch']} epochs already; eval.epochs can only grow on a resume"
            )
    else:
        choice = resolve_eval_genotype(cfg.eval.genotype)
    device = context.device
    configure_backends(device, cfg.eval.deterministic)

    seed_everything(cfg.seed)
    datasets = build_eval_datasets(cfg, cfg.eval.batch_size // context.world_size)
    spec = network_spec(cfg, choice.genotype, datasets.num_classes)
    if saved is not None and saved["network"] != dataclasses.asdict(spec):
        raise ConfigError(
            f"the checkpoint in {cfg.run.dir} is of a different network ({saved['network']}) than "
            "the config describes; resume without overrides that change the network"
        )
    # Every rank builds the same initial weights from the seed (DDP broadcasts rank 0's anyway).
    try:
        with out_of_memory("building the evaluation network", NETWORK_SIZE):
            network = spec.build()
    except ValueError as error:
        raise ConfigError(
            f"no evaluation network can be built from genotype {choice.source}: {error}"
        ) from None
    params_m = count_parameters_m(network)
    _seed_this_rank(cfg.seed, context.rank)
    train_loader, test_loader = build_loaders(datasets, cfg, context)
    settings = training_settings(cfg)
    trainer = EvalTrainer(network, settings, context)

    if resume:
        folder = RunFolder(cfg.run.dir, enabled=context.is_main)
        folder.remove_stale_temporaries()
    else:
        folder = claim_for_run(cfg, "eval", context, default_eval_dir(cfg, choice.label))
    # On a resume: with the overrides that apply (logging, checkpoints, device, epochs).
    folder.write_text("config.yaml", to_yaml(cfg))
    progress = _Progress()
    resume_at = None  # the checkpoint's position inside an epoch
    if saved is None:
        folder.truncate_line_files(dict.fromkeys(LINE_FILES, 0))
    else:
        folder.truncate_line_files(saved["line_files"])
        trainer.load_state_dict(saved["trainer"])
        position = saved["position"]
        progress.epoch = position["epoch"]
        if saved["results"] is not None:
            progress.train_result = EpochResult(**saved["results"]["train"])
            progress.test_result = TestResult(**saved["results"]["test"])
        if position["step"]:
            resume_at = position
    tracker = build_tracker(cfg, folder) if context.is_main else Tracker()
    tracker.start(OmegaConf.to_container(cfg, resolve=True), kind="eval")
    quiet = not (cfg.run.progress and context.is_main)
    if not quiet:
        tqdm.write(
            f"run folder: {folder.path}\n{datasets.description}\n"
            f"genotype {choice.source}: {spec.kind} network, {spec.layers} cells, "
            f"C={spec.init_channels}, {params_m:.2f} M parameters, {context.world_size} process(es)"
            + (f"\nresuming at epoch {progress.epoch}" if saved is not None else "")
        )

    started = time.perf_counter() - (saved["elapsed_seconds"] if saved else 0.0)
    steps_per_epoch = trainer.steps_in_epoch(train_loader)
    total_steps = settings.epochs * steps_per_epoch
    every = cfg.checkpoint.every_steps
    checkpoint_state = {
        "genotype": _choice_state(choice),
        "network": dataclasses.asdict(spec),
    }

    def checkpoint(sums: EpochSums | None = None, epoch_rng=None, epoch_started=0.0) -> None:
        _save_eval_checkpoint(
            folder,
            trainer,
            context,
            progress,
            checkpoint_state,
            elapsed=time.perf_counter() - started,
            sums=sums,
            epoch_rng=epoch_rng,
            epoch_seconds=time.perf_counter() - epoch_started,
        )

    epochs = tqdm(
        range(progress.epoch, settings.epochs),
        desc="epochs",
        disable=quiet,
        initial=progress.epoch,
        total=settings.epochs,
    )
    training = out_of_memory("training the evaluation network", f"eval.batch_size, {NETWORK_SIZE}")
    with discarded_on_failed_start(folder, claimed=not resume), StopRequests() as stop, training:
        wants_stop = StopVote(context, stop)
        if saved is not None and resume_at is None:
            # At the start of an epoch: the RNGs continue from the checkpoint (inside an epoch,
            # after the replay below).
            set_rng_state(saved["rng"][context.rank])

        def stopped(step: int) -> EvaluationInterrupted:
            signal = stop.received if stop.received is not None else "on another process"
            return EvaluationInterrupted(
                f"evaluation stopped by signal {signal} after step {step} of {total_steps} "
                f"(epoch {progress.epoch})",
                folder.path,
                context.world_size,
            )

        for epoch in epochs:
            trainer.start_epoch(epoch, train_loader)
            if resume_at is not None:
                # Replay the shuffle and the augmentations of the steps already taken (the
                # loader's workers draw their seeds from this state), then continue the RNGs
                # from the checkpoint.
                epoch_rng = resume_at["epoch_rng"][context.rank]
                set_rng_state(epoch_rng)
                batches = iter(train_loader)
                for _ in range(resume_at["step"]):
                    next(batches)
                set_rng_state(saved["rng"][context.rank])
                sums = EpochSums.from_dict(resume_at["sums"][context.rank], device)
                tick = time.perf_counter() - resume_at["epoch_seconds"]
                resume_at = saved = None
            else:
                epoch_rng = rng_state()
                batches = iter(train_loader)
                sums = EpochSums(device)
                tick = time.perf_counter()

            def after_step(sums: EpochSums, epoch=epoch, epoch_rng=epoch_rng, tick=tick) -> None:
                if sums.steps == steps_per_epoch:  # the end of the epoch checkpoints
                    return
                step = epoch * steps_per_epoch + sums.steps
                periodic = bool(every) and step % every == 0
                if periodic:
                    checkpoint(sums, epoch_rng, tick)
                if wants_stop():
                    if not periodic:
                        checkpoint(sums, epoch_rng, tick)
                    epochs.close()
                    raise stopped(step)

            trainer.train_batches(batches, sums, steps_per_epoch, after_step)
            del batches  # its workers end here
            train_result = trainer.finish_epoch(sums)
            if not math.isfinite(train_result.loss):
                raise NonFiniteError(
                    f"evaluation training loss is {train_result.loss} in epoch {epoch} "
                    f"(genotype {choice.source}); lower eval.lr or keep eval.grad_clip > 0"
                )
            test_result = trainer.test(test_loader)
            row = {
                "epoch": epoch,
                "lr": settings.learning_rate(epoch),
                "drop_path_prob": settings.drop_path_at(epoch),
                "train_loss": train_result.loss,
                "train_acc": train_result.accuracy,
                "test_loss": test_result.loss,
                "test_acc": test_result.top1,
                "test_top5_acc": test_result.top5,
                "seconds": time.perf_counter() - tick,
            }
            folder.append_jsonl("metrics.jsonl", row)
            tracker.log_metrics(row, epoch)
            folder.save_torch(
                "model.pt",
                trained_network_payload(
                    spec, network, epoch=epoch + 1, genotype_source=choice.source
                ),
            )
            progress.epoch = epoch + 1
            progress.train_result, progress.test_result = train_result, test_result
            checkpoint()
            if progress.epoch < settings.epochs and wants_stop():
                epochs.close()
                raise stopped(progress.epoch * steps_per_epoch)
    wall_seconds = time.perf_counter() - started

    checksums = context.gather(weights_checksum(network))
    summary = evaluation_summary(
        cfg,
        choice,
        context,
        params_m,
        progress.train_result,
        progress.test_result,
        wall_seconds,
        checksums,
    )
    folder.write_json("summary.json", summary)
    # Finished: summary.json and model.pt say all the checkpoint would.
    if folder.enabled:
        folder.file(CHECKPOINT).unlink(missing_ok=True)
    tracker.finish(summary)
    if context.is_main:
        print_eval_summary(summary, folder.path)
    context.barrier()
    return summary


def _save_eval_checkpoint(
    folder: RunFolder,
    trainer: EvalTrainer,
    context: DistributedContext,
    progress: _Progress,
    fixed: dict,
    *,
    elapsed: float,
    sums: EpochSums | None,
    epoch_rng,
    epoch_seconds: float,
) -> None:
    """Atomically replace checkpoint.pt (rank 0 writes; every rank's RNG states are in it).

    With ``sums`` the run is inside epoch ``progress.epoch``, ``sums.steps`` steps in; without,
    at the start of epoch ``progress.epoch``.
    """
    rng = context.gather(rng_state())
    position = {"epoch": progress.epoch, "step": 0}
    if sums is not None:
        position.update(
            step=sums.steps,
            sums=context.gather(sums.to_dict()),
            epoch_rng=context.gather(epoch_rng),
            epoch_seconds=epoch_seconds,
        )
    results = None
    if progress.train_result is not None:
        results = {
            "train": dataclasses.asdict(progress.train_result),
            "test": dataclasses.asdict(progress.test_result),
        }
    if not folder.enabled:
        return
    write_checkpoint(
        folder,
        "eval",
        {
            **fixed,
            "world_size": context.world_size,
            "trainer": trainer.state_dict(),
            "position": position,
            "rng": rng,
            "results": results,
            "line_files": folder.line_file_sizes(LINE_FILES),
            "elapsed_seconds": elapsed,
        },
    )


def evaluation_summary(
    cfg: DictConfig,
    choice: GenotypeChoice,
    context: DistributedContext,
    params_m: float,
    train_result,
    test_result,
    wall_seconds: float,
    checksums: list[str],
) -> dict:
    device = context.device
    # Device-hours: every process holds its own device for the whole run.
    hours = wall_seconds * context.world_size / 3600
    summary = {
        "kind": "eval",
        "dataset": eval_dataset(cfg),
        "genotype_source": choice.source,
        "genotype": genotype_to_dict(choice.genotype),
        "seed": cfg.seed,
        "epochs": cfg.eval.epochs,
        "layers": cfg.eval.layers,
        "init_channels": cfg.eval.init_channels,
        "params_m": params_m,
        "test_error": test_result.error_percent,
        "test_top5_error": 100.0 * (1.0 - test_result.top5),
        "test_acc": test_result.top1,
        "test_images": test_result.examples,
        "train_loss": train_result.loss,
        "train_acc": train_result.accuracy,
        "wall_seconds": wall_seconds,
        "world_size": context.world_size,
        "global_batch_size": cfg.eval.batch_size,
        "per_rank_batch_size": cfg.eval.batch_size // context.world_size,
        "device": device.type,
        "machine": machine_description(device),
        "gpu_hours" if device.type == "cuda" else "cpu_hours": hours,
        "weight_checksums": checksums,
    }
    if choice.learner is not None:
        summary["learner"] = choice.learner
        summary["search_val_acc"] = choice.search_val_acc
    return summary


def cost_key(summary: dict) -> str:
    return "gpu_hours" if "gpu_hours" in summary else "cpu_hours"


def print_eval_summary(summary: dict, path: Path) -> None:
    key = cost_key(summary)
    print(
        f"evaluation finished: genotype {summary['genotype_source']} on {summary['dataset']}, "
        f"{summary['layers']} cells, C={summary['init_channels']}, {summary['epochs']} epochs\n"
        f"  test error {summary['test_error']:.2f}% ({summary['test_images']} test images), "
        f"params {summary['params_m']:.2f} M, {summary[key]:.4f} {key.replace('_', '-')} "
        f"({summary['world_size']} x {summary['machine']})\n"
        f"run folder: {path}"
    )
