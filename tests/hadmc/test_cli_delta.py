"""`hadmc delta` / `hadmc apply-delta`: a model update for devices in the field, as a patch."""

from __future__ import annotations

import io

import pytest
import torch

from hadmc.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")]


def _export(model, example) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(model, example, buf, dynamo=False)
    return buf.getvalue()


def _initializers(data: bytes) -> dict[str, bytes]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i).tobytes() for i in onnx.load_model_from_string(data).graph.initializer}


def test_a_classifier_fine_tune_of_the_default_ships_as_a_small_patch_that_rebuilds_it_byte_for_byte(tmp_path, capsys):
    from hadmc.data import load_data
    from hadmc.hal.delta import decode_patch
    from hadmc.models import load_default_model

    model, _ = load_default_model()
    data = load_data("digits", image_size=32, seed=0)
    example = data.example_input()
    old = tmp_path / "deployed.onnx"
    old.write_bytes(_export(model.eval(), example))
    # fine-tune only the classifier: everything else frozen, BatchNorm statistics kept (eval mode)
    for p in model.parameters():
        p.requires_grad_(False)
    head = list(model.fc.parameters())
    for p in head:
        p.requires_grad_(True)
    opt = torch.optim.SGD(head, lr=0.05)
    for step, (x, y) in enumerate(data.loader("train", batch_size=64)):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        if step == 3:
            break
    new = tmp_path / "update.onnx"
    new.write_bytes(_export(model, example))
    assert _initializers(new.read_bytes())["fc.weight"] != _initializers(old.read_bytes())["fc.weight"]

    patch = tmp_path / "update.patch"
    assert main(["delta", str(old), str(new), "-o", str(patch)]) == 0
    assert patch.stat().st_size < 0.10 * new.stat().st_size  # a few kB of a 45 MB model
    changed = {name for name, blocks in decode_patch(patch.read_bytes()).blocks.items() if blocks}
    assert changed == {"fc.weight", "fc.bias"}

    rebuilt = tmp_path / "rebuilt.onnx"
    assert main(["apply-delta", str(old), str(patch), "-o", str(rebuilt)]) == 0
    assert _initializers(rebuilt.read_bytes()) == _initializers(new.read_bytes())  # every initializer, byte for byte
    assert rebuilt.read_bytes() == new.read_bytes()
    assert "verified" in capsys.readouterr().out

    wrong = tmp_path / "wrong.onnx"
    assert main(["apply-delta", str(new), str(patch), "-o", str(wrong)]) == 2  # the patch of another base
    err = capsys.readouterr().err
    assert "was made against the model with SHA-256" in err and "apply it to the model it was made from" in err
    assert not wrong.exists()


def test_a_file_that_is_not_a_patch_or_not_a_model_gets_one_clear_message(tmp_path, capsys):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2)).eval()
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(_export(model, torch.randn(1, 3, 8, 8)))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    assert main(["delta", str(text), str(onnx_file), "-o", str(tmp_path / "p")]) == 2
    assert "is not an ONNX model" in capsys.readouterr().err
    assert main(["apply-delta", str(onnx_file), str(text), "-o", str(tmp_path / "n.onnx")]) == 2
    assert "is not a patch of `hadmc delta`" in capsys.readouterr().err
    bomb = tmp_path / "bomb.patch"
    import gzip

    bomb.write_bytes(gzip.compress(b" " * (64 << 20)))
    from hadmc.errors import ProbeError
    from hadmc.hal.delta import decode_patch

    with pytest.raises(ProbeError, match="inflates to more than"):
        decode_patch(bomb.read_bytes(), max_bytes=1 << 20)
