"""A run directory with known evaluations, written through the real store (no evaluator)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hadmc.evaluation import Evaluation
from hadmc.files import write_json
from hadmc.pareto import ParetoArchive
from hadmc.plan import CompressionPlan
from hadmc.store import RunStore

GROUPS = ["conv0", "conv1", "fc"]
VERSIONS = {"hadmc": "2.0.0", "onnxruntime": "1.31.0"}
PROBE = {"name": "ort-cpu", "threads": 1, "min_iterations": 50}


@dataclass
class KnownRun:
    """Keys of the known run's plans: on the front (original, fast, accurate) or off it (slow)."""

    run_dir: Path
    original: str
    accurate: str  # 0.5 points below the original, 5x faster; latency cached, energy estimated
    fast: str  # 3 points below, 10x faster; all measured
    dominated: str  # worse than `fast` on every objective
    searched_only: str  # evaluated in the search phase only


def plan(ratios: tuple[float, float], precision: str = "fp32", budget: int = 1) -> CompressionPlan:
    groups = {"conv0": {"prune_ratio": ratios[0], "precision": precision}, "conv1": {"prune_ratio": ratios[1], "precision": precision},
              "fc": {"prune_ratio": 0.0, "precision": "fp32"}}  # fmt: skip
    return CompressionPlan.parse({"groups": groups, "update": {"scope": "full", "budget": budget}}).resolve(GROUPS)


def evaluation(p: CompressionPlan, phase: str, acc: float, lat: float, size: int, *, energy=None, prov=None, artifact=None) -> Evaluation:
    provenance = {"accuracy": "measured", "latency_ms": "measured", "model_bytes": "measured", **(prov or {})}
    if energy is not None:
        provenance.setdefault("energy_mj", "measured")
    return Evaluation(
        plan_key=p.key(), plan=p.model_dump(mode="json"), phase=phase, split="val" if phase == "search" else "test",
        accuracy=acc, latency_ms=lat, latency_p90_ms=lat * 1.05, latency_cov=0.02, energy_mj=energy, model_bytes=size,
        macs=1_000_000, params=100_000, provenance=provenance, recovery_steps=1 if phase == "search" else 4,
        full_recovery_steps=4, device="cpu-test-epyc", probe=PROBE, versions=VERSIONS, artifact_sha256=artifact,
    )  # fmt: skip


def known_run(run_dir: Path, artifacts: dict[str, bytes] | None = None) -> KnownRun:
    """Write a finished run whose final front is exactly {original, accurate, fast}.

    :param artifacts: role ("accurate", "fast", ...) -> ONNX bytes saved as that plan's measured artifact
    """
    artifacts = artifacts or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    plans = {
        "original": CompressionPlan.uniform(0.0, "fp32", budget=0).resolve(GROUPS),
        "accurate": plan((0.3, 0.5)),
        "fast": plan((0.8, 0.8), "int8"),
        "dominated": plan((0.7, 0.7)),
        "searched_only": plan((0.1, 0.9)),
    }
    digest = {role: hashlib.sha256(data).hexdigest() for role, data in artifacts.items()}
    for role, data in artifacts.items():
        (run_dir / "artifacts").mkdir(exist_ok=True)
        (run_dir / "artifacts" / f"{plans[role].key()[:16]}.onnx").write_bytes(data)
    finals = [
        evaluation(plans["original"], "final", 0.98, 5.0, 4_000_000),
        evaluation(plans["accurate"], "final", 0.975, 1.0, 1_000_000, energy=2.0, prov={"latency_ms": "cached", "energy_mj": "estimated"},
                   artifact=digest.get("accurate")),
        evaluation(plans["fast"], "final", 0.95, 0.5, 600_000, artifact=digest.get("fast")),
        evaluation(plans["dominated"], "final", 0.94, 0.8, 900_000, artifact=digest.get("dominated")),
    ]  # fmt: skip
    searches = [
        evaluation(plans["accurate"], "search", 0.97, 1.0, 1_000_000),
        evaluation(plans["searched_only"], "search", 0.90, 0.7, 800_000),
    ]
    ref = {"accuracy": 0.96, "latency_ms": 5.0, "model_bytes": 4_000_000}
    with RunStore(run_dir / "hadmc.db") as store:
        run_id = store.open_run("known", {"name": "known", "model": "default", "data": "digits", "latency": {"probe": "ort-cpu", "threads": 1},
                                          "search": {"searcher": "random", "budget": 2, "fidelity": 0.25}})  # fmt: skip
        search_archive, final_archive = ParetoArchive(reference=ref), ParetoArchive(reference=ref)
        for ev in searches:
            store.record(run_id, ev, context="search", archive=search_archive)
        for ev in finals:
            store.record(run_id, ev, context="final", archive=final_archive)
        store.set_meta(run_id, searcher="random", wall_s=123.0, groups=GROUPS, best=plans["accurate"].key(), violations=[])
        store.set_status(run_id, "done")
    write_json(run_dir / "pareto.json", {"run": "known", "original": {"plan_key": plans["original"].key()}, "best": plans["accurate"].key(),
                                         "violations": []})  # fmt: skip
    return KnownRun(run_dir, **{role: p.key() for role, p in plans.items()})


def tiny_onnx(seed: int = 0) -> bytes:
    """A real ONNX classifier (Flatten + Gemm over 3x8x8 inputs, 10 classes)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((10, 192)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(10, dtype=np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], [w, b],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # ONNX Runtime reads at most 13 (DESIGN.md section 9)
    onnx.checker.check_model(model)
    return model.SerializeToString()
