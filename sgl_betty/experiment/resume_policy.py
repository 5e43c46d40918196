"""Which overrides a resumed run accepts: those that cannot change what the run already did.

A resumed run continues its checkpoint; it must end where the uninterrupted run would have (bit
for bit on the same machine). So it accepts overrides of how it is watched and kept (logging,
progress, tracking, checkpoint interval, threads), of where its data lives, and of the device,
and refuses every other change before any work starts, naming the key.

The number of epochs changes the past under most schedules: the search's cosine learning rates
(per step, over all steps), DARTS-'s decaying skip weight and P-DARTS's dropout follow the
progress through the whole search, so ``search.epochs`` is never accepted. An evaluation's cosine
learning rate and its drop-path rate (growing to ``eval.drop_path_prob`` over the epochs) do
too; ``eval.epochs`` is accepted only under the step schedule without drop path, where no past
epoch depends on it.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from sgl_betty.errors import ConfigError

# Exact keys, or prefixes ending in ".".
ACCEPTED = (
    "run.log_every",
    "run.progress",
    "run.threads",
    "checkpoint.",
    "tracking.",
    "device",
    "data.root",
    "data.download",
    "data.local_checksums",
)


def _accepted(key: str) -> bool:
    return any(key.startswith(item) if item.endswith(".") else key == item for item in ACCEPTED)


def _leaf_keys(node, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        keys = []
        for key, value in node.items():
            keys += _leaf_keys(value, f"{prefix}{key}.")
        return keys
    return [prefix[:-1]]


def _epochs_refusal(saved: DictConfig) -> str | None:
    """Why eval.epochs cannot change for a run of config ``saved`` (None: it can)."""
    if saved.eval.lr_schedule == "cosine":
        return "the cosine learning rate of every epoch depends on eval.epochs"
    if saved.eval.drop_path_prob > 0:
        return "the drop-path rate of every epoch grows to eval.drop_path_prob over eval.epochs"
    return None


def check_resume_overrides(saved: DictConfig, resumed: DictConfig, overrides: DictConfig) -> None:
    """ConfigError for the first override that changes ``saved`` (the run's config) in a way
    that would change what the run already did."""
    for key in _leaf_keys(OmegaConf.to_container(overrides, resolve=False)):
        if key == "run.dir":
            raise ConfigError(
                "run.dir cannot be overridden on a resume: the run continues in the folder "
                "given to --resume"
            )
        before = OmegaConf.select(saved, key, default=None)
        after = OmegaConf.select(resumed, key, default=None)
        if before == after or _accepted(key):
            continue
        reason = "it would change what the run already did"
        if key == "eval.epochs":
            refusal = _epochs_refusal(saved)
            if refusal is None:
                continue
            reason = refusal
        elif key == "search.epochs":
            reason = "the search's schedules (cosine learning rates, ...) span all its epochs"
        raise ConfigError(
            f"--resume: {key}={after} differs from the run's {key}={before} ({reason}); a resumed "
            "run accepts only overrides of logging, progress, tracking, checkpoint.every_steps, "
            "run.threads, device and the data location. Start a new run with it instead "
            "(without --resume)"
        )
