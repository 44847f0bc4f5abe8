"""The Python API of the main job: ``hadmc.compress(model, data, ...)``; the CLI wraps it.

    import hadmc
    result = hadmc.compress("default", "digits", budget=32, searcher="ppo", out="runs/quick")
    result.best.latency_ms, result.front, result.run_dir

`model` may be a name (``default`` or a torchvision architecture with local weights) or any
`nn.Module`; `data` a spec (``digits``, ``imagefolder:PATH``, ``cifar10:PATH``) or a
`DataBundle`. Flat keyword options override the run configuration (`build_config`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError
from .run import CompressionResult, CompressionRun, EventSink

#: Flat option -> dotted path in `RunConfig` (the CLI's flags use the same names).
OPTION_PATHS: dict[str, str] = {
    "model": "model",
    "weights": "weights",
    "data": "data",
    "image_size": "image_size",
    "device": "device",
    "latency_budget_ms": "constraints.latency_budget_ms",
    "hard_latency_budget": "constraints.hard_latency_budget",
    "min_accuracy": "constraints.min_accuracy",
    "budget": "search.budget",
    "searcher": "search.searcher",
    "fidelity": "search.fidelity",
    "fidelity_macs_ref": "search.fidelity_macs_ref",
    "fidelity_lr": "search.fidelity_lr",
    "fidelity_temperature": "search.fidelity_temperature",
    "fidelity_alpha": "search.fidelity_alpha",
    "fidelity_batch_size": "search.fidelity_batch_size",
    "fidelity_batch_share": "search.fidelity_batch_share",
    "fidelity_full_scope": "search.fidelity_full_scope",
    "bn_select": "search.bn_select",
    "floor_slack": "search.floor_slack_pt",
    "finalize_max": "search.finalize_max",
    "ratio_mean": "agent.ratio_mean",
    "loss": "agent.loss",
    "advantage": "agent.advantage",
    "dyna": "agent.dyna",
    "threads": "latency.threads",
    "seed": "seed",
    "name": "name",
    "workers": "execution.workers",
    "executor": "execution.executor",
    "address": "execution.address",
    "deployed_model": "deployed_model",
}


def quickstart_config_path() -> Path:
    """The shipped configuration of the embedded default (``configs/quickstart.yaml``)."""
    return Path(str(resources.files("hadmc.configs") / "quickstart.yaml"))


def build_config(config: RunConfig | str | Path | dict | None = None, *, target: str | None = None, out: str | Path | None = None, **options: Any) -> RunConfig:
    """A validated `RunConfig` from a base (object, YAML path, dict, or the quickstart) and flat options.

    :param config: the base configuration (None: ``configs/quickstart.yaml``)
    :param target: latency probe backend (``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``tensorrt``)
        or ``remote://host:port`` of a ``hadmc probe serve``
    :param out: the run directory (its last part names the run)
    :param options: see `OPTION_PATHS`; None values are ignored
    """
    if isinstance(config, RunConfig):
        data = config.model_dump(mode="json")
    elif isinstance(config, dict):
        data = dict(config)
    else:
        path = Path(config) if config is not None else quickstart_config_path()
        data = RunConfig.load(path).model_dump(mode="json")
    unknown = sorted(set(options) - set(OPTION_PATHS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(OPTION_PATHS))}, target, out")
    for name, value in options.items():
        if value is not None:
            _set(data, OPTION_PATHS[name], str(value) if isinstance(value, Path) else value)
    if target is not None:
        latency = dict(data.get("latency") or {})
        if target.startswith("remote://"):
            latency["address"] = target
        else:
            latency["probe"], latency["address"] = target, None
        data["latency"] = latency
    if out is not None:
        data["run_dir"] = str(out)
        if options.get("name") is None:
            data["name"] = Path(out).name or "run"
    return RunConfig.parse(data)


def _set(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for p in parents:
        node[p] = dict(node.get(p) or {})
        node = node[p]
    node[leaf] = value


def compress(
    model: Any = "default",
    data: Any = "digits",
    *,
    target: str | None = None,
    budget: int | None = None,
    searcher: str | None = None,
    out: str | Path | None = None,
    config: RunConfig | str | Path | dict | None = None,
    resume: bool | None = None,
    on_event: EventSink | None = None,
    **options: Any,
) -> CompressionResult:
    """Search compression plans for `model` on `target` and return the measured front.

    :param model: ``default``, a torchvision architecture name (with ``weights=`` a local
        file), or any `nn.Module` classifier
    :param data: a data spec or a `hadmc.data.DataBundle`
    :param target: where latency is measured (see `build_config`); default: the config's
    :param budget: distinct plans evaluated for real while searching
    :param searcher: ``ppo``, ``random``, ``nsga2``, ``sb3-ppo`` or ``greedy``
    :param out: the run directory (default ``runs/<name>``)
    :param config: base configuration (default: the shipped quickstart)
    :param resume: True continues the run in `out`, False refuses an existing one, None either
    :param on_event: progress events (see `hadmc.run.EventSink`)
    :param options: flat overrides, see `OPTION_PATHS` (e.g. ``min_accuracy="-1pt"``)
    :return: the final front (test split, full fidelity), the best plan and the run directory
    """
    named_model = model if isinstance(model, str) else None
    named_data = data if isinstance(data, str) else None
    cfg = build_config(
        config, target=target, out=out, budget=budget, searcher=searcher,
        model=named_model or f"module:{type(model).__name__}", data=named_data or getattr(data, "name", "custom"), **options,
    )  # fmt: skip
    run = CompressionRun(
        cfg,
        resume=resume,
        model=None if named_model else model,
        data=None if named_data else data,
        on_event=on_event,
    )
    try:
        run.search()
        return run.finalize()
    finally:
        run.close()


__all__ = ["OPTION_PATHS", "build_config", "compress", "quickstart_config_path"]
