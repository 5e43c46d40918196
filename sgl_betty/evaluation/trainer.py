"""Training an evaluation network from scratch, as DARTS's train.py and train_imagenet.py do.

SGD with momentum and weight decay; the learning rate is set at the start of every epoch
(cosine to 0, or a step decay); drop path grows linearly from 0 to ``drop_path_prob``; the
auxiliary head's loss is added with its weight; gradients are clipped by norm. With a
``DistributedContext`` of several processes the network trains under DistributedDataParallel
and the reported figures are summed over every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .distributed import DistributedContext

LR_SCHEDULES = ("cosine", "step")


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int
    lr: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    lr_schedule: str = "cosine"
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

    def __post_init__(self) -> None:
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(
                f"lr_schedule={self.lr_schedule!r} is unknown; choose one of: {', '.join(LR_SCHEDULES)}"
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

    def set_epoch(self, epoch: int) -> float:
        """Learning rate and drop path of ``epoch``; returns the learning rate."""
        lr = self.settings.learning_rate(epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.network.drop_path_prob = self.settings.drop_path_at(epoch)
        return lr

    def train_epoch(self, epoch: int, loader) -> EpochResult:
        self.set_epoch(epoch)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.model.train()
        device = self.context.device
        # Kept on the device so that a GPU step never waits for a .item().
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        examples = steps = 0
        for images, labels in loader:
            if self.settings.steps_per_epoch is not None and steps >= self.settings.steps_per_epoch:
                break
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            self.optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = self.model(images)
            loss = self.criterion(logits, labels)
            if logits_aux is not None:
                loss = loss + self.settings.auxiliary_weight * self.criterion(logits_aux, labels)
            loss.backward()
            if self.settings.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.network.parameters(), self.settings.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach().double() * labels.numel()
            correct += (logits.detach().argmax(-1) == labels).sum()
            examples += labels.numel()
            steps += 1
        total_loss, total_correct, total_examples = self.context.all_reduce_sum(
            [loss_sum.item(), float(correct.item()), float(examples)]
        )
        return EpochResult(
            loss=total_loss / max(total_examples, 1),
            accuracy=total_correct / max(total_examples, 1),
            examples=int(total_examples),
            steps=steps,
        )

    @torch.no_grad()
    def test(self, loader) -> TestResult:
        """Accuracy of the network in eval mode on this rank's part of the test set, summed
        over ranks; the loss is plain cross-entropy, as the reference reports it."""
        self.context.broadcast_buffers(self.network)
        self.network.eval()
        device = self.context.device
        loss_sum = correct1 = correctk = 0.0
        examples = 0
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            logits, _ = self.network(images)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum").item()
            correct1 += (logits.argmax(1) == labels).sum().item()
            top = logits.topk(min(5, logits.size(1)), dim=1).indices
            correctk += (top == labels.unsqueeze(1)).any(dim=1).sum().item()
            examples += labels.numel()
        loss_sum, correct1, correctk, total = self.context.all_reduce_sum(
            [loss_sum, correct1, correctk, float(examples)]
        )
        total = max(total, 1.0)
        return TestResult(
            top1=correct1 / total, top5=correctk / total, loss=loss_sum / total, examples=int(total)
        )
