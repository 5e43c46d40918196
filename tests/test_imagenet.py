"""The ImageNet evaluation recipe on a tiny ImageFolder written by the test."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from sgl_betty.data.imagenet import imagenet_test_transform, imagenet_train_transform
from sgl_betty.evaluation import NetworkImageNet, load_trained_network
from sgl_betty.experiment.config import load_config
from sgl_betty.experiment.evaluate import check_eval_config, training_settings
from sgl_betty.params import count_parameters_m

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
from recipe import CONFIG_DIR, main  # noqa: E402

CLASSES = ("cat", "dog", "fish")


def write_image_folder(root, train_per_class=4, val_per_class=2, classes=CLASSES):
    rng = np.random.default_rng(0)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_paper_preset_is_the_darts_imagenet_schedule():
    cfg = load_config([], recipe="imagenet", config_dir=CONFIG_DIR)
    e = cfg.eval
    assert e.dataset == "imagenet"
    assert (e.layers, e.init_channels, e.epochs, e.batch_size) == (14, 48, 250, 128)
    assert (e.lr, e.momentum, e.weight_decay, e.grad_clip) == (0.1, 0.9, 3e-5, 5.0)
    assert (e.label_smoothing, e.auxiliary, e.auxiliary_weight, e.drop_path_prob) == (
        0.1,
        True,
        0.4,
        0.0,
    )
    assert e.cutout is False and e.imagenet.crop_size == 224
    check_eval_config(cfg)
    settings = training_settings(cfg)
    assert [settings.learning_rate(epoch) for epoch in (0, 1, 10)] == pytest.approx(
        [0.1, 0.097, 0.1 * 0.97**10]
    )


def test_reference_augmentation_and_test_crop():
    train = imagenet_train_transform(224).transforms
    assert isinstance(train[0], transforms.RandomResizedCrop) and train[0].size == (224, 224)
    assert isinstance(train[1], transforms.RandomHorizontalFlip)
    jitter = train[2]
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4)
    assert jitter.saturation == (0.6, 1.4) and jitter.hue == (-0.2, 0.2)
    assert tuple(train[-1].mean) == (0.485, 0.456, 0.406)
    assert tuple(train[-1].std) == (0.229, 0.224, 0.225)
    test = imagenet_test_transform(224).transforms
    assert test[0].size == 256 and test[1].size == (224, 224)

    image = Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8))
    assert imagenet_train_transform(32)(image).shape == (3, 32, 32)
    assert imagenet_test_transform(32)(image).shape == (3, 32, 32)


@pytest.mark.slow
def test_tiny_imagenet_evaluation_trains_on_train_and_tests_on_val(tmp_path):
    root = write_image_folder(tmp_path / "imagenet")
    run = tmp_path / "run"
    overrides = [
        "preset=tiny",
        "device=cpu",
        "eval.genotype=DARTS_V2",
        f"eval.imagenet.root={root}",
    ]
    assert main("imagenet", overrides + [f"run.dir={run}"]) == 0

    summary = json.loads((run / "summary.json").read_text())
    assert summary["dataset"] == "imagenet" and summary["test_images"] == 6
    network, payload = load_trained_network(run / "model.pt")
    assert payload["network"]["kind"] == "imagenet"
    assert isinstance(network, NetworkImageNet) and network.classifier.out_features == 3
    assert summary["params_m"] == count_parameters_m(NetworkImageNet(4, 3, 3, False, "DARTS_V2"))

    val = datasets.ImageFolder(root / "val", transform=imagenet_test_transform(32))
    with torch.no_grad():
        images = torch.stack([image for image, _ in val])
        labels = torch.tensor([label for _, label in val])
        logits, _ = network(images)
    expected = 100.0 * (1 - (logits.argmax(1) == labels).float().mean().item())
    assert summary["test_error"] == pytest.approx(expected)
    # Three classes: the top-5 (here top-3) error is zero by construction.
    assert summary["test_top5_error"] == 0


@pytest.mark.parametrize(
    "setup, overrides, message",
    [
        ("none", [], "ImageNet not found"),
        ("mismatch", [], "hold different classes"),
        ("ok", ["eval.imagenet.crop_size=48"], "multiple of 32"),
        ("ok", ["eval.auxiliary=true"], "eval.imagenet.crop_size >= 224"),
        ("ok", ["eval.lr_schedule=linear"], "eval.lr_schedule='linear' is not allowed"),
    ],
)
def test_imagenet_errors_name_the_problem(tmp_path, capsys, setup, overrides, message):
    root = tmp_path / "imagenet"
    if setup == "ok":
        write_image_folder(root, train_per_class=1, val_per_class=1)
    elif setup == "mismatch":
        write_image_folder(root, train_per_class=1, val_per_class=1)
        (root / "val" / "bird").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "val" / "bird" / "0.png")
    base = ["preset=tiny", "device=cpu", "eval.genotype=DARTS_V2", f"eval.imagenet.root={root}"]
    assert main("imagenet", base + overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_imagenet_recipe_only_evaluates():
    with pytest.raises(SystemExit) as exit_info:
        main("imagenet", ["--stage", "search"])
    assert exit_info.value.code == 2
