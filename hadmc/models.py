"""Model zoo: torchvision classifiers by name, local weights, and the embedded default model.

Nothing is downloaded: every builder is called with ``weights=None`` and weights come from a
local file (``torch.load(weights_only=True)`` or safetensors) or from ``pretrain_default``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .errors import ModelError
from .files import write_atomic, check_user_file

if TYPE_CHECKING:
    from .data import DataBundle

logger = logging.getLogger(__name__)

ARCHITECTURES: tuple[str, ...] = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "regnet_x_400mf",
    "shufflenet_v2_x1_0",
    "vgg11_bn",
)

#: The embedded default: torchvision ResNet-18 with a CIFAR-style stem, trained on digits 32x32.
DEFAULT_MODEL = "resnet18"
DEFAULT_DATA = "digits"
DEFAULT_IMAGE_SIZE = 32
DEFAULT_EPOCHS = 5
DEFAULT_LR = 0.05
# Batch 32 gives ~190 one-cycle steps in 5 epochs; batch 64 (95 steps) stalled near 96% test.
DEFAULT_BATCH_SIZE = 32
#: Bumped whenever the training recipe changes, so an older cached default is retrained.
DEFAULT_RECIPE = 2
_DEFAULT_STEM = "default_resnet18_cifar_digits32"


def _first(module: nn.Module, kind: type[nn.Module]) -> tuple[str, nn.Module]:
    for name, m in module.named_modules():
        if isinstance(m, kind):
            return name, m
    raise ModelError(f"{type(module).__name__} has no {kind.__name__} layer")


def _replace(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _apply_cifar_stem(name: str, model: nn.Module) -> None:
    """Keep small inputs from being downsampled 4x before the first block.

    ResNets get the CIFAR stem (3x3 stride-1 first conv, max-pool dropped). Elsewhere the first
    convolution keeps its kernel but uses stride 1, and a max-pool that directly follows the stem
    (ShuffleNet, the first one of VGG) becomes an identity; VGG pools its features to 1x1, so its
    first classifier layer takes 512 inputs. Layer names stay those of torchvision, so weights
    trained with the same stem load as usual.
    """
    conv_name, conv = _first(model, nn.Conv2d)
    if name.startswith("resnet"):
        new = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
        _replace(model, conv_name, new)
    else:
        conv.stride = (1, 1)
    if name.startswith(("resnet", "shufflenet", "vgg")):
        pool_name, _ = _first(model, nn.MaxPool2d)
        _replace(model, pool_name, nn.Identity())
    if name.startswith("vgg"):
        # VGG pools its features to 7x7 for 224 inputs; a small input leaves 2x2, which the
        # ONNX exporter cannot pool to 7x7. The CIFAR VGG pools to 1x1 and feeds 512 features.
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        first_fc = model.classifier[0]
        model.classifier[0] = nn.Linear(first_fc.in_features // 49, first_fc.out_features)


def build_model(
    name: str, num_classes: int, *, cifar_stem: bool = False, weights: str | Path | None = None
) -> nn.Module:
    """Build a torchvision classifier by name, randomly initialised or from local weights.

    :param name: one of ``ARCHITECTURES``
    :param num_classes: size of the output layer
    :param cifar_stem: adapt the stem to small (e.g. 32x32) inputs, see ``_apply_cifar_stem``
    :param weights: optional local ``.pt``/``.pth``/``.safetensors`` file, loaded by ``load_weights``
    """
    if name not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {name!r}; valid names: {', '.join(ARCHITECTURES)}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    import torchvision.models as tvm

    model = tvm.get_model(name, weights=None, num_classes=num_classes)
    if cifar_stem:
        _apply_cifar_stem(name, model)
    if weights is not None:
        load_weights(model, weights)
    return model


#: what a weights file must be, said once for every way it can fail to be one
_WEIGHTS_FORMS = "a state_dict saved with torch.save(model.state_dict(), path) (.pt/.pth) or a .safetensors file"


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = check_user_file(path, "weights file", ModelError)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            # torch's own advice (weights_only=False) would run arbitrary code from the file
            raise ModelError(
                f"weights file {path} holds Python objects besides tensors, which HAD-MC does not load "
                f"(only tensors are read, so a file cannot run code); save {_WEIGHTS_FORMS}"
            ) from None
        raise ModelError(f"cannot read weights file {path}: it is not {_WEIGHTS_FORMS}") from None
    except Exception:  # any other parse failure (zip, header, recursion) means the same to the user
        raise ModelError(f"cannot read weights file {path}: it is not {_WEIGHTS_FORMS}") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(
            f"weights file {path} does not hold a state_dict (a mapping of names to tensors); "
            "save model.state_dict(), not the model object"
        )
    # Checkpoints saved from DataParallel/DDP prefix every key with "module.".
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def model_classes(model: nn.Module) -> int | str:
    """Outputs of the model's last linear layer (its number of classes), or "?"."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last[-1].out_features if last else "?"


