"""One error hierarchy. Every message tells the user what to do next."""

from __future__ import annotations


class HadmcError(Exception):
    """Base class of every error HAD-MC raises on purpose."""


class ConfigError(HadmcError):
    """A configuration value is missing or invalid."""


class ModelError(HadmcError):
    """The model cannot be built, loaded, traced, pruned or exported."""


class DataError(HadmcError):
    """A dataset cannot be found or read."""


class PlanError(HadmcError):
    """A compression plan is invalid or does not fit the model."""


class ProbeError(HadmcError):
    """A latency or energy measurement failed, or its backend is unavailable."""


class PipelineError(HadmcError):
    """Applying a plan failed (pruning, recovery, folding, export, quantization)."""
