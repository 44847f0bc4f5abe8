"""Runs over the surrogate evaluator (test only: closed-form figures, milliseconds per plan)."""

from __future__ import annotations

import contextlib
import signal
import threading

from hadmc.config import RunConfig
from hadmc.envs.surrogate import SurrogateEvaluator
from hadmc.groups import LayerGroup
from hadmc.hal.device import cpu_spec_from_info
from hadmc.run import CompressionRun


def chain(n: int = 6) -> list[LayerGroup]:
    groups, in_ch = [], 3
    for i in range(n):
        last = i == n - 1
        out = 10 if last else 16 * 2 ** min(i // 2, 3)
        groups.append(
            LayerGroup(
                index=i, name="fc" if last else f"conv{i}", kind="linear" if last else ("stem" if i == 0 else "conv"),
                modules=("fc",) if last else (f"conv{i}",), in_channels=in_ch, out_channels=out, kernel=1 if last else 3,
                stride=1, flops_share=1.0 / n, params_share=1.0 / n, depth=i / (n - 1), prunable=not last,
                latency_share=1.0 / n, macs=1_000_000, params=9 * out * in_ch,
            )
        )  # fmt: skip
        in_ch = out
    return groups


def cpu():
    return cpu_spec_from_info("Test EPYC", {"avx512f", "avx512_vnni"}, 2000.0, 2, 16.0)


def config(searcher: str = "random", budget: int = 12, run_dir=None, **extra) -> RunConfig:
    data = {
        "name": f"t-{searcher}",
        "search": {"searcher": searcher, "budget": budget, "update_budgets": [0, 1, 2, 3], "finalize_max": 4},
        "constraints": {"min_accuracy": "-1pt"},
        "agent": {"predicted_episodes": 16, "candidates": 32, "initial": 4},
        **extra,
    }
    if run_dir is not None:
        data["run_dir"] = str(run_dir)
    return RunConfig.parse(data)


#: the env-driven learners (the searcher name and the settings that select it)
LEARNERS = {"sb3-ppo": ("sb3-ppo", {}), "ppo-onpolicy": ("ppo", {"agent": {"dyna": False}})}


def learner_config(learner: str, **kw) -> RunConfig:
    """`config` of one of `LEARNERS`."""
    name, extra = LEARNERS[learner]
    return config(name, **extra, **kw)


def learner_threads() -> list[str]:
    """Names of the live threads of env-driven learners (the learner and its env steps)."""
    names = {f"hadmc-{name}" for name, _ in LEARNERS.values()}
    return [t.name for t in threading.enumerate() if t.name in names or t.name.startswith("hadmc-env-")]


@contextlib.contextmanager
def deadline(seconds: int):
    """Raise TimeoutError in the main thread (as Ctrl-C would) if the block is not done in
    `seconds`: a deadlocked search fails its test instead of hanging the suite."""

    def expired(signum, frame):
        raise TimeoutError(f"not done within {seconds} s (deadlocked?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Watch:
    """Wraps `run.executor.wait`: the most plans in flight at once, the workers that returned
    results, and optionally a stop (KeyboardInterrupt, as Ctrl-C) once `stop_at` distinct plans
    of the search are recorded."""

    def __init__(self, run: CompressionRun, stop_at: int | None = None) -> None:
        self.run, self.stop_at = run, stop_at
        self.most_in_flight = 0
        self.workers: set[int] = set()
        ex = run.executor
        wait = ex.wait

        def watched(timeout=None):
            if self.stop_at is not None and run.distinct("search") >= self.stop_at:
                raise KeyboardInterrupt
            self.most_in_flight = max(self.most_in_flight, ex.in_flight)
            done = wait(timeout)
            self.workers.update(d.worker for d in done)
            return done

        ex.wait = watched


def surrogate_run(cfg: RunConfig, **kw) -> CompressionRun:
    return CompressionRun(cfg, evaluator=SurrogateEvaluator(chain(), cpu()), **kw)


# -- evaluators built inside worker processes or Ray actors (hadmc.parallel.EvaluatorFactory) --


def surrogate_factory(config: RunConfig, *, worker: int, measurement_lock, model=None, data=None) -> SurrogateEvaluator:
    """The surrogate as every worker's evaluator (module level: it travels to workers by pickle)."""
    return SurrogateEvaluator(chain(), cpu())


def other_device_factory(config: RunConfig, *, worker: int, measurement_lock, model=None, data=None) -> SurrogateEvaluator:
    """Worker 1 measures on another CPU than worker 0."""
    device = cpu() if worker == 0 else cpu_spec_from_info("Other Xeon", {"avx2"}, 3000.0, 8, 32.0)
    return SurrogateEvaluator(chain(), device)


class CrashingSurrogate(SurrogateEvaluator):
    """Kills its own process with SIGKILL (as the OOM killer would) when asked to evaluate one
    crafted plan, after noting the attempt in a file; every other plan is evaluated as usual."""

    def __init__(self, *args, crash_key: str, attempts: str, **kw) -> None:
        super().__init__(*args, **kw)
        self.crash_key, self.attempts = crash_key, attempts

    def evaluate(self, plan, phase="final", progress=None):
        import os
        import signal

        if plan.resolve([g.name for g in self.groups]).key() == self.crash_key:
            with open(self.attempts, "a") as f:
                f.write(f"{os.getpid()}\n")
            os.kill(os.getpid(), signal.SIGKILL)
        return super().evaluate(plan, phase, progress)


def crashing_factory(config: RunConfig, *, worker: int, measurement_lock, crash_key: str, attempts: str, model=None, data=None):
    return CrashingSurrogate(chain(), cpu(), crash_key=crash_key, attempts=attempts)


def broken_factory(config: RunConfig, *, worker: int, measurement_lock, model=None, data=None):
    from hadmc.errors import ModelError

    raise ModelError("weights file w.pt does not fit this architecture")
