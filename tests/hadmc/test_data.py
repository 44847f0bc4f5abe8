"""Data loading: deterministic digits splits, ImageFolder trees, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hadmc.data import load_data
from hadmc.errors import DataError


def _rows(dataset) -> set[bytes]:
    return {x.numpy().tobytes() for x in dataset.tensors[0]}


def test_digits_has_expected_shapes_and_split_sizes():
    bundle = load_data("digits")
    assert bundle.num_classes == 10
    assert bundle.input_shape == (3, 32, 32)
    sizes = [len(bundle.train), len(bundle.val), len(bundle.test)]
    assert sum(sizes) == 1797
    assert 390 <= sizes[2] <= 400  # test_fraction 0.22 of 1797
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to 3 channels
    assert 0 <= int(y) < 10


def test_digits_train_split_is_normalised():
    x = load_data("digits").train.tensors[0]
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1.0) < 1e-3


def test_digits_image_size_is_configurable():
    bundle = load_data("digits", image_size=16)
    assert bundle.input_shape == (3, 16, 16)
    assert bundle.example_input(2).shape == (2, 3, 16, 16)


def test_digits_splits_are_deterministic_by_seed_and_differ_across_seeds():
    a, b, c = load_data("digits", seed=0), load_data("digits", seed=0), load_data("digits", seed=1)
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).tensors[1], getattr(b, split).tensors[1])
        assert torch.equal(getattr(a, split).tensors[0], getattr(b, split).tensors[0])
    assert not torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_digits_splits_are_disjoint():
    bundle = load_data("digits")
    train, val, test = _rows(bundle.train), _rows(bundle.val), _rows(bundle.test)
    # load_digits holds a few exact duplicate images; allow those, but no systematic overlap
    assert len(train & test) <= 3 and len(train & val) <= 3 and len(val & test) <= 3


def test_digits_test_split_is_stratified():
    counts = torch.bincount(load_data("digits").test.tensors[1], minlength=10)
    assert counts.min().item() >= 35 and counts.max().item() <= 41


def test_loader_order_is_reproducible_and_only_train_shuffles_by_default():
    bundle = load_data("digits")
    first = [y for _, y in bundle.loader("train", batch_size=64)]
    again = [y for _, y in bundle.loader("train", batch_size=64)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    plain_test = torch.cat([y for _, y in bundle.loader("test", batch_size=64)])
    assert torch.equal(plain_test, bundle.test.tensors[1])
    plain_train = torch.cat(first)
    assert not torch.equal(plain_train, bundle.train.tensors[1])


def test_calibration_batches_are_float32_nchw_from_train_and_deterministic():
    bundle = load_data("digits")
    batches = bundle.calibration_batches(n_batches=3, batch_size=16)
    assert len(batches) == 3
    assert all(b.dtype == np.float32 and b.shape == (16, 3, 32, 32) for b in batches)
    again = bundle.calibration_batches(n_batches=3, batch_size=16)
    assert all(np.array_equal(p, q) for p, q in zip(batches, again))
    train = _rows(bundle.train)
    assert all(img.tobytes() in train for img in batches[0])


def test_calibration_stops_when_train_split_runs_out():
    bundle = load_data("digits")
    n = len(bundle.train)
    batches = bundle.calibration_batches(n_batches=100, batch_size=n // 2)
    assert sum(len(b) for b in batches) == n


def _write_folder(root, classes=("cat", "dog"), per_class=5, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            pixels[..., ci % 3] = 255  # classes differ in one colour channel
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def test_imagefolder_without_split_folders_is_split_by_seed(tmp_path):
    _write_folder(tmp_path, per_class=10)
    bundle = load_data(f"imagefolder:{tmp_path}", image_size=16)
    assert bundle.num_classes == 2 and bundle.class_names == ["cat", "dog"]
    assert bundle.input_shape == (3, 16, 16)
    assert len(bundle.train) + len(bundle.val) + len(bundle.test) == 20
    assert set(bundle.train.indices).isdisjoint(bundle.test.indices)
    assert set(bundle.val.indices).isdisjoint(bundle.test.indices)
    x, y = next(iter(bundle.loader("test", batch_size=4)))
    assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
    again = load_data(f"imagefolder:{tmp_path}", image_size=16)
    assert list(again.test.indices) == list(bundle.test.indices)


def test_imagefolder_uses_train_val_test_subfolders(tmp_path):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        _write_folder(tmp_path / split, per_class=n)
    bundle = load_data(f"imagefolder:{tmp_path}", image_size=8)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (12, 4, 6)
    assert bundle.calibration_batches(n_batches=2, batch_size=5)[0].shape == (5, 3, 8, 8)


def test_imagefolder_with_mismatched_classes_across_splits_is_rejected(tmp_path):
    _write_folder(tmp_path / "train", classes=("cat", "dog"), per_class=2)
    _write_folder(tmp_path / "test", classes=("cat", "cow"), per_class=2)
    with pytest.raises(DataError, match="same class subfolders"):
        load_data(f"imagefolder:{tmp_path}", image_size=8)


def test_missing_imagefolder_directory_names_the_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere") as info:
        load_data(f"imagefolder:{missing}")
    assert "imagefolder:PATH" in str(info.value)


def test_missing_cifar10_directory_names_the_path_and_layout(tmp_path):
    with pytest.raises(DataError) as info:
        load_data(f"cifar10:{tmp_path / 'cifar'}")
    message = str(info.value)
    assert str(tmp_path / "cifar") in message and "cifar-10-batches-py" in message
    assert "nothing is downloaded" in message


def test_cifar10_with_missing_files_lists_them(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"")
    with pytest.raises(DataError) as info:
        load_data(f"cifar10:{tmp_path}")
    message = str(info.value)
    assert "data_batch_2" in message and "test_batch" in message and "batches.meta" in message
    assert "data_batch_1," not in message


def test_cifar10_with_corrupt_files_is_a_data_error(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="corrupted"):
        load_data(f"cifar10:{batches}")


@pytest.mark.parametrize("spec", ["mnist", "imagenet:/data", "digits:extra", ""])
def test_unknown_spec_lists_valid_forms(spec):
    with pytest.raises(DataError, match="digits, imagefolder:PATH, cifar10:PATH"):
        load_data(spec)


def test_spec_without_path_says_to_pass_one():
    with pytest.raises(DataError, match="cifar10:PATH"):
        load_data("cifar10:")


def test_bad_fractions_are_rejected():
    with pytest.raises(DataError, match="val_fraction"):
        load_data("digits", val_fraction=0.6, test_fraction=0.5)
