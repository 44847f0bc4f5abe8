"""Reading user files defensively and writing ours atomically."""

from __future__ import annotations

import errno
import os

import pytest

from hadmc.errors import ConfigError, PlanError
from hadmc.files import write_atomic, check_output_dir, parse_json_strict, parse_yaml_strict


def test_write_atomic_replaces_the_whole_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "plan.json"
    target.write_text("old")
    write_atomic(target, "new contents")
    assert target.read_text() == "new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_a_full_disk_leaves_the_old_file_intact_and_no_half_written_one(tmp_path, monkeypatch):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the artifact measured yesterday")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PlanError, match="disk is full"):
        write_atomic(target, b"x" * 10_000, PlanError)
    assert target.read_bytes() == b"the artifact measured yesterday"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_an_output_folder_that_cannot_be_written_is_refused_before_work(tmp_path, monkeypatch):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(PlanError, match="is a file"):
        check_output_dir(a_file, PlanError)
    with pytest.raises(PlanError, match="cannot create output folder"):
        check_output_dir(a_file / "sub", PlanError)
    with pytest.raises(PlanError, match="cannot create output folder"):
        check_output_dir("/proc/hadmc-no-such-place/out", PlanError)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(PlanError, match="disk is full"):
        check_output_dir(tmp_path / "out", PlanError)


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"a": 1, "a": 2}', "appears twice"),
        ('{"a": NaN}', "NaN"),
        ('{"a": Infinity}', "Infinity"),
        ("[" * 40 + "]" * 40, "nests deeper"),
        ("[" * 100_000 + "]" * 100_000, "nests deeper"),
        ('{"a": ', "line 1"),
    ],
)
def test_strict_json_refuses_what_plain_json_lets_through(text, words):
    with pytest.raises(PlanError, match=words):
        parse_json_strict(text, "plan file p.json", PlanError)


@pytest.mark.parametrize(
    "text, words",
    [
        ("a: 1\na: 2\n", "appears twice"),
        ("a: &x [1, 2]\nb: *x\n", "aliases"),
        ("a: [" * 40 + "]" * 40, "nests deeper"),
        ("a: [1, 2\n", "not valid YAML"),
        ("? [1, 2]\n: 3\n", "not valid YAML"),
    ],
)
def test_strict_yaml_refuses_repeated_keys_aliases_and_deep_nesting(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_yaml_strict(text, "config file c.yaml", ConfigError)
