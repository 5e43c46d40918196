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
checkpoint (EvaluationInterrupted, exit 130 in the recipes). The folder, the checkpoint's
writing and reading, the RNG states and the stop vote are the ``RunLifecycle``'s
(``lifecycle.py``); ``EvaluationRun`` is the loop over the epochs.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch.nn import Module
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm.auto import tqdm

from sgl_betty.choices import EvalDataset, values
from sgl_betty.data import build_eval_data
from sgl_betty.data.imagenet import load_imagenet
from sgl_betty.data.seeding import seeded_generator
from sgl_betty.errors import NonFiniteError, RunInterrupted
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
from sgl_betty.runtime import (
    DistributedContext,
    configure_backends,
    init_distributed,
    machine_description,
    resolve_device,
    seed_everything,
    weights_checksum,
)
from sgl_betty.tracking.summaries import (
    EvalSummary,
    SummaryMissing,
    cost_label,
    device_hours,
    read_summary,
)

from .config import ConfigError, batch_per_process, eval_dataset
from .genotype_source import GenotypeChoice, resolve_eval_genotype
from .interruption import CHECKPOINT, rng_state
from .lifecycle import RunLifecycle, resume_command
from .resources import out_of_memory
from .run_dirs import default_eval_dir
from .search import data_settings, data_settings_checked

