"""Value checks that would otherwise fail late: in the middle of training (a drop-path rate of
1.5 at epoch 400 of 600), inside an optimizer's constructor, or not at all (an architecture
warm-up as long as the search reports the random initialisation's genotype).

``check_values(cfg)`` raises ConfigError naming the key, its value and the allowed range, before
any data is loaded; settings that are allowed but probably not meant give a ConfigWarning.
"""

from __future__ import annotations

import math
import warnings

from omegaconf import DictConfig, ListConfig, OmegaConf

from sgl_betty.errors import ConfigError, ConfigWarning

# In [0, 1): momenta and Adam's betas (1 never forgets, above 1 diverges), probabilities.
UNIT_INTERVAL = (
    "search.weight_momentum",
    "search.arch_beta1",
    "search.arch_beta2",
    "eval.momentum",
    "eval.drop_path_prob",
    "eval.label_smoothing",
)
# The networks halve the images twice (two reduction cells) and the stem needs a few pixels.
MIN_IMAGE_SIZE = 4


def _floats(node, prefix: str = ""):
    keys = range(len(node)) if isinstance(node, ListConfig) else node.keys()
    for key in keys:
        value = node[key]
        dotted = f"{prefix}{key}"
        if isinstance(value, (DictConfig, ListConfig)):
            yield from _floats(value, dotted + ".")
        elif isinstance(value, float):
            yield dotted, value


def _check_finite(cfg: DictConfig) -> None:
    for key, value in _floats(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is invalid; it must be a finite number")


def _check_unit_interval(cfg: DictConfig) -> None:
    for key in UNIT_INTERVAL:
        value = OmegaConf.select(cfg, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{key}={value} is invalid; it must be in [0, 1)")
    for index, rate in enumerate(cfg.search.pdarts_skip_dropout):
        if not 0 <= rate < 1:
            raise ConfigError(
                f"search.pdarts_skip_dropout[{index}]={rate} is invalid; a dropout rate must be "
                "in [0, 1)"
            )


def _check_warmup(cfg: DictConfig) -> None:
    search = cfg.search
    if search.arch_warmup_epochs >= search.epochs:
        per_stage = " (in every P-DARTS stage)" if search.method == "p_darts" else ""
        raise ConfigError(
            f"search.arch_warmup_epochs={search.arch_warmup_epochs} must be smaller than "
            f"search.epochs={search.epochs}{per_stage}: the architecture would never train and "
            "the search would report the genotype of its random initialisation"
        )


def _synthetic_splits(cfg: DictConfig) -> dict[str, int]:
    sizes = cfg.data.synthetic
    splits = {"D_tr": sizes.train, "D_val": sizes.val}
    unlabeled = {"synthetic": sizes.unlabeled, "train": sizes.train}.get(cfg.data.unlabeled)
    if unlabeled is not None:
        splits["D_u"] = unlabeled
    if cfg.data.limit is not None:
        splits = {name: min(size, cfg.data.limit) for name, size in splits.items()}
    return splits


def _check_synthetic_batches(cfg: DictConfig) -> None:
    """Synthetic split sizes are known from the config; CIFAR's are checked when loaded."""
    if cfg.data.dataset != "synthetic":
        return
    for name, size in _synthetic_splits(cfg).items():
        if cfg.search.batch_size > size:
            raise ConfigError(
                f"search.batch_size={cfg.search.batch_size} is larger than {name} "
                f"({size} images): no full batch would be drawn; lower search.batch_size or raise "
                "data.synthetic's sizes (or data.limit)"
            )
    sizes = cfg.data.synthetic
    training = sizes.train + sizes.val
    if cfg.data.limit is not None:
        training = min(training, cfg.data.limit)
    if cfg.eval.batch_size > training:
        raise ConfigError(
            f"eval.batch_size={cfg.eval.batch_size} is larger than the evaluation's training set "
            f"({training} images); lower eval.batch_size or raise data.synthetic's sizes"
        )


def check_values(cfg: DictConfig) -> None:
    _check_finite(cfg)
    _check_unit_interval(cfg)
    _check_warmup(cfg)
    if cfg.data.image_size is not None and cfg.data.image_size < MIN_IMAGE_SIZE:
        raise ConfigError(
            f"data.image_size={cfg.data.image_size} is too small: the networks halve the images "
            f"twice; use data.image_size >= {MIN_IMAGE_SIZE} (8 or more for a meaningful search)"
        )
    _check_synthetic_batches(cfg)
    if cfg.learners == 1 and cfg.lam != 0:
        warnings.warn(
            f"lam={cfg.lam} has no effect with learners=1: the pseudo-label term needs peers "
            "(K >= 2); the search runs the plain method",
            ConfigWarning,
            stacklevel=3,
        )
