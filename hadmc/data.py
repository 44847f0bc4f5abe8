"""Datasets: bundled digits, local ImageFolder trees and local CIFAR-10. Nothing is downloaded.

`load_data(spec)` returns a `DataBundle` with deterministic train/val/test splits. Spec forms:

- ``digits``: scikit-learn's bundled 8x8 digits, bilinearly upsampled, 3 channels, in memory.
- ``imagefolder:PATH``: a torchvision ImageFolder tree; ``PATH/train``, ``PATH/val``,
  ``PATH/test`` are used when present, otherwise a seeded stratified split of ``PATH``.
- ``cifar10:PATH``: the python version of CIFAR-10 (``cifar-10-batches-py``) under ``PATH``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from .errors import DataError

logger = logging.getLogger(__name__)

SPEC_FORMS = ("digits", "imagefolder:PATH", "cifar10:PATH")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
SPLITS = ("train", "val", "test")
#: Input sides accepted, in pixels (a 1024x1024 batch of 64 is already 800 MB of float32).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 8, 1024


@dataclass
class DataBundle:
    """A dataset split three ways, with the helpers the pipeline needs.

    :param name: the spec it was loaded from, e.g. ``digits`` or ``cifar10:/data/cifar``
    :param num_classes: number of classes
    :param input_shape: (C, H, W) of one normalised image
    :param train: split used for training, recovery fine-tuning and quantization calibration
    :param val: split for model selection
    :param test: held-out split on which accuracy is reported
    :param seed: seeds the splits, the shuffling order and the calibration sample
    :param train_augmented: the train split applies random augmentation (the same index can
        yield different images), so per-image teacher logits must not be cached
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    train: Dataset
    val: Dataset
    test: Dataset
    seed: int = 0
    class_names: list[str] = field(default_factory=list)
    train_augmented: bool = False

    def split(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return getattr(self, split)

    def loader(
        self, split: str, batch_size: int = 128, shuffle: bool | None = None, num_workers: int = 0
    ) -> DataLoader:
        """A DataLoader over one split; the same call always yields the same batch order.

        :param split: ``train``, ``val`` or ``test``
        :param batch_size: images per batch
        :param shuffle: reshuffle each epoch; default True for ``train`` only
        :param num_workers: DataLoader worker processes (0 loads in the calling process)
        """
        dataset = self.split(split)
        if shuffle is None:
            shuffle = split == "train"
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            generator=generator,
        )

    def calibration_batches(self, n_batches: int = 8, batch_size: int = 32) -> list[np.ndarray]:
        """Float32 NCHW batches drawn from the train split for static quantization.

        The sample is a seeded permutation of the train split, so it is the same on every call.
        If the split is smaller than ``n_batches * batch_size`` fewer batches are returned.

        :param n_batches: number of batches
        :param batch_size: images per batch
        """
        if n_batches < 1 or batch_size < 1:
            raise DataError("calibration needs n_batches >= 1 and batch_size >= 1")
        order = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(self.seed))
        batches = []
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size].tolist()
            if not idx:
                break
            batches.append(_stack_images(self.train, idx).numpy().astype(np.float32, copy=False))
        return batches

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """The first ``batch`` images of the train split as one NCHW tensor (for tracing/export)."""
        idx = [i % len(self.train) for i in range(batch)]
        return _stack_images(self.train, idx)


def _stack_images(dataset: Dataset, indices: list[int]) -> torch.Tensor:
    if isinstance(dataset, TensorDataset):  # fast path: one gather instead of per-item indexing
        return dataset.tensors[0][indices].contiguous()
    return torch.stack([dataset[i][0] for i in indices])


