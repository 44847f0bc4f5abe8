"""HAD-MC 2.0: hardware-aware model compression measured on the real target."""

from __future__ import annotations

__version__ = "2.0.0"

from .errors import (  # noqa: E402  (light import: no torch)
    ConfigError,
    DataError,
    HadmcError,
    ModelError,
    PipelineError,
    PlanError,
    ProbeError,
)

# Heavy modules (torch, onnxruntime) load on first use, so `hadmc --help` and
# `import hadmc.errors` stay fast.
_LAZY = {
    "CompressionPlan": ("plan", "CompressionPlan"),
    "GroupDecision": ("plan", "GroupDecision"),
    "apply_plan": ("pipeline", "apply_plan"),
    "CompressedModel": ("pipeline", "CompressedModel"),
    "layer_groups": ("groups", "layer_groups"),
    "LayerGroup": ("groups", "LayerGroup"),
    "build_model": ("models", "build_model"),
    "load_data": ("data", "load_data"),
    "compress": ("api", "compress"),
    "CompressionRun": ("run", "CompressionRun"),
    "CompressionResult": ("run", "CompressionResult"),
    "RunConfig": ("config", "RunConfig"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'hadmc' has no attribute {name!r}")


__all__ = [
    "__version__",
    "HadmcError",
    "ConfigError",
    "DataError",
    "ModelError",
    "PipelineError",
    "PlanError",
    "ProbeError",
    *_LAZY,
]
