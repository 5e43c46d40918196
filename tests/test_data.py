import numpy as np
import pytest
import torch
from cifar_archives import write_cifar10, write_cifar100
from torchvision import datasets

from sgl_betty.data import (
    LOCAL_CHECKSUMS_FILE,
    Cutout,
    DatasetCorruptedError,
    DatasetNotFoundError,
    SyntheticSpec,
    build_eval_data,
    build_search_data,
    darts_split,
    load_cifar,
    make_synthetic,
)

TINY_SYNTHETIC = {"train": 64, "val": 64, "unlabeled": 48, "test": 32, "image_size": 16}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    # 5 batches of 20 -> 100 CIFAR-10 training images; CIFAR-100 also 100.
    return root, write_cifar10(root, images_per_batch=20), write_cifar100(root, train_images=100)


def _underlying(subset):
    return subset.dataset, list(subset.indices)


def test_cifar100_search_splits_first_and_second_half_with_cifar10_as_unlabeled(cifar_root):
    root, cifar10, cifar100 = cifar_root
    data = build_search_data("cifar100", root=root, batch_size=10, local_checksums=True)

    train_base, train_indices = _underlying(data.train.dataset)
    val_base, val_indices = _underlying(data.val.dataset)
    assert isinstance(train_base, datasets.CIFAR100)
    assert train_base is val_base
    np.testing.assert_array_equal(train_base.data, cifar100.train_images)
    assert train_base.targets == cifar100.train_labels
    assert train_indices == list(range(50)) and val_indices == list(range(50, 100))

    unlabeled_base = data.unlabeled.dataset.labeled
    assert isinstance(unlabeled_base, datasets.CIFAR10)
    assert not isinstance(unlabeled_base, datasets.CIFAR100)
    np.testing.assert_array_equal(unlabeled_base.data, cifar10.train_images)
    assert len(data.unlabeled.dataset) == 100
    assert len(data.test) == 20 and data.num_classes == 100

    images, labels = next(iter(data.train))
    assert images.shape == (10, 3, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and set(labels.tolist()) <= set(cifar100.train_labels[:50])
    unlabeled_batch = next(iter(data.unlabeled))
    assert isinstance(unlabeled_batch, torch.Tensor) and unlabeled_batch.shape == (10, 3, 32, 32)
    # Normalized with CIFAR-100's statistics: uniform random pixels land around zero.
    assert abs(float(images.mean())) < 0.5
    assert len(data.train) == 5 and len(data.val) == 5 and len(data.unlabeled) == 10
    assert "D_tr 50, D_val 50, D_u 100 (cifar10)" in data.describe()
    assert "locally generated" in data.describe()


def test_cifar10_search_takes_cifar100_images_as_unlabeled(cifar_root):
    root, cifar10, cifar100 = cifar_root
    data = build_search_data("cifar10", root=root, batch_size=10, local_checksums=True)
    train_base, _ = _underlying(data.train.dataset)
    assert isinstance(train_base, datasets.CIFAR10)
    assert not isinstance(train_base, datasets.CIFAR100)
    np.testing.assert_array_equal(train_base.data, cifar10.train_images)
    np.testing.assert_array_equal(data.unlabeled.dataset.labeled.data, cifar100.train_images)
    assert data.num_classes == 10 and len(data.train.dataset) == len(data.val.dataset) == 50


def test_unlabeled_train_reuses_the_labeled_half_without_labels(cifar_root):
    root, _, _ = cifar_root
    data = build_search_data("cifar100", "train", root=root, batch_size=10, local_checksums=True)
    assert data.unlabeled.dataset.labeled is data.train.dataset
    assert isinstance(data.unlabeled.dataset[0], torch.Tensor)
    assert len(data.unlabeled.dataset) == 50


def test_unlabeled_synthetic_with_real_cifar(cifar_root):
    root, _, _ = cifar_root
    data = build_search_data(
        "cifar10",
        "synthetic",
        root=root,
        batch_size=8,
        synthetic={"unlabeled": 24},
        local_checksums=True,
    )
    batch = next(iter(data.unlabeled))
    assert batch.shape == (8, 3, 32, 32) and len(data.unlabeled.dataset) == 24


def test_limit_and_train_portion(cifar_root):
    root, _, _ = cifar_root
    data = build_search_data(
        "cifar100", root=root, batch_size=4, limit=10, train_portion=0.6, local_checksums=True
    )
    assert data.train.dataset.indices == list(range(10))
    assert data.val.dataset.indices == list(range(60, 70))
    assert len(data.unlabeled.dataset) == 10 and len(data.test) == 10
    assert darts_split(7) == (range(0, 3), range(3, 7))
    with pytest.raises(ValueError, match="train_portion"):
        darts_split(10, 1.0)


def test_missing_dataset_names_directory_files_and_remedy(tmp_path):
    with pytest.raises(DatasetNotFoundError) as caught:
        build_search_data("cifar100", root=tmp_path, batch_size=4, local_checksums=True)
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert str(tmp_path / "cifar-100-python") in message
    assert "train, test, meta" in message
    assert "data.download=true" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message


def test_missing_unlabeled_cifar_is_reported_too(tmp_path):
    write_cifar100(tmp_path, train_images=20, test_images=4)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        build_search_data("cifar100", root=tmp_path, batch_size=4, local_checksums=True)


def test_partly_missing_folder_lists_missing_files(tmp_path):
    folder = write_cifar10(tmp_path, images_per_batch=4, test_images=4).folder
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing: data_batch_3"):
        load_cifar("cifar10", tmp_path, train=True, local_checksums=True)


def test_generated_files_without_manifest_fail_torchvision_md5_check(tmp_path):
    write_cifar10(tmp_path, images_per_batch=4, test_images=4, with_manifest=False)
    with pytest.raises(DatasetCorruptedError, match="md5"):
        load_cifar("cifar10", tmp_path, train=True, local_checksums=True)
    # The plain torchvision class is what ran and refused them.
    with pytest.raises(RuntimeError, match="corrupted"):
        datasets.CIFAR10(str(tmp_path), train=True, download=False)


def test_files_edited_after_manifest_are_rejected(tmp_path):
    folder = write_cifar100(tmp_path, train_images=8, test_images=4).folder
    assert (folder / LOCAL_CHECKSUMS_FILE).is_file()
    with open(folder / "test", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(DatasetCorruptedError):
        load_cifar("cifar100", tmp_path, train=False, local_checksums=True)


def test_bad_names_list_allowed_values(cifar_root):
    root, _, _ = cifar_root
    with pytest.raises(ValueError, match="allowed: cifar100, cifar10, synthetic"):
        build_search_data("imagenet", root=root)
    with pytest.raises(ValueError, match="allowed: cifar10, cifar100, train, synthetic"):
        build_search_data("cifar10", "svhn", root=root, local_checksums=True)
    with pytest.raises(ValueError, match="D_val"):
        build_search_data("cifar10", "cifar10", root=root, local_checksums=True)
    with pytest.raises(ValueError, match="allowed: cifar100, cifar10, synthetic"):
        build_eval_data("mnist", root=root)
    with pytest.raises(ValueError, match="unknown synthetic option"):
        build_search_data("synthetic", synthetic={"classes": 3})


def test_batch_larger_than_split_is_refused(cifar_root):
    root, _, _ = cifar_root
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_search_data("cifar100", root=root, batch_size=64, local_checksums=True)


def test_eval_data_uses_all_training_images_with_cutout(cifar_root):
    root, _, _ = cifar_root
    data = build_eval_data("cifar10", root=root, batch_size=20, local_checksums=True)
    assert len(data.train.dataset) == 100 and len(data.test.dataset) == 20
    assert any(isinstance(step, Cutout) for step in data.train.dataset.transform.transforms)
    images, labels = next(iter(data.train))
    assert images.shape == (20, 3, 32, 32) and labels.shape == (20,)
    plain = build_eval_data("cifar10", root=root, batch_size=20, cutout=False, local_checksums=True)
    assert not any(isinstance(step, Cutout) for step in plain.train.dataset.transform.transforms)


def test_synthetic_is_deterministic_from_its_seed():
    first = make_synthetic(SyntheticSpec(seed=3, train=40, val=20, unlabeled=10, test=10))
    again = make_synthetic({"seed": 3, "train": 40, "val": 20, "unlabeled": 10, "test": 10})
    other = make_synthetic(SyntheticSpec(seed=4, train=40, val=20, unlabeled=10, test=10))
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.train.targets, again.train.targets)
    assert torch.equal(first.unlabeled.images, again.unlabeled.images)
    assert not torch.allclose(first.train.images, other.train.images)
    # Changing one split's size leaves the other splits as they were.
    resized = make_synthetic(SyntheticSpec(seed=3, train=80, val=20, unlabeled=10, test=10))
    assert torch.equal(first.val.images, resized.val.images)
    assert first.train.images.shape == (40, 3, 32, 32)
    assert torch.bincount(first.train.targets).tolist() == [4] * 10
    unlabeled_item = first.unlabeled[0]
    assert isinstance(unlabeled_item, torch.Tensor) and unlabeled_item.shape == (3, 32, 32)


def test_synthetic_is_learnable_by_a_linear_model():
    splits = make_synthetic(SyntheticSpec(num_classes=10, train=512, test=512))
    x, y = splits.train.images.flatten(1), splits.train.targets
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    with torch.no_grad():
        held_out = model(splits.test.images.flatten(1)).argmax(1) == splits.test.targets
    assert held_out.float().mean() > 0.4  # chance is 0.1


def test_synthetic_search_loaders_are_reproducible_from_seed():
    def first_labels(seed):
        data = build_search_data("synthetic", batch_size=16, seed=seed, synthetic=TINY_SYNTHETIC)
        return next(iter(data.train))[1].tolist(), data

    labels, data = first_labels(seed=1)
    assert first_labels(seed=1)[0] == labels
    assert first_labels(seed=2)[0] != labels
    images, _ = next(iter(data.train))
    assert images.shape == (16, 3, 16, 16)
    assert next(iter(data.unlabeled)).shape == (16, 3, 16, 16)
    assert len(data.train) == 4 and len(data.unlabeled) == 3
    assert data.num_classes == 10 and len(data.test) == 32
    assert "D_u 48 (synthetic)" in data.describe()


def test_synthetic_eval_trains_on_train_and_val_together():
    data = build_eval_data("synthetic", batch_size=16, synthetic=TINY_SYNTHETIC)
    assert len(data.train.dataset) == 128 and len(data.test.dataset) == 32
    assert "cutout 16" in data.describe()


def test_cutout_zeroes_one_square_in_every_channel():
    cutout = Cutout(16, generator=torch.Generator().manual_seed(0))
    full_squares = 0
    for _ in range(50):
        image = torch.ones(3, 32, 32)
        zeroed = cutout(image) == 0
        assert torch.equal(image, torch.ones(3, 32, 32))  # input left untouched
        assert torch.equal(zeroed[0], zeroed[1]) and torch.equal(zeroed[0], zeroed[2])
        rows = zeroed[0].any(dim=1).nonzero().flatten()
        cols = zeroed[0].any(dim=0).nonzero().flatten()
        height, width = len(rows), len(cols)
        assert 0 < height <= 16 and 0 < width <= 16
        assert int(zeroed[0].sum()) == height * width  # a filled rectangle
        assert rows.tolist() == list(range(rows[0], rows[0] + height))
        full_squares += height == width == 16
    assert full_squares > 0
