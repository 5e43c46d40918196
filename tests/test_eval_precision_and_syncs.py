"""The evaluation's bf16 option and its test pass, which reads the device once, not per batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from sgl_betty.evaluation import EvalTrainer, NetworkCIFAR, TrainingSettings
from sgl_betty.evaluation.trainer import EpochSums
from sgl_betty.experiment.config import ConfigError, load_config
from sgl_betty.experiment.evaluate import training_settings
from sgl_betty.runtime import init_distributed

# Everything that copies a tensor's value to the host: a synchronisation on a GPU.
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def host_reads(monkeypatch):
    calls: list[str] = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def tiny_trainer(precision: str = "fp32") -> EvalTrainer:
    torch.manual_seed(0)
    network = NetworkCIFAR(4, 10, 3, False, "DARTS_V2")
    settings = TrainingSettings(epochs=1, precision=precision)
    return EvalTrainer(network, settings, init_distributed(torch.device("cpu")))


def image_batches(count: int = 3, size: int = 4):
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 3, 8, 8, generator=generator), torch.randint(0, 10, (size,)))
        for _ in range(count)
    ]


@torch.no_grad()
def reference_figures(network, batches):
    network.eval()
    loss = correct = correct5 = total = 0.0
    for images, labels in batches:
        logits, _ = network(images)
        loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
        top5 = logits.topk(5, dim=1).indices
        correct5 += sum(label in row for label, row in zip(labels.tolist(), top5.tolist()))
        total += len(labels)
    return loss / total, correct / total, correct5 / total, total


def test_the_test_pass_reads_the_device_once_and_reports_the_reference_figures(host_reads):
    trainer = tiny_trainer()
    batches = image_batches()
    result = trainer.test(batches)
    assert host_reads == ["tolist"]  # it read three figures per batch before

    host_reads.clear()
    loss, top1, top5, total = reference_figures(trainer.network, batches)
    assert result.examples == total == 12
    assert result.loss == pytest.approx(loss, rel=1e-6)
    assert result.top1 == pytest.approx(top1) and result.top5 == pytest.approx(top5)


def classifier_dtypes(trainer: EvalTrainer) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    trainer.network.classifier.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_precision_sets_the_forward_dtype_and_keeps_float32_weights(precision, dtype):
    trainer = tiny_trainer(precision)
    seen = classifier_dtypes(trainer)
    images, labels = image_batches(1)[0]
    sums = EpochSums(torch.device("cpu"))
    trainer.train_step(images, labels, sums)
    result = trainer.test(image_batches(1))

    assert seen == [dtype, dtype]  # the training step's forward and the test pass's
    assert all(p.dtype == torch.float32 for p in trainer.network.parameters())
    assert all(
        p.grad is None or p.grad.dtype == torch.float32 for p in trainer.network.parameters()
    )
    assert sums.loss_sum.dtype == torch.float64 and 0 < sums.loss_sum.item() < 1e3
    assert 0 <= result.top1 <= 1


def test_eval_precision_comes_from_the_config_and_is_checked():
    assert (
        training_settings(load_config(["preset=tiny", "eval.precision=bf16"])).precision == "bf16"
    )
    assert training_settings(load_config(["preset=tiny"])).precision == "fp32"
    with pytest.raises(ConfigError, match="eval.precision='fp16'.*fp32, bf16"):
        load_config(["preset=tiny", "eval.precision=fp16"])
    with pytest.raises(ValueError, match="precision='half'"):
        TrainingSettings(epochs=1, precision="half")
    assert OmegaConf.select(load_config([]), "eval.deterministic") is False
