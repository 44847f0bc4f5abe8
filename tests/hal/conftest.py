"""Fixtures of the HAL tests; the models themselves live in hal_models.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

# Test modules import hal_models by name; importlib mode does not put this folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from hal_models import export_tiny_cnn  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cnn() -> tuple[bytes, torch.nn.Module]:
    return export_tiny_cnn()


@pytest.fixture(scope="session")
def tiny_cnn_bytes(tiny_cnn) -> bytes:
    return tiny_cnn[0]


@pytest.fixture()
def fast_timing() -> dict:
    """Timing settings small enough for unit tests (the methodology minimums still apply)."""
    return {"warmup_runs": 10, "warmup_s": 0.05, "min_iterations": 20, "min_seconds": 0.05}
