"""Hand-built layer groups and devices for the fast MDP tests (surrogate evaluator)."""

from __future__ import annotations

import numpy as np
import pytest

from hadmc.config import RunConfig
from hadmc.groups import LayerGroup
from hadmc.hal.device import DeviceSpec, cpu_spec_from_info


def chain_groups(n: int, *, widths=None, latency_shares: bool = False) -> list[LayerGroup]:
    """A plain CNN: stem, n-2 convs, a classifier that is never pruned."""
    widths = widths or [16 * 2 ** min(i // 2, 3) for i in range(n - 1)]
    macs = np.array([10_000_000 // (i + 1) for i in range(n - 1)] + [5_000], dtype=float)
    params = np.array([9 * w * w for w in widths] + [widths[-1] * 10], dtype=float)
    lat = np.linspace(2.0, 1.0, n)
    groups = []
    in_ch = 3
    for i in range(n):
        last = i == n - 1
        out = 10 if last else widths[i]
        groups.append(
            LayerGroup(
                index=i,
                name="fc" if last else f"conv{i}",
                kind="linear" if last else ("stem" if i == 0 else "conv"),
                modules=("fc",) if last else (f"conv{i}",),
                in_channels=in_ch,
                out_channels=out,
                kernel=1 if last else 3,
                stride=1,
                flops_share=float(macs[i] / macs.sum()),
                params_share=float(params[i] / params.sum()),
                depth=i / max(n - 1, 1),
                prunable=not last,
                min_channels=1,
                latency_share=float(lat[i] / lat.sum()) if latency_shares else None,
                macs=int(macs[i]),
                params=int(params[i]),
            )
        )
        in_ch = out
    return groups


def cpu_device() -> DeviceSpec:
    return cpu_spec_from_info("Test EPYC", {"avx512f", "avx512_vnni"}, 2000.0, 2, 16.0)


def gpu_device() -> DeviceSpec:
    return DeviceSpec(
        name="test-gpu",
        kind="gpu",
        peak_tops={"fp32": 80.0, "fp16": 300.0, "int8": 600.0},
        memory_bandwidth_gbs=1000.0,
        memory_gb=24.0,
        tdp_w=300.0,
        idle_w=20.0,
        precisions=["fp32", "fp16", "int8"],
        tensor_cores=True,
        backend="ort-cuda",
    )


def surrogate_env(n_groups: int = 5, *, config: RunConfig | None = None, store=None, device=None, **surrogate_kw):
    from hadmc.envs.compression_env import HadMcCompressionEnv
    from hadmc.envs.surrogate import SurrogateEvaluator

    evaluator = SurrogateEvaluator(chain_groups(n_groups), device or cpu_device(), **surrogate_kw)
    return HadMcCompressionEnv(config or RunConfig(search={"update_budgets": [0, 1]}), evaluator=evaluator, store=store)


@pytest.fixture
def make_env():
    envs = []

    def factory(*args, **kwargs):
        env = surrogate_env(*args, **kwargs)
        envs.append(env)
        return env

    yield factory
    for env in envs:
        env.close()


@pytest.fixture
def chain():
    """Factory of hand-built group lists (see `chain_groups`)."""
    return chain_groups


@pytest.fixture
def cpu():
    return cpu_device()


@pytest.fixture
def gpu():
    return gpu_device()
