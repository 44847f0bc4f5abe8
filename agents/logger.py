"""Metric sinks: where the trainer's SB3-named metrics go (logging by default; a rich console
table and TensorBoard are opt-in)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

from hadmc.errors import ConfigError

logger = logging.getLogger(__name__)


class MetricsSink(Protocol):
    def write(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class LoggingSink:
    """Metrics as one ``logging`` line per rollout (the default sink)."""

    def write(self, metrics: dict[str, float], step: int) -> None:
        logger.info("step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))

    def close(self) -> None:
        pass


class RichConsoleSink:
    """A rich table of the metrics per rollout, for CLIs and notebooks (opt-in).

    :param console: a ``rich.console.Console`` (None: a new one on stderr)
    :param every: write every ``every`` rollouts
    """

    def __init__(self, console: Any = None, every: int = 1) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.every = max(1, every)
        self._n = 0

    def write(self, metrics: dict[str, float], step: int) -> None:
        self._n += 1
        if self._n % self.every:
            return
        from rich.table import Table

        table = Table(title=f"step {step}", show_header=False)
        for k, v in sorted(metrics.items()):
            table.add_row(k, f"{v:.5g}")
        self.console.print(table)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars to TensorBoard (``torch.utils.tensorboard``, imported when constructed).

    :param log_dir: event file directory
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("TensorBoard logging needs the tensorboard package: pip install 'hadmc[tensorboard]'") from exc
        self.writer = SummaryWriter(str(log_dir))

    def write(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            if math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


__all__ = ["LoggingSink", "MetricsSink", "RichConsoleSink", "TensorBoardSink"]