def load_data(
    spec: str = "digits",
    *,
    image_size: int | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.22,
) -> DataBundle:
    """Load a dataset by spec with deterministic train/val/test splits.

    :param spec: ``digits``, ``imagefolder:PATH`` or ``cifar10:PATH``
    :param image_size: side of the square input; default 32 for digits and CIFAR-10, 224 for
        ImageFolder
    :param seed: seeds the splits (and the bundle's loaders and calibration sample)
    :param val_fraction: share of all images put in the validation split where the dataset
        has none of its own
    :param test_fraction: share of all images put in the test split where the dataset has
        none of its own
    """
    if not isinstance(spec, str) or not spec:
        raise DataError(f"data spec must be a non-empty string; valid forms: {', '.join(SPEC_FORMS)}")
    if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must each lie in (0, 1) "
            "and sum to less than 1"
        )
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE
    ):
        raise DataError(f"image size must be a whole number of pixels in {MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE}, got {image_size!r}")
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "digits" and not arg:
        return _load_digits(image_size or 32, seed, val_fraction, test_fraction)
    if kind in ("imagefolder", "cifar10"):
        if not arg:
            raise DataError(f"data spec {spec!r} needs a directory: pass {kind}:PATH")
        path = Path(arg).expanduser()
        if kind == "imagefolder":
            return _load_imagefolder(spec, path, image_size or 224, seed, val_fraction, test_fraction)
        return _load_cifar10(spec, path, image_size or 32, seed, val_fraction)
    raise DataError(f"unknown data spec {spec!r}; valid forms: {', '.join(SPEC_FORMS)}")


