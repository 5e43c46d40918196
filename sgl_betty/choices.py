"""Every closed set of named options of the configs, defined once, as str-valued Enums.

A member is its value: it compares, hashes, prints and formats as the string (``f"{m}"``,
``str(m)``, ``repr(m)``, JSON), so YAML files, command-line overrides and run folders keep
plain strings, and ``HypergradType.neumann == "neumann"``. The recipes' schema fields stay
``str`` and are checked against these sets (``check_choice``), so that a wrong value gets the
project's message (``key='x' is not allowed; choose one of: ...``) and not OmegaConf's.

The search methods are not here: they are an open registry (``register_method``).
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A str-valued option; every member is named as its value."""

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return repr(self.value)

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    # Members hash as their strings, so that a plain string finds a member's dict entry.
    __hash__ = str.__hash__


def values(choice: type[Choice]) -> tuple[str, ...]:
    """The allowed strings, in definition order."""
    return tuple(member.value for member in choice)


class HypergradType(Choice):
    """How the architecture's hypergradient is computed (``HypergradConfig``)."""

    first_order = "first_order"
    darts = "darts"
    unrolled = "unrolled"
    unrolled_post_step = "unrolled_post_step"
    neumann = "neumann"
    cg = "cg"


class Precision(Choice):
    """The descent steps' precision: float32, or bfloat16 autocast (GPU)."""

    fp32 = "fp32"
    bf16 = "bf16"


class SearchDataset(Choice):
    """The labelled data of a search (D_tr, D_val)."""

    cifar100 = "cifar100"
    cifar10 = "cifar10"
    synthetic = "synthetic"


class UnlabeledSource(Choice):
    """Where D_u comes from: the other CIFAR (the paper), the training images (the released
    code), or synthetic images."""

    cifar10 = "cifar10"
    cifar100 = "cifar100"
    train = "train"
    synthetic = "synthetic"


class EvalDataset(Choice):
    """The data a found cell is trained on from scratch."""

    cifar100 = "cifar100"
    cifar10 = "cifar10"
    synthetic = "synthetic"
    imagenet = "imagenet"


class LRSchedule(Choice):
    """The evaluation's learning rate: cosine to 0 (DARTS CIFAR), or step decay (ImageNet)."""

    cosine = "cosine"
    step = "step"


class SkipDecay(Choice):
    """How DARTS-'s auxiliary skip weight falls from 1 to 0 over the search."""

    linear = "linear"
    cosine = "cosine"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


class EvalLearners(Choice):
    """With ``--stage all``: the best learner's genotype (by search accuracy), or every one's."""

    best = "best"
    all = "all"
