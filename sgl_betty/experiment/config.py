"""The run configuration of the recipes: a typed OmegaConf schema, YAML presets, CLI overrides.

``load_config(["preset=smoke", "hypergrad.type=neumann", "learners=3"])`` starts from the
schema's defaults, merges the preset's YAML (``configs/<recipe>/<name>.yaml`` first, then
``configs/<name>.yaml``; a preset may name a ``base:`` preset it extends), then the overrides.
Unknown keys and invalid values raise ``ConfigError`` before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sgl_betty.choices import (
    Choice,
    Device,
    EvalLearners,
    HypergradType,
    Precision,
    SearchDataset,
    SkipDecay,
    UnlabeledSource,
    WandbMode,
    values,
)
from sgl_betty.config import IMPLICIT_TYPES, HypergradConfig, SGLConfig, one_graph_message
from sgl_betty.configs import CONFIG_DIR
from sgl_betty.errors import ConfigError
from sgl_betty.evaluation.trainer import TrainingSettings
from sgl_betty.secret_env import secrets_in
from sgl_betty.yaml_configs import read_yaml_config, reject_interpolations

from .config_checks import check_values
from .methods import SEARCH_METHODS
from .overrides import check_form, describe, dotted_keys, merge_overrides
from .resume_policy import check_resume_overrides


def recipe_hypergrad() -> HypergradConfig:
    """The ``hypergrad`` node's defaults: the library's ``HypergradConfig`` with the paper's
    ``unrolled`` hypergradient, the recipes' default since they have existed, where a library
    user who builds ``HypergradConfig()`` gets ``first_order`` (DARTS-1st, the released code)."""
    return HypergradConfig(type=HypergradType.unrolled.value)


@dataclass
class SearchSchema:
    method: str = "darts"
    epochs: int = 50
    batch_size: int = 64
    init_channels: int = 16
    layers: int = 8
    steps: int = 4
    # None: one epoch is a full pass over D_tr; a number caps it (quick runs on real data).
    steps_per_epoch: int | None = None
    weight_lr: float = 0.025
    weight_lr_min: float = 0.001
    weight_momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    arch_lr: float = 3e-4
    arch_weight_decay: float = 1e-3
    arch_beta1: float = 0.5
    arch_beta2: float = 0.999
    # Epochs of V and W training before the first architecture step.
    arch_warmup_epochs: int = 0
    pseudo_label_arch_grad: bool = True
    detach_pseudo_labels: bool = False
    # Batches of D_val for the final search validation accuracy (None: all of D_val).
    val_batches: int | None = None
    # fp32, or bf16 autocast (GPU); channels-last memory format for networks and batches.
    precision: str = Precision.fp32.value
    channels_last: bool = False
    # Bitwise-reproducible kernels (torch.use_deterministic_algorithms, cuDNN without benchmark,
    # cuBLAS workspace): identical results after a resume on a GPU too, at some speed.
    deterministic: bool = False
    # torch.compile the V and W networks for their descent steps (and the first-order validation
    # pass); the hypergradient solvers' double-backward passes stay eager. The first steps
    # compile (minutes on a CPU).
    compile: bool = False
    # PC-DARTS: an edge's ops see 1/pc_partial_channels of its channels (the reference's K = 4).
    pc_partial_channels: int = 4
    # DARTS-: how the auxiliary skip's weight beta falls from 1 to 0 (linear or cosine).
    darts_minus_decay: str = SkipDecay.linear.value
    # P-DARTS stages (one entry per stage): cells search.layers + pdarts_add_layers[s] (5, 11, 17),
    # candidate ops kept per edge after the stage (8 -> 5 -> 3 -> 1), initial rate of the dropout
    # after skip_connect (the P-DARTS paper's CIFAR-100 rates; CIFAR-10: 0.0, 0.4, 0.7).
    # search.epochs and search.arch_warmup_epochs apply to every stage.
    pdarts_add_layers: list[int] = field(default_factory=lambda: [0, 6, 12])
    pdarts_ops_kept: list[int] = field(default_factory=lambda: [5, 3, 1])
    pdarts_skip_dropout: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3])
    # Once the architecture trains, the skip dropout decays as exp(-pdarts_dropout_decay * epoch).
    pdarts_dropout_decay: float = 0.2
    # Skip-connects allowed in the final normal cell (the reference's M = 2).
    pdarts_max_skip_connects: int = 2


@dataclass
class SyntheticSchema:
    seed: int = 0
    num_classes: int = 10
    train: int = 512
    val: int = 512
    unlabeled: int = 512
    test: int = 512


@dataclass
class DataSchema:
    dataset: str = SearchDataset.cifar100.value
    unlabeled: str = UnlabeledSource.cifar10.value
    root: str = "data"
    download: bool = False
    train_portion: float = 0.5
    num_workers: int = 2
    image_size: int | None = None
    limit: int | None = None
    # Check CIFAR folders that carry a generated-data manifest (sgl_betty_local_checksums.json)
    # against it instead of torchvision's md5 values: only for data generated on this machine.
    local_checksums: bool = False
    synthetic: SyntheticSchema = field(default_factory=SyntheticSchema)


@dataclass
class RunSchema:
    # None: runs/<date>-<method>-<hypergrad>-k<K>-seed<s> (numbered when taken).
    dir: str | None = None
    log_every: int = 10
    progress: bool = True
    # torch's CPU threads; None: the cores left to this process (or OMP_NUM_THREADS).
    threads: int | None = None


@dataclass
class ImageNetSchema:
    """The ImageNet evaluation data (DARTS's train_imagenet.py): an ImageFolder with train/ and
    val/ subfolders, one folder per class in each."""

    root: str = "data/imagenet"
    # 224 in the reference; small values make CPU tests fast (a multiple of 32: the network
    # halves it five times).
    crop_size: int = 224
    # Side the test images are resized to before the centre crop; None: crop_size * 8 / 7 (256).
    resize_size: int | None = None
    # ColorJitter brightness, contrast, saturation, hue of the training augmentation.
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.4, 0.2])


@dataclass
class EvalSchema(TrainingSettings):
    """Training a found cell from scratch (the paper's Section 3.2, DARTS's train.py).

    The trainer's fields (schedule, optimizer, regularisation, precision) are
    ``TrainingSettings``'s, with its defaults; this adds the network, the data and the run.
    """

    # The paper's (and DARTS's) 600 epochs; the trainer itself has no default.
    epochs: int = 600
    # A name in sgl_betty.genotypes.PUBLISHED (DARTS_V2) or "<search run folder>:<learner>".
    genotype: str | None = None
    # With --stage all: "best" (highest search val acc) or "all" learners' genotypes.
    learners: str = EvalLearners.best.value
    batch_size: int = 96
    init_channels: int = 36
    layers: int = 20
    auxiliary: bool = True
    cutout: bool = True
    cutout_length: int = 16
    # None: the whole test set; a number caps the test pass (quick runs).
    test_batches: int | None = None
    # None: data.dataset (the searched CIFAR, or synthetic); "imagenet": eval.imagenet.
    dataset: str | None = None
    # As search.deterministic, for the evaluation.
    deterministic: bool = False
    imagenet: ImageNetSchema = field(default_factory=ImageNetSchema)


@dataclass
class TrackingSchema:
    """Weights & Biases; nobody needs an account: offline runs sync later with `wandb sync`."""

    wandb: bool = False
    project: str = "sgl-betty"
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    mode: str = WandbMode.offline.value
    figures: bool = True


@dataclass
class CheckpointSchema:
    # Also written at the end of every epoch; 0 disables the periodic checkpoints.
    every_steps: int = 100


@dataclass
class RunConfig:
    preset: str = "paper"
    seed: int = 2
    # Several seeds (e.g. [1, 2, 3]) run the same setting once per seed and report mean and std.
    seeds: list[int] | None = None
    learners: int = 2
    lam: float = 0.1
    device: str = Device.auto.value
    search: SearchSchema = field(default_factory=SearchSchema)
    hypergrad: HypergradConfig = field(default_factory=recipe_hypergrad)
    data: DataSchema = field(default_factory=DataSchema)
    run: RunSchema = field(default_factory=RunSchema)
    eval: EvalSchema = field(default_factory=EvalSchema)
    tracking: TrackingSchema = field(default_factory=TrackingSchema)
    checkpoint: CheckpointSchema = field(default_factory=CheckpointSchema)


def _check_choice(key: str, value: Any, choice: type[Choice] | list[str]) -> None:
    allowed = values(choice) if isinstance(choice, type) else choice
    if value not in allowed:
        raise ConfigError(
            f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}"
        )


def _check_positive(cfg: DictConfig, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{key}={value} is invalid; it must be {bound}")


def _strings(node: Any, prefix: str = ""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{prefix}{index}.")
    elif isinstance(node, str):
        yield prefix[:-1], node


def _check_no_secrets(cfg: DictConfig) -> None:
    """The config goes into config.yaml, W&B and messages: no secret of the environment may."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    found = secrets_in(_strings(resolved))
    if found:
        key, name = found[0]
        raise ConfigError(
            f"{key} holds the value of the environment variable {name}, a secret: it would be "
            "written to config.yaml, the W&B files and the console. Leave secrets in the "
            "environment (W&B reads WANDB_API_KEY from there itself) and give this key a plain value"
        )


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    _check_no_secrets(cfg)
    if cfg.learners < 1:
        raise ConfigError(
            f"learners={cfg.learners} is invalid; SGL needs K >= 1 (K = 1 is the plain method)"
        )
    if not cfg.lam >= 0:
        raise ConfigError(f"lam={cfg.lam} is invalid; the pseudo-label weight must be >= 0")
    _check_choice("search.method", cfg.search.method, sorted(SEARCH_METHODS))
    _check_choice("hypergrad.type", cfg.hypergrad.type, HypergradType)
    if cfg.hypergrad.one_graph_at_a_time and cfg.hypergrad.type not in IMPLICIT_TYPES:
        raise ConfigError(one_graph_message(cfg.hypergrad.type))
    _check_choice("data.dataset", cfg.data.dataset, SearchDataset)
    _check_choice("data.unlabeled", cfg.data.unlabeled, UnlabeledSource)
    _check_choice("device", cfg.device, Device)
    _check_choice("search.precision", cfg.search.precision, Precision)
    _check_choice("eval.precision", cfg.eval.precision, Precision)
    _check_choice("tracking.mode", cfg.tracking.mode, WandbMode)
    _check_choice("eval.learners", cfg.eval.learners, EvalLearners)
    if cfg.data.unlabeled == cfg.data.dataset and cfg.data.dataset != "synthetic":
        raise ConfigError(
            f"data.unlabeled={cfg.data.unlabeled!r} equals data.dataset: D_u would contain D_val's images; "
            "use data.unlabeled=train (the released code's choice) or the other CIFAR (the paper's)"
        )
    _check_positive(
        cfg,
        "search.epochs",
        "search.batch_size",
        "search.init_channels",
        "search.layers",
        "search.steps",
        "search.steps_per_epoch",
        "search.val_batches",
        "search.weight_lr",
        "run.log_every",
        "run.threads",
        "hypergrad.darts_alpha",
        "hypergrad.neumann_alpha",
        "hypergrad.cg_iterations",
        "hypergrad.cg_alpha",
        "data.limit",
        "data.image_size",
        "eval.epochs",
        "eval.batch_size",
        "eval.init_channels",
        "eval.layers",
        "eval.lr",
        "eval.steps_per_epoch",
        "eval.test_batches",
        "eval.cutout_length",
    )
    _check_positive(
        cfg,
        "search.arch_lr",
        "search.arch_warmup_epochs",
        "search.weight_decay",
        "search.arch_weight_decay",
        "search.grad_clip",
        "search.weight_lr_min",
        "hypergrad.neumann_iterations",
        "data.num_workers",
        "eval.auxiliary_weight",
        "eval.drop_path_prob",
        "eval.grad_clip",
        "eval.weight_decay",
        "checkpoint.every_steps",
        allow_zero=True,
    )
    if not 0 < cfg.data.train_portion < 1:
        raise ConfigError(f"data.train_portion={cfg.data.train_portion} must be in (0, 1)")
    if cfg.search.layers < 3:
        raise ConfigError(
            f"search.layers={cfg.search.layers} must be >= 3 (the network has two reduction cells)"
        )
    check_values(cfg)


def eval_dataset(cfg: DictConfig) -> str:
    """The dataset the evaluation trains on: ``eval.dataset``, else the searched ``data.dataset``."""
    return cfg.eval.dataset or cfg.data.dataset


def batch_per_process(key: str, batch_size: int, world_size: int) -> int:
    """Each process's share of ``batch_size``, the batch over all ``world_size`` processes (so
    that N processes take the steps, and need the learning rate, of one process)."""
    if batch_size % world_size:
        raise ConfigError(
            f"{key}={batch_size} is the batch over all {world_size} processes and must divide "
            f"evenly among them; use a multiple of {world_size}"
        )
    return batch_size // world_size


def preset_path(name: str, recipe: str | None = None, config_dir: Path = CONFIG_DIR) -> Path:
    candidates = ([config_dir / recipe / f"{name}.yaml"] if recipe else []) + [
        config_dir / f"{name}.yaml"
    ]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(
        {p.stem for p in config_dir.glob("*.yaml")}
        | ({p.stem for p in (config_dir / recipe).glob("*.yaml")} if recipe else set())
    )
    raise ConfigError(
        f"unknown preset {name!r}; available presets: {', '.join(known)} (in {config_dir})"
    )


def _preset_chain(name: str, recipe: str | None, config_dir: Path) -> list[DictConfig]:
    chain, seen = [], set()
    path = preset_path(name, recipe, config_dir)
    while True:
        if path in seen:
            raise ConfigError(f"preset {path} extends itself through 'base:'")
        seen.add(path)
        layer = read_yaml_config(path, "preset")
        base = layer.pop("base", None)
        chain.append(layer)
        if base is None:
            return list(reversed(chain))
        # A recipe preset may extend the general preset of the same name (cifar10/paper -> paper).
        base_path = preset_path(str(base), recipe, config_dir)
        path = preset_path(str(base), None, config_dir) if base_path == path else base_path


def load_config(
    overrides: list[str] | None = None, recipe: str | None = None, config_dir: Path = CONFIG_DIR
) -> DictConfig:
    """Schema defaults <- preset YAML (with its bases) <- command-line overrides ``key=value``."""
    overrides = list(overrides or [])
    check_form(overrides, example="hypergrad.type=neumann")
    try:
        preset = merge_overrides(OmegaConf.create(), overrides).get("preset", RunConfig.preset)
        cfg = OmegaConf.structured(RunConfig)
        for layer in _preset_chain(str(preset), recipe, config_dir):
            cfg = OmegaConf.merge(cfg, layer)
        cfg = merge_overrides(cfg, overrides)
        cfg.preset = str(preset)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    validate(cfg)
    return cfg


def config_keys() -> list[str]:
    """Every leaf key of the run config, dotted (``search.method``, ...)."""
    return dotted_keys(OmegaConf.structured(RunConfig))


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> DictConfig:
    """The resolved config a run folder was started with, plus the overrides a resumed run
    accepts (``resume_policy``; any other is refused, naming the key)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"cannot resume {run_dir}: it has no config.yaml (is it a run folder?)")
    overrides = list(overrides or [])
    check_form(overrides, example="device=cpu")
    saved = read_yaml_config(path, "run config")
    reject_interpolations(saved, path)
    try:
        base = OmegaConf.merge(OmegaConf.structured(RunConfig), saved)
    except OmegaConfBaseException as error:
        raise ConfigError(
            f"{path} does not fit this version's config schema: {_describe(error)}; it was edited "
            "or written by another version: fix the file, or start a new run"
        ) from None
    try:
        cli = merge_overrides(OmegaConf.create(), overrides)
        cfg = merge_overrides(base, overrides)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    check_resume_overrides(base, cfg, cli)
    cfg.run.dir = str(run_dir)
    try:
        validate(cfg)
    except ConfigError as error:
        raise ConfigError(f"{error} (the value comes from {path} or an override)") from None
    return cfg


def _describe(error: OmegaConfBaseException) -> str:
    return describe(error, OmegaConf.structured(RunConfig))


def sgl_config(cfg: DictConfig, **callables) -> SGLConfig:
    """The engine's SGLConfig from a run config (losses default to classification)."""
    steps_warmup = 0  # set by the recipe from arch_warmup_epochs and the epoch length
    return SGLConfig(
        lam=cfg.lam,
        hypergrad=OmegaConf.to_object(cfg.hypergrad),
        pseudo_label_arch_grad=cfg.search.pseudo_label_arch_grad,
        detach_pseudo_labels=cfg.search.detach_pseudo_labels,
        grad_clip_v=cfg.search.grad_clip,
        grad_clip_w=cfg.search.grad_clip,
        arch_warmup_steps=steps_warmup,
        autocast_dtype=torch.bfloat16 if cfg.search.precision == Precision.bf16 else None,
        channels_last=cfg.search.channels_last,
        compile=cfg.search.compile,
        **callables,
    )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