def _three_way_split(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified, seeded split into train/val/test index arrays (fractions of the whole)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    stratify = labels if _can_stratify(labels, test_fraction) else None
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=stratify)
    val_share = val_fraction / (1.0 - test_fraction)
    stratify = labels[rest] if _can_stratify(labels[rest], val_share) else None
    train, val = train_test_split(rest, test_size=val_share, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(val), np.sort(test)


def _two_way_split(labels: np.ndarray, seed: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    stratify = labels if _can_stratify(labels, fraction) else None
    keep, held = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(keep), np.sort(held)


def _can_stratify(labels: np.ndarray, fraction: float) -> bool:
    # sklearn refuses to stratify when a class has one member or the held-out part is smaller
    # than the number of classes; tiny folders then fall back to a plain seeded split.
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    n_classes = len(counts)
    n_held = int(np.ceil(fraction * len(labels)))
    return counts.min() >= 2 and n_classes <= n_held <= len(labels) - n_classes


def _load_digits(image_size: int, seed: int, val_fraction: float, test_fraction: float) -> DataBundle:
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # N,1,8,8 in [0,1]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.from_numpy(digits.target.astype(np.int64))
    train, val, test = _three_way_split(digits.target, seed, val_fraction, test_fraction)
    # Normalise with the train split's statistics so no test information leaks into inputs.
    mean, std = x[train].mean(), x[train].std()
    x = ((x - mean) / std).expand(-1, 3, -1, -1).contiguous()
    logger.debug("digits: %d/%d/%d images at %dx%d", len(train), len(val), len(test), image_size, image_size)
    return DataBundle(
        name="digits",
        num_classes=10,
        input_shape=(3, image_size, image_size),
        train=TensorDataset(x[train], y[train]),
        val=TensorDataset(x[val], y[val]),
        test=TensorDataset(x[test], y[test]),
        seed=seed,
        class_names=[str(i) for i in range(10)],
    )


def _image_transform(image_size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


def _read_image(path: str):
    """One image as RGB; a file that cannot be decoded is named in the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        reason = "it is not an image format PIL can decode"
    except Image.DecompressionBombError:
        reason = "it is larger than PIL's decompression-bomb limit"
    except (OSError, ValueError) as exc:  # truncated or corrupt pixel data, unreadable file
        reason = getattr(exc, "strerror", None) or str(exc)
    raise DataError(f"image {path} cannot be read: {reason}; remove or replace the file")


def _image_folder(path: Path, transform):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), transform=transform, loader=_read_image)
    except (FileNotFoundError, OSError) as exc:
        raise DataError(
            f"cannot read image folder {path}: {exc}. Expected one subfolder per class holding "
            "image files (e.g. PATH/cat/001.png)"
        ) from exc


def _load_imagefolder(
    spec: str, path: Path, image_size: int, seed: int, val_fraction: float, test_fraction: float
) -> DataBundle:
    if not path.is_dir():
        raise DataError(
            f"image folder not found: looked for directory {path.resolve()}. Pass imagefolder:PATH "
            "with PATH holding one subfolder per class, or train/ val/ test/ subfolders of those"
        )
    transform = _image_transform(image_size, IMAGENET_MEAN, IMAGENET_STD)
    present = {s: path / s for s in SPLITS if (path / s).is_dir()}
    if "train" in present:
        train_full = _image_folder(present["train"], transform)
        classes = train_full.classes
        train: Dataset = train_full
        val = test = None
        for name in ("val", "test"):
            if name in present:
                ds = _image_folder(present[name], transform)
                if ds.classes != classes:
                    raise DataError(
                        f"class folders of {present[name]} ({ds.classes}) differ from those of "
                        f"{present['train']} ({classes}); every split needs the same class subfolders"
                    )
                if name == "val":
                    val = ds
                else:
                    test = ds
        labels = np.asarray(train_full.targets)
        if val is None and test is None:
            tr, va, te = _three_way_split(labels, seed, val_fraction, test_fraction)
            train, val, test = Subset(train_full, tr), Subset(train_full, va), Subset(train_full, te)
        elif val is None:
            tr, va = _two_way_split(labels, seed, val_fraction)
            train, val = Subset(train_full, tr), Subset(train_full, va)
        elif test is None:
            # The common ImageNet layout has train/ and val/ only; val is the held-out set.
            logger.info("%s has no test/ folder: reporting accuracy on val/", path)
            test = val
    else:
        full = _image_folder(path, transform)
        classes = full.classes
        tr, va, te = _three_way_split(np.asarray(full.targets), seed, val_fraction, test_fraction)
        train, val, test = Subset(full, tr), Subset(full, va), Subset(full, te)
    return DataBundle(
        name=spec,
        num_classes=len(classes),
        input_shape=(3, image_size, image_size),
        train=train,
        val=val,
        test=test,
        seed=seed,
        class_names=list(classes),
    )


def _cifar_root(path: Path) -> Path:
    """The directory that contains ``cifar-10-batches-py`` (PATH itself or its parent)."""
    if path.name == "cifar-10-batches-py":
        return path.parent
    return path


def _load_cifar10(spec: str, path: Path, image_size: int, seed: int, val_fraction: float) -> DataBundle:
    layout = "PATH/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python version of CIFAR-10)"
    if not path.is_dir():
        raise DataError(
            f"CIFAR-10 directory not found: looked for {path.resolve()}. Pass cifar10:PATH with "
            f"the layout {layout}; nothing is downloaded"
        )
    root = _cifar_root(path)
    batches = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (batches / name).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 files missing in {batches.resolve()}: {', '.join(missing)}. Expected the "
            f"layout {layout}; nothing is downloaded"
        )
    from torchvision.datasets import CIFAR10

    transform = _image_transform(image_size, CIFAR10_MEAN, CIFAR10_STD)
    try:
        train_full = CIFAR10(str(root), train=True, transform=transform, download=False)
        test = CIFAR10(str(root), train=False, transform=transform, download=False)
    except (RuntimeError, OSError, ValueError) as exc:  # torchvision's integrity check failed
        raise DataError(f"CIFAR-10 files in {batches.resolve()} are unreadable or corrupted: {exc}") from exc
    tr, va = _two_way_split(np.asarray(train_full.targets), seed, val_fraction)
    return DataBundle(
        name=spec,
        num_classes=10,
        input_shape=(3, image_size, image_size),
        train=Subset(train_full, tr),
        val=Subset(train_full, va),
        test=test,
        seed=seed,
        class_names=list(train_full.classes),
    )
