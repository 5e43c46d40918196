"""One evaluation run: train the network of a found cell from scratch and report its test error.

``run_evaluation(cfg)`` reads ``cfg.eval`` (the paper's Section 3.2: 20 cells, C=36, 600 epochs,
batch 96, cutout 16, auxiliary weight 0.4, drop path 0.2, gradient clip 5, cosine learning
rate; the ImageNet preset switches to DARTS's train_imagenet.py) and writes the run folder:
config.yaml, metrics.jsonl (a row per epoch), model.pt and summary.json. Under torchrun it
trains with DistributedDataParallel; only rank 0 writes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
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
from sgl_betty.evaluation.trainer import LR_SCHEDULES, EvalTrainer, TrainingSettings
from sgl_betty.genotypes import Genotype, genotype_to_dict
from sgl_betty.params import count_parameters_m
from sgl_betty.problems import NonFiniteError
from sgl_betty.tracking import RunFolder, Tracker, build_tracker

from .config import ConfigError, to_yaml
from .genotype_source import GenotypeChoice, resolve_eval_genotype
from .search import machine_description, resolve_device, seed_everything

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
    if e.batch_size % world_size:
        raise ConfigError(
            f"eval.batch_size={e.batch_size} is the batch over all {world_size} processes and must "
            f"divide evenly among them; use a multiple of {world_size}"
        )
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
    data = cfg.data
    synthetic = dict(OmegaConf.to_container(data.synthetic))
    eval_data = build_eval_data(
        dataset,
        root=data.root,
        download=data.download,
        batch_size=batch_size,
        cutout=cfg.eval.cutout,
        cutout_length=cfg.eval.cutout_length,
        num_workers=0,
        seed=cfg.seed,
        image_size=data.image_size,
        synthetic=synthetic,
        limit=data.limit,
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
        persistent_workers=workers > 0,
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


def default_eval_run_dir(cfg: DictConfig, label: str) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-eval-{eval_dataset(cfg)}-{label}"


def _seed_this_rank(seed: int, rank: int) -> None:
    # Rank 0 keeps the stream of a one-process run; the others draw their own augmentation and
    # drop-path masks, as separate GPUs would.
    if rank:
        seed_everything(seeded_generator(seed, rank).initial_seed())


def run_evaluation(cfg: DictConfig) -> dict:
    """Train ``cfg.eval``'s network on ``eval.dataset`` and return the summary (summary.json)."""
    context = init_distributed(resolve_device(cfg.device))
    check_eval_config(cfg, context.world_size)
    choice = resolve_eval_genotype(cfg.eval.genotype)
    device = context.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    seed_everything(cfg.seed)
    datasets = build_eval_datasets(cfg, cfg.eval.batch_size // context.world_size)
    spec = network_spec(cfg, choice.genotype, datasets.num_classes)
    # Every rank builds the same initial weights from the seed (DDP broadcasts rank 0's anyway).
    try:
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

    folder = RunFolder(
        cfg.run.dir or default_eval_run_dir(cfg, choice.label), enabled=context.is_main
    )
    cfg.run.dir = str(folder.path)
    folder.write_text("config.yaml", to_yaml(cfg))
    tracker = build_tracker(cfg, folder) if context.is_main else Tracker()
    tracker.start(OmegaConf.to_container(cfg, resolve=True), kind="eval")
    quiet = not (cfg.run.progress and context.is_main)
    if not quiet:
        tqdm.write(
            f"run folder: {folder.path}\n{datasets.description}\n"
            f"genotype {choice.source}: {spec.kind} network, {spec.layers} cells, "
            f"C={spec.init_channels}, {params_m:.2f} M parameters, {context.world_size} process(es)"
        )

    started = time.perf_counter()
    train_result = test_result = None
    for epoch in tqdm(range(settings.epochs), desc="epochs", disable=quiet):
        tick = time.perf_counter()
        train_result = trainer.train_epoch(epoch, train_loader)
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
            trained_network_payload(spec, network, epoch=epoch + 1, genotype_source=choice.source),
        )
    wall_seconds = time.perf_counter() - started

    checksums = context.gather(weights_checksum(network))
    summary = evaluation_summary(
        cfg, choice, context, params_m, train_result, test_result, wall_seconds, checksums
    )
    folder.write_json("summary.json", summary)
    tracker.finish(summary)
    if context.is_main:
        print_eval_summary(summary, folder.path)
    context.barrier()
    return summary


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
