"""The run configuration of the recipes: a typed OmegaConf schema, YAML presets, CLI overrides.

``load_config(["preset=smoke", "hypergrad.type=neumann", "learners=3"])`` starts from the
schema's defaults, merges the preset's YAML (``configs/<recipe>/<name>.yaml`` first, then
``configs/<name>.yaml``; a preset may name a ``base:`` preset it extends), then the overrides.
Unknown keys and invalid values raise ``ConfigError`` before any work is done.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from sgl_betty.config import HYPERGRAD_TYPES, HypergradConfig, SGLConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
SEARCH_METHODS = ("darts", "pc_darts", "p_darts", "darts_minus")
DATASETS = ("cifar100", "cifar10", "synthetic")
UNLABELED = ("cifar10", "cifar100", "train", "synthetic")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A configuration the run cannot use; the message names the key and the allowed values."""


@dataclass
class HypergradSchema:
    type: str = "unrolled"
    darts_alpha: float = 0.01
    neumann_iterations: int = 1
    neumann_alpha: float = 1.0
    cg_iterations: int = 1
    cg_alpha: float = 1.0


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
    dataset: str = "cifar100"
    unlabeled: str = "cifar10"
    root: str = "data"
    download: bool = False
    train_portion: float = 0.5
    num_workers: int = 2
    image_size: int | None = None
    limit: int | None = None
    synthetic: SyntheticSchema = field(default_factory=SyntheticSchema)


@dataclass
class RunSchema:
    # None: runs/<date>-<method>-<hypergrad>-k<K>
    dir: str | None = None
    log_every: int = 10
    progress: bool = True


@dataclass
class RunConfig:
    preset: str = "paper"
    seed: int = 2
    learners: int = 2
    lam: float = 0.1
    device: str = "auto"
    search: SearchSchema = field(default_factory=SearchSchema)
    hypergrad: HypergradSchema = field(default_factory=HypergradSchema)
    data: DataSchema = field(default_factory=DataSchema)
    run: RunSchema = field(default_factory=RunSchema)


def _check_choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}")


def _check_positive(cfg: DictConfig, *keys: str, allow_zero: bool = False) -> None:
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{key}={value} is invalid; it must be {bound}")


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express."""
    if cfg.learners < 1:
        raise ConfigError(f"learners={cfg.learners} is invalid; SGL needs K >= 1 (K = 1 is the plain method)")
    if not cfg.lam >= 0:
        raise ConfigError(f"lam={cfg.lam} is invalid; the pseudo-label weight must be >= 0")
    _check_choice("search.method", cfg.search.method, SEARCH_METHODS)
    _check_choice("hypergrad.type", cfg.hypergrad.type, HYPERGRAD_TYPES)
    _check_choice("data.dataset", cfg.data.dataset, DATASETS)
    _check_choice("data.unlabeled", cfg.data.unlabeled, UNLABELED)
    _check_choice("device", cfg.device, DEVICES)
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
        "hypergrad.darts_alpha",
        "hypergrad.neumann_alpha",
        "hypergrad.cg_iterations",
        "hypergrad.cg_alpha",
        "data.limit",
        "data.image_size",
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
        allow_zero=True,
    )
    if not 0 < cfg.data.train_portion < 1:
        raise ConfigError(f"data.train_portion={cfg.data.train_portion} must be in (0, 1)")
    if cfg.search.layers < 3:
        raise ConfigError(f"search.layers={cfg.search.layers} must be >= 3 (the network has two reduction cells)")


def preset_path(name: str, recipe: str | None = None, config_dir: Path = CONFIG_DIR) -> Path:
    candidates = ([config_dir / recipe / f"{name}.yaml"] if recipe else []) + [config_dir / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted({p.stem for p in config_dir.glob("*.yaml")} | ({p.stem for p in (config_dir / recipe).glob("*.yaml")} if recipe else set()))
    raise ConfigError(f"unknown preset {name!r}; available presets: {', '.join(known)} (in {config_dir})")


def _preset_chain(name: str, recipe: str | None, config_dir: Path) -> list[DictConfig]:
    chain, seen = [], set()
    while name is not None:
        if name in seen:
            raise ConfigError(f"preset {name!r} extends itself through 'base:'")
        seen.add(name)
        path = preset_path(name, recipe, config_dir)
        layer = OmegaConf.load(path)
        name = layer.pop("base", None)
        chain.append(layer)
    return list(reversed(chain))


def load_config(overrides: list[str] | None = None, recipe: str | None = None, config_dir: Path = CONFIG_DIR) -> DictConfig:
    """Schema defaults <- preset YAML (with its bases) <- command-line overrides ``key=value``."""
    overrides = list(overrides or [])
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. hypergrad.type=neumann)")
    try:
        cli = OmegaConf.from_dotlist(overrides)
        preset = cli.get("preset", RunConfig.preset)
        cfg = OmegaConf.structured(RunConfig)
        for layer in _preset_chain(str(preset), recipe, config_dir):
            cfg = OmegaConf.merge(cfg, layer)
        cfg = OmegaConf.merge(cfg, cli)
        cfg.preset = str(preset)
    except OmegaConfBaseException as error:
        raise ConfigError(_describe(error)) from None
    validate(cfg)
    return cfg


def config_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every leaf key of the schema, dotted (``search.method``, ...)."""
    node = OmegaConf.structured(RunConfig) if node is None else node
    keys = []
    for name in node:
        value = node[name]
        dotted = f"{prefix}{name}"
        keys += config_keys(value, dotted + ".") if isinstance(value, DictConfig) else [dotted]
    return keys


def _describe(error: OmegaConfBaseException) -> str:
    key = getattr(error, "full_key", None)
    message = str(error).splitlines()[0]
    if isinstance(error, ConfigKeyError):
        close = difflib.get_close_matches(str(key), config_keys(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else "; see `config_keys()` for every field"
        return f"unknown config key {key!r}{hint}"
    if key:
        return f"invalid value for {key}: {message}"
    return message


def sgl_config(cfg: DictConfig, **callables) -> SGLConfig:
    """The engine's SGLConfig from a run config (losses default to classification)."""
    steps_warmup = 0  # set by the recipe from arch_warmup_epochs and the epoch length
    return SGLConfig(
        lam=cfg.lam,
        hypergrad=HypergradConfig(**OmegaConf.to_container(cfg.hypergrad)),
        pseudo_label_arch_grad=cfg.search.pseudo_label_arch_grad,
        detach_pseudo_labels=cfg.search.detach_pseudo_labels,
        grad_clip_v=cfg.search.grad_clip,
        grad_clip_w=cfg.search.grad_clip,
        arch_warmup_steps=steps_warmup,
        **callables,
    )


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
