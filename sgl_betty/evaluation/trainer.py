"""Training an evaluation network from scratch, as DARTS's train.py and train_imagenet.py do.

SGD with momentum and weight decay; the learning rate is set at the start of every epoch
(cosine to 0, or a step decay); drop path grows linearly from 0 to ``drop_path_prob``; the
auxiliary head's loss is added with its weight; gradients are clipped by norm. With a
``DistributedContext`` of several processes the network trains under DistributedDataParallel
and the reported figures are summed over every rank.

An epoch can also be run in pieces, for runs that checkpoint and resume inside an epoch:
``start_epoch``, ``train_batches`` over an iterator of the loader (with a hook after every
step and ``EpochSums`` carried over from a checkpoint), then ``finish_epoch``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sgl_betty.choices import LRSchedule, Precision, values
from sgl_betty.runtime import DistributedContext

LR_SCHEDULES = values(LRSchedule)
# Autocast dtype of the forward passes per precision; weights, gradients and momentum stay float32.
AUTOCAST_DTYPES = {Precision.fp32.value: None, Precision.bf16.value: torch.bfloat16}


@dataclass
class TrainingSettings:
    """How ``EvalTrainer`` trains: the schedule, the optimizer and the regularisation.

    Also the training part of the recipes' ``eval`` section: ``experiment.config.EvalSchema``
    extends it, so that both read the same fields with the same defaults (the recipes give
    ``epochs`` the paper's 600). Not frozen, since OmegaConf makes a frozen dataclass's node
    read-only.
    """

    epochs: int
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    # cosine to 0 over the epochs (DARTS CIFAR) or step: times lr_gamma every lr_decay_period
    # epochs (DARTS ImageNet).
    lr_schedule: str = LRSchedule.cosine.value
    lr_gamma: float = 0.97
    lr_decay_period: int = 1
    # Only used when the network was built with an auxiliary head.
    auxiliary_weight: float = 0.4
    drop_path_prob: float = 0.2
    # 0 turns clipping off.
    grad_clip: float = 5.0
    label_smoothing: float = 0.0
    # None: every batch of the loader; a number caps an epoch (quick runs).
    steps_per_epoch: int | None = None
    # fp32, or bf16 autocast for the forward passes (GPU); weights and optimizer stay float32.
    precision: str = Precision.fp32.value

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is unknown; choose one of: {', '.join(LR_SCHEDULES)}"
            )
        if self.precision not in AUTOCAST_DTYPES:
            raise ValueError(
                f"precision={self.precision!r} is unknown; choose one of: {', '.join(AUTOCAST_DTYPES)}"
            )

    def learning_rate(self, epoch: int) -> float:
        """The rate of epoch ``epoch`` (0-based); the reference steps its scheduler before each
        epoch, so epoch 0 runs at the full rate."""
        if self.lr_schedule == "cosine":
            return 0.5 * self.lr * (1.0 + math.cos(math.pi * epoch / self.epochs))
        return self.lr * self.lr_gamma ** (epoch // self.lr_decay_period)

    def drop_path_at(self, epoch: int) -> float:
        return self.drop_path_prob * epoch / self.epochs


@dataclass(frozen=True)
class EpochResult:
    # The optimised objective: main loss plus the weighted auxiliary loss.
    loss: float
    accuracy: float
    examples: int
    steps: int


@dataclass(frozen=True)
class TestResult:
    # Not a pytest test class, whatever its name.
    __test__ = False

    top1: float
    # Top-5 accuracy, or top-k with k the number of classes when there are fewer than 5.
    top5: float
    loss: float
    examples: int

    @property
    def error_percent(self) -> float:
        return 100.0 * (1.0 - self.top1)


class EpochSums:
    """This rank's running figures of the epoch in progress.

    Kept on the device so that a GPU step never waits for a ``.item()``; ``to_dict`` (for a
    checkpoint) synchronises, ``from_dict`` puts a checkpoint's figures back.
    """

    def __init__(
        self,
        device: torch.device,
        steps: int = 0,
        loss_sum: float = 0.0,
        correct: int = 0,
        examples: int = 0,
    ):
        self.steps = steps
        self.examples = examples
        self.loss_sum = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        self.correct = torch.tensor(correct, dtype=torch.int64, device=device)

    def to_dict(self) -> dict:
        return {
            "steps": self.steps,
            "examples": self.examples,
            "loss_sum": self.loss_sum.item(),
            "correct": int(self.correct.item()),
        }

    @classmethod
    def from_dict(cls, state: dict, device: torch.device) -> EpochSums:
        return cls(device, **state)


class EvalTrainer:
    def __init__(self, network: nn.Module, settings: TrainingSettings, context: DistributedContext):
        self.settings = settings
        self.context = context
        self.network = network.to(context.device)
        if context.enabled:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.model: nn.Module = DistributedDataParallel(self.network, device_ids=device_ids)
        else:
            self.model = self.network
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=settings.lr,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=settings.label_smoothing)

    def autocast(self) -> torch.autocast:
        """The forward passes' precision (a no-op for fp32)."""
        dtype = AUTOCAST_DTYPES[self.settings.precision]
        return torch.autocast(self.context.device.type, dtype=dtype, enabled=dtype is not None)

    def set_epoch(self, epoch: int) -> float:
        """Learning rate and drop path of ``epoch``; returns the learning rate."""
        lr = self.settings.learning_rate(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.drop_path_prob = self.settings.drop_path_at(epoch)
        return lr

    def steps_in_epoch(self, loader) -> int:
        """Optimizer steps of one epoch over ``loader``: all its batches, or the cap."""
        if self.settings.steps_per_epoch is None:
            return len(loader)
        return min(len(loader), self.settings.steps_per_epoch)

    def start_epoch(self, epoch: int, loader) -> None:
        """Learning rate, drop path, the sampler's shuffle of ``epoch``; training mode."""
        self.set_epoch(epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.model.train()

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, sums: EpochSums) -> None:
        """One optimizer step on a batch; its loss and accuracy go into ``sums``."""
        device = self.context.device
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            logits, logits_aux = self.model(images)
            loss = self.criterion(logits, labels)
            if logits_aux is not None:
                loss = loss + self.settings.auxiliary_weight * self.criterion(logits_aux, labels)
        loss.backward()
        if self.settings.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
        self.optimizer.step()
        sums.loss_sum += loss.detach().double() * labels.numel()
        sums.correct += (logits.detach().argmax(-1) == labels).sum()
        sums.examples += labels.numel()
        sums.steps += 1

    def train_batches(
        self,
        batches: Iterator,
        sums: EpochSums,
        steps: int,
        after_step: Callable[[EpochSums], None] | None = None,
    ) -> EpochSums:
        """Step through ``batches`` until ``sums`` counts ``steps`` steps in this epoch.

        The next batch is only drawn when a step is due, so that no augmentation is drawn
        for a batch that is not trained on. ``after_step`` runs after every step (checkpoints,
        stop requests); an exception from it ends the epoch there.
        """
        while sums.steps < steps:
            images, labels = next(batches)
            self.train_step(images, labels, sums)
            if after_step is not None:
                after_step(sums)
        return sums

    def finish_epoch(self, sums: EpochSums) -> EpochResult:
        """The epoch's figures summed over every rank."""
        total_loss, total_correct, total_examples = self.context.all_reduce_sum(
            [sums.loss_sum.item(), float(sums.correct.item()), float(sums.examples)]
        )
        return EpochResult(
            loss=total_loss / max(total_examples, 1),
            accuracy=total_correct / max(total_examples, 1),
            examples=int(total_examples),
            steps=sums.steps,
        )

    def train_epoch(self, epoch: int, loader) -> EpochResult:
        self.start_epoch(epoch, loader)
        sums = EpochSums(self.context.device)
        self.train_batches(iter(loader), sums, self.steps_in_epoch(loader))
        return self.finish_epoch(sums)

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue training: weights (with BatchNorm statistics)
        and the optimizer's momentum buffers. The learning rate follows from the epoch."""
        return {"network": self.network.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])

    @torch.no_grad()
    def test(self, loader) -> TestResult:
        """Accuracy of the network in eval mode on this rank's part of the test set, summed
        over ranks; the loss is plain cross-entropy, as the reference reports it.

        The sums stay on the device until the pass is over: one host sync per test pass."""
        self.context.broadcast_buffers(self.network)
        self.network.eval()
        device = self.context.device
        # loss, top-1 correct, top-5 correct
        sums = torch.zeros(3, dtype=torch.float64, device=device)
        examples = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with self.autocast():
                logits, _ = self.network(images)
            logits = logits.float()
            top = logits.topk(min(5, logits.size(1)), dim=1).indices
            sums += torch.stack(
                [
                    nn.functional.cross_entropy(logits, labels, reduction="sum"),
                    (logits.argmax(1) == labels).sum(),
                    (top == labels.unsqueeze(1)).any(dim=1).sum(),
                ]
            )
            examples += labels.numel()
        # Filled on the device: a copy from the host would wait for the device.
        counts = torch.full((1,), float(examples), dtype=torch.float64, device=device)
        loss_sum, correct1, correctk, total = self.context.all_reduce_sum(torch.cat([sums, counts]))
        total = max(total, 1.0)
        return TestResult(
            top1=correct1 / total, top5=correctk / total, loss=loss_sum / total, examples=int(total)
        )
