"""`hadmc compress` for real (embedded default, tiny settings): Ctrl-C, resume, the run directory."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TINY = """
name: tiny
model: default
data: digits
device: local
latency: {warmup_runs: 2, warmup_s: 0.0, min_iterations: 5, min_seconds: 0.0, search_min_seconds: 0.0,
          relative: {block_s: 0.005, min_pairs: 3, max_rounds: 1}}
energy: {probe: null}
search: {searcher: ppo, budget: 6, fidelity: 0.5, update_scopes: [full], update_budgets: [1], finalize_max: 2}
agent: {predicted_episodes: 8, candidates: 16, initial: 2}
pipeline: {max_train_batches: 2, max_eval_batches: 2, calibration_batches: 1}
"""


def _hadmc(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from hadmc.cli import main; sys.exit(main())", *args]


def _search_rows(db: Path) -> list[tuple[str, str]]:
    if not db.is_file():
        return []
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute("SELECT plan_key, evaluation_json FROM evaluations WHERE phase='search' ORDER BY id").fetchall()
        except sqlite3.OperationalError:  # tables not created yet
            return []


def _compress_until_three_evaluations(tmp_path: Path, config: str, checkpoint: str, *flags: str):
    """`hadmc compress` of `config` in a subprocess, once 3 search evaluations and `checkpoint`
    (in the searcher's folder) are on disk; returns (process, run dir, environment)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(config)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(_hadmc("compress", "--config", str(cfg), "--out", str(out), *flags), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 600
    state = out / "searcher" / checkpoint
    while time.time() < deadline and not (len(_search_rows(out / "hadmc.db")) >= 3 and state.is_file()):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    return proc, out, env


def test_ctrl_c_then_resume_reaches_the_budget_with_every_plan_evaluated_once(tmp_path):
    proc, out, env = _compress_until_three_evaluations(tmp_path, TINY, "ppo_policy.pt")
    proc.send_signal(signal.SIGINT)
    text, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, text
    assert "Continue with: hadmc compress --out" in text and "Traceback" not in text
    before = _search_rows(out / "hadmc.db")
    assert 3 <= len(before) < 6

    import torch

    steps_at_kill = torch.load(out / "searcher" / "state.pt", weights_only=False)["trainer_steps"]
    done = subprocess.run(_hadmc("compress", "--out", str(out), "--resume"), env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"continues from its checkpoint (agent at {steps_at_kill} steps)" in done.stderr
    after = _search_rows(out / "hadmc.db")
    keys = [k for k, _ in after]
    assert len(keys) == len(set(keys)) == 6  # exactly the budget, none evaluated twice
    assert after[: len(before)] == before  # nothing finished before the kill was lost or rewritten
    assert all(json.loads(e)["split"] == "val" for _, e in after if json.loads(e)["error"] is None)
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["evaluations"] == 6 and {e["split"] for e in pareto["front"]} == {"test"}
    assert pareto["original"]["split"] == "test" and (out / "best" / "model.onnx").is_file()
    # the printed front: the original, the best plan, the split, provenance footnotes, the files
    table = done.stdout
    assert "Pareto front" in table and "original" in table and "* best" in table and " test " in table
    assert "Accuracy on the test split" in table and "best plan" in table and "pareto.json" in table


def test_sigkill_mid_evaluation_then_resume_loses_and_repeats_nothing_and_the_agent_continues(tmp_path):
    import psutil
    import torch

    config = TINY.replace("finalize_max: 2", "finalize_max: 1")
    proc, out, env = _compress_until_three_evaluations(tmp_path, config, "state.pt", "--workers", "2")
    state = out / "searcher" / "state.pt"
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2  # both worker processes, at least one of them mid-evaluation
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed or closed
    proc.communicate(timeout=30)
    before = _search_rows(out / "hadmc.db")
    assert 3 <= len(before) < 6
    steps_at_kill = torch.load(state, weights_only=False)["trainer_steps"]  # the last checkpoint is whole
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive  # the killed driver took its workers with it

    done = subprocess.run(_hadmc("compress", "--out", str(out), "--resume", "--workers", "2"), env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"continues from its checkpoint (agent at {steps_at_kill} steps)" in done.stderr
    after = _search_rows(out / "hadmc.db")
    keys = [k for k, _ in after]
    assert len(keys) == len(set(keys)) == 6  # the budget, and no plan evaluated twice
    assert after[: len(before)] == before  # every evaluation finished before the kill is there, unchanged
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["evaluations"] == 6 and pareto["execution"]["workers"] == 2
    assert "one artifact at a time" in pareto["execution"]["latency"]