def _first_few(names: list[str], n: int = 5) -> str:
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a local state_dict into ``model`` (in place) and return it.

    Accepts a plain state_dict or one under a ``state_dict``/``model`` key. Shapes are checked
    before anything is copied, so a mismatch leaves the model unchanged.

    :param model: the module to fill
    :param path: ``.pt``/``.pth`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``
    """
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and tuple(expected[key].shape) != tuple(tensor.shape):
            raise ModelError(
                f"weights {path} do not fit the model: tensor {key!r} has shape {tuple(tensor.shape)} "
                f"in the file but {tuple(expected[key].shape)} in the model: the weights belong to another "
                f"architecture, number of classes ({model_classes(model)} here) or input stem"
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_first_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_first_few(unexpected)}")
        raise ModelError(
            f"weights {path} do not fit the model ({'; '.join(parts)}). Check the architecture name"
        )
    model.load_state_dict(state, strict=True)
    return model


def cache_dir() -> Path:
    """Where HAD-MC caches the default model: $HADMC_CACHE_DIR, else $XDG_CACHE_HOME/hadmc,
    else ~/.cache/hadmc."""
    if os.environ.get("HADMC_CACHE_DIR"):
        return Path(os.environ["HADMC_CACHE_DIR"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "hadmc"
    return Path.home() / ".cache" / "hadmc"


def default_model_paths(directory: Path | None = None) -> tuple[Path, Path]:
    """(weights, meta) paths of the embedded default in ``directory`` (default: ``cache_dir()``)."""
    directory = directory if directory is not None else cache_dir()
    return directory / f"{_DEFAULT_STEM}.safetensors", directory / f"{_DEFAULT_STEM}.json"


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Several processes may ask for the default at once; one trains, the others wait and load.
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _all_cores() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def pretrain_default(
    *,
    epochs: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    progress: Callable[[dict], None] | None = None,
) -> tuple[Path, dict]:
    """Train the embedded default (ResNet-18, CIFAR stem) on digits 32x32 and save it.

    Writes ``<stem>.safetensors`` and ``<stem>.json`` (architecture, stem, data, test accuracy,
    epochs, seconds, versions) atomically into ``out``.

    :param epochs: training epochs; default ``DEFAULT_EPOCHS``
    :param seed: seeds the data split, the initialisation and the batch order
    :param out: directory to write into; default ``cache_dir()``
    :param progress: called after every epoch with the ``train_classifier`` progress dict and
        ``val_accuracy`` (accuracy on the validation split after that epoch)
    :return: (weights path, meta dict)
    """
    weights_path, _ = default_model_paths(out)
    with _exclusive(weights_path.parent / f"{_DEFAULT_STEM}.lock"):
        return _pretrain_unlocked(epochs=epochs, seed=seed, out=out, progress=progress)


def _pretrain_unlocked(
    *, epochs: int | None, seed: int, out: Path | None, progress: Callable[[dict], None] | None
) -> tuple[Path, dict]:
    import torchvision
    from safetensors.torch import save_file

    from .data import load_data
    from .training import evaluate_accuracy, train_classifier

    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    weights_path, meta_path = default_model_paths(out)
    start = time.perf_counter()
    with _all_cores():
        data = load_data(DEFAULT_DATA, image_size=DEFAULT_IMAGE_SIZE, seed=seed)
        torch.manual_seed(seed)
        model = build_model(DEFAULT_MODEL, data.num_classes, cifar_stem=True)
        stats = train_classifier(
            model,
            data.loader("train", batch_size=DEFAULT_BATCH_SIZE),
            epochs=epochs,
            lr=DEFAULT_LR,
            seed=seed,
            progress=None if progress is None else _with_val_accuracy(progress, model, data),
        )
        val_acc = evaluate_accuracy(model, data.loader("val", batch_size=256))
        test_acc = evaluate_accuracy(model, data.loader("test", batch_size=256))
    seconds = time.perf_counter() - start
    meta = {
        "arch": DEFAULT_MODEL,
        "recipe": DEFAULT_RECIPE,
        "cifar_stem": True,
        "num_classes": data.num_classes,
        "data": DEFAULT_DATA,
        "image_size": DEFAULT_IMAGE_SIZE,
        "seed": seed,
        "epochs": epochs,
        "lr": DEFAULT_LR,
        "batch_size": DEFAULT_BATCH_SIZE,
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "test_images": len(data.test),
        "final_loss": stats["loss"],
        "seconds": round(seconds, 2),
        "threads": max(1, len(os.sched_getaffinity(0))),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "weights": weights_path.name,
    }
    tmp_weights = weights_path.with_suffix(".safetensors.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_weights))
    os.replace(tmp_weights, weights_path)  # weights first: the meta file marks a complete cache
    write_atomic(meta_path, json.dumps(meta, indent=2) + "\n", ModelError)
    logger.info("default model: test accuracy %.4f after %d epochs in %.1f s -> %s", test_acc, epochs, seconds, weights_path)
    return weights_path, meta


def _with_val_accuracy(progress: Callable[[dict], None], model: nn.Module, data) -> Callable[[dict], None]:
    from .training import evaluate_accuracy

    def report(info: dict) -> None:
        progress({**info, "val_accuracy": evaluate_accuracy(model, data.loader("val", batch_size=256))})

    return report


def _load_cached_default(weights_path: Path, meta_path: Path) -> tuple[nn.Module, dict] | None:
    if not (meta_path.is_file() and weights_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(
            f"cached default model metadata {meta_path} is unreadable ({exc}); delete it and run `hadmc pretrain`"
        ) from exc
    if meta.get("recipe") != DEFAULT_RECIPE:
        logger.info("cached default model in %s is from an older recipe; it will be retrained", meta_path.parent)
        return None
    model = build_model(meta["arch"], meta["num_classes"], cifar_stem=meta["cifar_stem"], weights=weights_path)
    model.eval()
    return model, meta


def load_default_model(
    *,
    train_if_missing: bool = True,
    on_train: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Load the cached embedded default model, training it first if the cache has none.

    :param train_if_missing: train (about a minute or two on 2 CPU cores) when not cached;
        otherwise raise ``ModelError``
    :param on_train: told, before training starts, what is happening and where it goes
    :param on_epoch: told after every training epoch (epoch, epochs, seconds, val_accuracy)
    :return: (model in eval mode, meta dict)
    """
    weights_path, meta_path = default_model_paths()
    loaded = _load_cached_default(weights_path, meta_path)
    if loaded is not None:
        return loaded
    if not train_if_missing:
        raise ModelError(f"the default model is not in {weights_path.parent}; run `hadmc pretrain` first")
    with _exclusive(weights_path.parent / f"{_DEFAULT_STEM}.lock"):
        loaded = _load_cached_default(weights_path, meta_path)  # another process may have finished it
        if loaded is not None:
            return loaded
        message = (
            f"default model not found in {weights_path.parent}: training {DEFAULT_MODEL} "
            f"(CIFAR stem) on digits {DEFAULT_IMAGE_SIZE}x{DEFAULT_IMAGE_SIZE}, {DEFAULT_EPOCHS} epochs"
        )
        logger.info(message)
        if on_train is not None:
            on_train(message)
        _pretrain_unlocked(epochs=None, seed=0, out=None, progress=on_epoch)
        loaded = _load_cached_default(weights_path, meta_path)
    if loaded is None:  # pragma: no cover - pretrain_default always writes both files
        raise ModelError(f"training the default model did not leave {weights_path}")
    return loaded


def resolve_model(
    name: str,
    data: DataBundle,
    *,
    weights: str | Path | None = None,
    cifar_stem: bool | None = None,
) -> nn.Module:
    """The model a user names: ``default`` (the embedded one) or a torchvision architecture.

    :param name: ``default`` or one of ``ARCHITECTURES``
    :param data: the dataset it will run on (gives ``num_classes`` and the input size)
    :param weights: optional local weights file for a named architecture
    :param cifar_stem: small-input stem; None chooses it when the input side is <= 64 pixels
    """
    if name == "default":
        if weights is not None:
            raise ModelError("--weights cannot be combined with the default model; name an architecture instead")
        model, meta = load_default_model()
        if data.num_classes != meta["num_classes"] or data.input_shape[1] != meta["image_size"]:
            raise ModelError(
                f"the default model is trained for {meta['num_classes']} classes at "
                f"{meta['image_size']}x{meta['image_size']} ({meta['data']}), but the data {data.name!r} "
                f"has {data.num_classes} classes at {data.input_shape[1]}x{data.input_shape[2]}; "
                "name an architecture and its weights instead"
            )
        if data.name == meta.get("data") and data.seed != meta.get("seed"):
            # A different split seed puts images the model was trained on into the test split.
            logger.warning(
                "the default model was trained on the seed-%s split of %s but the data uses seed %s: "
                "its test split overlaps the model's training images, so accuracy reads high",
                meta.get("seed"), data.name, data.seed,
            )
        return model
    if cifar_stem is None:
        cifar_stem = data.input_shape[1] <= 64
    return build_model(name, data.num_classes, cifar_stem=cifar_stem, weights=weights)
