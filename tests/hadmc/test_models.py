"""Model zoo: every architecture builds, the CIFAR stem keeps small inputs large, weights load."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hadmc.data import load_data
from hadmc.errors import ModelError
from hadmc.models import (
    ARCHITECTURES,
    DEFAULT_MODEL,
    DEFAULT_RECIPE,
    build_model,
    cache_dir,
    default_model_paths,
    load_default_model,
    load_weights,
    resolve_model,
)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_builds_with_cifar_stem_and_classifies_32x32(name):
    model = build_model(name, 10, cifar_stem=True).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)
    assert torch.isfinite(out).all()


def test_default_architecture_is_in_the_zoo():
    assert DEFAULT_MODEL in ARCHITECTURES


def _feature_side(model: nn.Module, layer: str, size: int = 32) -> int:
    seen = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.setdefault("o", o))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    handle.remove()
    return seen["o"].shape[-1]


def test_resnet_cifar_stem_is_3x3_stride_1_without_maxpool():
    model = build_model("resnet18", 10, cifar_stem=True)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert _feature_side(model, "layer1") == 32
    assert _feature_side(build_model("resnet18", 10), "layer1") == 8


def test_cifar_stem_removes_the_stem_stride_elsewhere():
    mobile = build_model("mobilenet_v2", 10, cifar_stem=True)
    assert mobile.features[0][0].stride == (1, 1)
    shuffle = build_model("shufflenet_v2_x1_0", 10, cifar_stem=True)
    assert shuffle.conv1[0].stride == (1, 1) and isinstance(shuffle.maxpool, nn.Identity)


def test_unknown_architecture_lists_valid_names():
    with pytest.raises(ModelError, match="unknown architecture 'resnet19'") as info:
        build_model("resnet19", 10)
    assert all(name in str(info.value) for name in ARCHITECTURES)


def test_num_classes_sets_the_output_layer():
    assert build_model("resnet18", 7).fc.out_features == 7


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_round_trip(tmp_path, suffix):
    torch.manual_seed(0)
    source = build_model("resnet18", 10, cifar_stem=True)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    target = build_model("resnet18", 10, cifar_stem=True, weights=path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_weights_nested_under_a_key_and_ddp_prefix_load(tmp_path, wrapper):
    source = build_model("mobilenet_v3_small", 5)
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    target = load_weights(build_model("mobilenet_v3_small", 5), path)
    assert torch.equal(target.classifier[-1].weight, source.classifier[-1].weight)


def test_unreadable_weights_name_the_file(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ModelError, match="broken.pt"):
        build_model("resnet18", 10, weights=path)
    bad_st = tmp_path / "broken.safetensors"
    bad_st.write_bytes(b"\x00" * 3)
    with pytest.raises(ModelError, match="cannot read weights file .*broken.safetensors"):
        build_model("resnet18", 10, weights=bad_st)


def test_missing_weights_file_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model("resnet18", 10, weights=tmp_path / "nope.pt")


def test_pickled_model_object_is_refused(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(nn.Linear(2, 2), path)  # weights_only=True refuses arbitrary objects
    with pytest.raises(ModelError, match="whole.pt"):
        build_model("resnet18", 10, weights=path)


def test_shape_mismatch_names_the_first_offending_tensor(tmp_path):
    path = tmp_path / "imagenet_stem.pt"
    torch.save(build_model("resnet18", 10).state_dict(), path)  # 7x7 stem, CIFAR model expects 3x3
    with pytest.raises(ModelError) as info:
        build_model("resnet18", 10, cifar_stem=True, weights=path)
    message = str(info.value)
    assert "'conv1.weight'" in message
    assert "(64, 3, 7, 7)" in message and "(64, 3, 3, 3)" in message
    assert "fc.weight" not in message


def test_shape_mismatch_in_the_classifier_names_it(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(build_model("resnet18", 100).state_dict(), path)
    with pytest.raises(ModelError, match=r"'fc.weight' has shape \(100, 512\)"):
        build_model("resnet18", 10, weights=path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = build_model("resnet18", 10).state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"missing 1 keys: fc.bias; unexpected 1 keys: extra.weight"):
        build_model("resnet18", 10, weights=path)


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HADMC_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("HADMC_CACHE_DIR")
    assert cache_dir() == tmp_path / "xdg" / "hadmc"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "hadmc"


def test_default_model_missing_without_training_says_to_pretrain(monkeypatch, tmp_path):
    monkeypatch.setenv("HADMC_CACHE_DIR", str(tmp_path))
    with pytest.raises(ModelError, match="hadmc pretrain"):
        load_default_model(train_if_missing=False)


def test_cached_default_loads_from_its_meta(monkeypatch, tmp_path):
    # A cache written by hand in the format pretrain_default writes (no training in tests).
    from safetensors.torch import save_file

    monkeypatch.setenv("HADMC_CACHE_DIR", str(tmp_path))
    weights, meta = default_model_paths()
    torch.manual_seed(1)
    source = build_model("resnet18", 10, cifar_stem=True)
    save_file(source.state_dict(), str(weights))
    fields = {"arch": "resnet18", "cifar_stem": True, "num_classes": 10, "image_size": 32, "data": "digits"}
    meta.write_text(json.dumps({**fields, "recipe": DEFAULT_RECIPE}))
    calls = []
    model, info = load_default_model(on_train=calls.append)
    assert calls == [] and info["arch"] == "resnet18" and not model.training
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    same = resolve_model("default", load_data("digits"))
    assert torch.equal(same.fc.weight, source.fc.weight)
    with pytest.raises(ModelError, match="trained for 10 classes at 32x32"):
        resolve_model("default", load_data("digits", image_size=64))


def test_default_cached_by_an_older_recipe_counts_as_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("HADMC_CACHE_DIR", str(tmp_path))
    weights, meta = default_model_paths()
    weights.write_bytes(b"old")
    meta.write_text(json.dumps({"arch": "resnet18", "recipe": DEFAULT_RECIPE - 1}))
    with pytest.raises(ModelError, match="hadmc pretrain"):
        load_default_model(train_if_missing=False)


def test_resolve_model_picks_the_cifar_stem_for_small_inputs():
    small = resolve_model("resnet18", load_data("digits", image_size=32))
    assert isinstance(small.maxpool, nn.Identity) and small.fc.out_features == 10
    large = resolve_model("resnet18", load_data("digits", image_size=96))
    assert isinstance(large.maxpool, nn.MaxPool2d)
    forced = resolve_model("resnet18", load_data("digits"), cifar_stem=False)
    assert isinstance(forced.maxpool, nn.MaxPool2d)