EVAL_DATASETS = values(EvalDataset)
CIFAR_IMAGE_SIZE = 32
# The smallest map each auxiliary head accepts: CIFAR's pools 5/3 then convolves 2x2, ImageNet's
# pools 5/2 then convolves 2x2.
AUXILIARY_MIN_SIZE = {"cifar": 8, "imagenet": 7}
# Stride-2 stages before the auxiliary head: the ImageNet stem's three, then two reduction cells.
HALVINGS_BEFORE_AUXILIARY = {"cifar": 2, "imagenet": 5}


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
    """The trainer's settings: the fields ``eval`` shares with ``TrainingSettings`` (its schema
    extends that dataclass)."""
    return TrainingSettings(
        **{f.name: cfg.eval[f.name] for f in dataclasses.fields(TrainingSettings)}
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
        super().__init__(f"{what}; resume with: {resume_command('eval', path, world_size)}")
        self.what = what


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
    try:
        summary = read_summary(path)
    except SummaryMissing:
        return None
    if summary.kind != kind:
        raise ConfigError(
            f"cannot resume {path} as {what}: its summary.json is that of a finished "
            f"{summary.kind} run"
        )
    return summary.to_dict()


def read_eval_checkpoint(lifecycle: RunLifecycle) -> dict | None:
    """The evaluation checkpoint in ``run.dir``; None when the run stopped before its first (at
    the end of its first epoch or after checkpoint.every_steps steps): it starts again."""
    state = lifecycle.load_checkpoint()
    world_size = lifecycle.context.world_size
    if state is not None and state["world_size"] != world_size:
        file = Path(lifecycle.cfg.run.dir) / CHECKPOINT
        raise ConfigError(
            f"{file} was written by {state['world_size']} process(es), and this run has "
            f"{world_size}: each process's data shard and random streams are in it; "
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
    lifecycle = RunLifecycle(
        cfg,
        "eval",
        context,
        line_files=LINE_FILES,
        resume=resume,
        trust_checkpoint=trust_checkpoint,
        keep_checkpoint=False,
    )
    saved = None
    if resume:
        path = Path(cfg.run.dir)
        summary = finished_summary(path)
        if summary is not None:
            return _already_finished(cfg, summary, path, context)
        saved = read_eval_checkpoint(lifecycle)
    choice = _genotype_to_train(cfg, saved)
    configure_backends(context.device, cfg.eval.deterministic)
    seed_everything(cfg.seed)
    run = build_evaluation(cfg, choice, lifecycle, saved)
    lifecycle.open_folder(default_eval_dir(cfg, choice.label), saved)
    run.restore(saved)
    lifecycle.start_tracker(OmegaConf.to_container(cfg, resolve=True))
    run.announce(resuming=saved is not None)
    lifecycle.start_clock(saved)
    training = out_of_memory("training the evaluation network", f"eval.batch_size, {NETWORK_SIZE}")
    with lifecycle.first_steps(), lifecycle.stop_requests(), training:
        run.train(saved)
    summary = lifecycle.finish(run.summary(lifecycle.elapsed()))
    if context.is_main:
        print_eval_summary(summary, lifecycle.folder.path)
    context.barrier()
    return summary.to_dict()


def _genotype_to_train(cfg: DictConfig, saved: dict | None) -> GenotypeChoice:
    """The checkpoint's genotype on a resume, else the one ``eval.genotype`` names."""
    if saved is None:
        return resolve_eval_genotype(cfg.eval.genotype)
    if saved["position"]["epoch"] > cfg.eval.epochs:
        raise ConfigError(
            f"eval.epochs={cfg.eval.epochs}, but the run in {cfg.run.dir} has trained "
            f"{saved['position']['epoch']} epochs already; eval.epochs can only grow on a resume"
        )
    return _choice_from_state(saved["genotype"])


def build_evaluation(
    cfg: DictConfig, choice: GenotypeChoice, lifecycle: RunLifecycle, saved: dict | None
) -> EvaluationRun:
    """The data, the network of ``choice`` (the checkpoint's, when ``saved``) and its trainer."""
    context = lifecycle.context
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
    return EvaluationRun(
        cfg=cfg,
        lifecycle=lifecycle,
        choice=choice,
        description=datasets.description,
        spec=spec,
        network=network,
        params_m=params_m,
        settings=settings,
        trainer=trainer,
        train_loader=train_loader,
        test_loader=test_loader,
        steps_per_epoch=trainer.steps_in_epoch(train_loader),
    )


@dataclass
class EpochStart:
    """Where an epoch's training starts: its batches (after the steps a resumed run took
    already), the partial sums, the RNG states at the start of the epoch (to replay its
    shuffle and augmentations) and its clock."""

    batches: Iterator | None
    sums: EpochSums
    rng: dict
    tick: float


@dataclass
class EvaluationRun:
    """One evaluation's network, data and trainer, and the loop over its epochs."""

    cfg: DictConfig
    lifecycle: RunLifecycle
    choice: GenotypeChoice
    description: str
    spec: NetworkSpec
    network: Module
    params_m: float
    settings: TrainingSettings
    trainer: EvalTrainer
    train_loader: DataLoader
    test_loader: DataLoader
    steps_per_epoch: int
    progress: _Progress = field(default_factory=_Progress)
    epochs: tqdm | None = None

    @property
    def context(self) -> DistributedContext:
        return self.lifecycle.context

    @property
    def total_steps(self) -> int:
        return self.settings.epochs * self.steps_per_epoch

    def restore(self, saved: dict | None) -> None:
        """The trainer and the progress where ``saved`` left them."""
        if saved is None:
            return
        self.trainer.load_state_dict(saved["trainer"])
        self.progress.epoch = saved["position"]["epoch"]
        if saved["results"] is not None:
            self.progress.train_result = EpochResult(**saved["results"]["train"])
            self.progress.test_result = TestResult(**saved["results"]["test"])

    def announce(self, resuming: bool) -> None:
        """The run's description on rank 0 (with run.progress), and the epochs' progress bar."""
        quiet = not (self.cfg.run.progress and self.context.is_main)
        if not quiet:
            spec = self.spec
            tqdm.write(
                f"run folder: {self.lifecycle.folder.path}\n{self.description}\n"
                f"genotype {self.choice.source}: {spec.kind} network, {spec.layers} cells, "
                f"C={spec.init_channels}, {self.params_m:.2f} M parameters, "
                f"{self.context.world_size} process(es)"
                + (f"\nresuming at epoch {self.progress.epoch}" if resuming else "")
            )
        self.epochs = tqdm(
            range(self.progress.epoch, self.settings.epochs),
            desc="epochs",
            disable=quiet,
            initial=self.progress.epoch,
            total=self.settings.epochs,
        )

    def train(self, saved: dict | None) -> None:
        """Every epoch from the progress on (inside an epoch when ``saved`` was taken there)."""
        inside = saved if saved is not None and saved["position"]["step"] else None
        if saved is not None and inside is None:
            # At the start of an epoch: the RNGs continue from the checkpoint (inside an epoch,
            # after the replay in ``start_epoch``).
            self.lifecycle.restore_rng(saved)
        for epoch in self.epochs:
            self.trainer.start_epoch(epoch, self.train_loader)
            start = self.start_epoch(inside)
            inside = None
            self.trainer.train_batches(
                start.batches,
                start.sums,
                self.steps_per_epoch,
                functools.partial(self.after_step, epoch=epoch, start=start),
            )
            start.batches = None  # its workers end here
            self.end_epoch(epoch, start)

    def start_epoch(self, saved: dict | None) -> EpochStart:
        """This epoch's batches and sums; with ``saved`` (a checkpoint inside the epoch) the
        shuffle and the augmentations of the steps already taken are replayed (the loader's
        workers draw their seeds from the epoch's RNG state), then the RNGs continue from the
        checkpoint."""
        if saved is None:
            rng = rng_state()
            return EpochStart(
                iter(self.train_loader), EpochSums(self.context.device), rng, time.perf_counter()
            )
        position, rank = saved["position"], self.context.rank
        self.lifecycle.restore_rng(position, key="epoch_rng")
        batches = iter(self.train_loader)
        for _ in range(position["step"]):
            next(batches)
        self.lifecycle.restore_rng(saved)
        sums = EpochSums.from_dict(position["sums"][rank], self.context.device)
        tick = time.perf_counter() - position["epoch_seconds"]
        return EpochStart(batches, sums, position["epoch_rng"][rank], tick)

    def after_step(self, sums: EpochSums, *, epoch: int, start: EpochStart) -> None:
        """A checkpoint every checkpoint.every_steps steps, and a stop when a signal asks."""
        if sums.steps == self.steps_per_epoch:  # the end of the epoch checkpoints
            return
        step = epoch * self.steps_per_epoch + sums.steps
        every = self.cfg.checkpoint.every_steps
        periodic = bool(every) and step % every == 0
        if periodic:
            self.save_checkpoint(sums, start)
        if self.lifecycle.should_stop():
            if not periodic:
                self.save_checkpoint(sums, start)
            raise self.stopped(step)

    def end_epoch(self, epoch: int, start: EpochStart) -> None:
        """The epoch's results: a metrics row, model.pt, a checkpoint; a stop when asked."""
        train_result = self.trainer.finish_epoch(start.sums)
        if not math.isfinite(train_result.loss):
            raise NonFiniteError(
                f"evaluation training loss is {train_result.loss} in epoch {epoch} "
                f"(genotype {self.choice.source}); lower eval.lr or keep eval.grad_clip > 0"
            )
        test_result = self.trainer.test(self.test_loader)
        row = {
            "epoch": epoch,
            "lr": self.settings.learning_rate(epoch),
            "drop_path_prob": self.settings.drop_path_at(epoch),
            "train_loss": train_result.loss,
            "train_acc": train_result.accuracy,
            "test_loss": test_result.loss,
            "test_acc": test_result.top1,
            "test_top5_acc": test_result.top5,
            "seconds": time.perf_counter() - start.tick,
        }
        folder = self.lifecycle.folder
        folder.append_jsonl("metrics.jsonl", row)
        self.lifecycle.tracker.log_metrics(row, epoch)
        payload = trained_network_payload(
            self.spec, self.network, epoch=epoch + 1, genotype_source=self.choice.source
        )
        folder.save_torch("model.pt", payload)
        self.progress.epoch = epoch + 1
        self.progress.train_result, self.progress.test_result = train_result, test_result
        self.save_checkpoint()
        if self.progress.epoch < self.settings.epochs and self.lifecycle.should_stop():
            raise self.stopped(self.progress.epoch * self.steps_per_epoch)

    def stopped(self, step: int) -> EvaluationInterrupted:
        self.epochs.close()
        where = f"step {step} of {self.total_steps} (epoch {self.progress.epoch})"
        return EvaluationInterrupted(
            self.lifecycle.stop_message(where), self.lifecycle.folder.path, self.context.world_size
        )

    def save_checkpoint(self, sums: EpochSums | None = None, start: EpochStart | None = None):
        """checkpoint.pt: with ``sums`` inside epoch ``progress.epoch``, ``sums.steps`` steps
        in (``start``: where that epoch started); without, at the start of that epoch."""
        context, progress = self.context, self.progress
        position = {"epoch": progress.epoch, "step": 0}
        if sums is not None:
            position.update(
                step=sums.steps,
                sums=context.gather(sums.to_dict()),
                epoch_rng=context.gather(start.rng),
                epoch_seconds=time.perf_counter() - start.tick,
            )
        results = None
        if progress.train_result is not None:
            results = {
                "train": dataclasses.asdict(progress.train_result),
                "test": dataclasses.asdict(progress.test_result),
            }
        self.lifecycle.save_checkpoint(
            {
                "genotype": _choice_state(self.choice),
                "network": dataclasses.asdict(self.spec),
                "world_size": context.world_size,
                "trainer": self.trainer.state_dict(),
                "position": position,
                "results": results,
            }
        )

    def summary(self, wall_seconds: float) -> EvalSummary:
        checksums = self.context.gather(weights_checksum(self.network))
        return evaluation_summary(
            self.cfg,
            self.choice,
            self.context,
            self.params_m,
            self.progress.train_result,
            self.progress.test_result,
            wall_seconds,
            checksums,
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
) -> EvalSummary:
    device = context.device
    return EvalSummary(
        dataset=eval_dataset(cfg),
        genotype_source=choice.source,
        genotype=genotype_to_dict(choice.genotype),
        seed=cfg.seed,
        epochs=cfg.eval.epochs,
        layers=cfg.eval.layers,
        init_channels=cfg.eval.init_channels,
        params_m=params_m,
        test_error=test_result.error_percent,
        test_top5_error=100.0 * (1.0 - test_result.top5),
        test_acc=test_result.top1,
        test_images=test_result.examples,
        train_loss=train_result.loss,
        train_acc=train_result.accuracy,
        wall_seconds=wall_seconds,
        world_size=context.world_size,
        global_batch_size=cfg.eval.batch_size,
        per_rank_batch_size=cfg.eval.batch_size // context.world_size,
        device=device.type,
        machine=machine_description(device),
        device_hours=device_hours(wall_seconds, context.world_size),
        device_type=device.type,
        weight_checksums=checksums,
        learner=choice.learner,
        search_val_acc=choice.search_val_acc,
    )


def print_eval_summary(summary: EvalSummary, path: Path) -> None:
    print(
        f"evaluation finished: genotype {summary.genotype_source} on {summary.dataset}, "
        f"{summary.layers} cells, C={summary.init_channels}, {summary.epochs} epochs\n"
        f"  test error {summary.test_error:.2f}% ({summary.test_images} test images), "
        f"params {summary.params_m:.2f} M, {summary.device_hours:.4f} "
        f"{cost_label(summary.device_type)} ({summary.world_size} x {summary.machine})\n"
        f"run folder: {path}"
    )
