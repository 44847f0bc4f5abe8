"""The compression MDP on the real evaluator (apply, export, quantize, measure with the HAL).

Tiny measurement settings and update budget 0 keep these to seconds each; the figures are
still measured (provenance `measured`), only with fewer iterations than a reported run.
"""

from __future__ import annotations

import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn

from hadmc.config import RunConfig
from hadmc.envs.compression_env import HadMcCompressionEnv
from hadmc.envs.observation import OBS_DIM
from hadmc.envs.surrogate import SurrogateEvaluator
from hadmc.plan import CompressionPlan

pytestmark = pytest.mark.slow

TINY = {
    "latency": {"warmup_runs": 2, "warmup_s": 0.0, "min_iterations": 5, "min_seconds": 0.0, "search_min_seconds": 0.0,
                "relative": {"block_s": 0.005, "min_pairs": 3, "max_rounds": 1}},
    "energy": {"probe": None},
    "search": {"update_budgets": [0]},
    "pipeline": {"max_eval_batches": 2, "calibration_batches": 1},
}


def _episode(env, actions):
    env.reset(seed=0)
    steps = 0
    for a in actions:
        obs, reward, done, _, info = env.step(a)
        steps += 1
        if done:
            return steps, reward, info
    raise AssertionError("episode did not end")


@pytest.fixture(scope="module")
def digits_env(tmp_path_factory):
    cfg = RunConfig.parse({"name": "real", "run_dir": str(tmp_path_factory.mktemp("run")), **TINY})
    env = HadMcCompressionEnv(cfg)
    yield env
    env.close()


def test_real_env_passes_the_gymnasium_checker_and_has_groups_plus_one_steps(digits_env):
    check_env(digits_env, skip_render_check=True)
    n = len(digits_env.groups)
    actions = digits_env.plan_to_actions(CompressionPlan.uniform(0.0, "fp32", budget=0))
    steps, _, info = _episode(digits_env, actions)
    assert steps == n + 1 and digits_env.observation_space.shape == (OBS_DIM,)
    assert "error" not in info


def test_real_episode_writes_a_measured_row_and_a_replay_hits_the_cache(digits_env):
    env = digits_env
    actions = env.plan_to_actions(CompressionPlan.uniform(0.5, "int8", budget=0))
    before = env.store.count(env.run_id)
    _, reward, info = _episode(env, actions)
    assert "error" not in info and not info["cached"]
    assert info["provenance"]["latency_ms"] == "measured" and info["provenance"]["accuracy"] == "measured"
    assert 0.0 <= info["accuracy"] <= 1.0 and info["latency_ms"] > 0 and info["model_bytes"] > 0
    assert info["latency_ms"] < env.baseline.latency_ms
    assert env.store.count(env.run_id) == before + 1
    row = env.store.lookup(info["plan_key"], env.run.contexts["search"])
    assert row.latency_ms == info["latency_ms"] and row.provenance["latency_ms"] == "measured"
    # Same actions again: served from the store, nothing applied or measured.
    calls = []
    original = env.evaluator.evaluate
    env.evaluator.evaluate = lambda plan: calls.append(plan) or original(plan)
    try:
        _, reward2, info2 = _episode(env, actions)
    finally:
        env.evaluator.evaluate = original
    assert calls == [] and info2["cached"] and reward2 == reward
    assert info2["provenance"]["latency_ms"] == "cached"
    assert env.store.count(env.run_id) == before + 1


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_give_groups_plus_one_steps_and_the_same_observation_shape(arch, digits_env):
    # Real layer groups of the architectures (traced by Torch-Pruning); the figures come from
    # the surrogate so the test checks the MDP's shape, not the models' accuracy.
    from hadmc.data import load_data
    from hadmc.groups import layer_groups
    from hadmc.models import resolve_model

    data = load_data("digits")
    model = resolve_model(arch, data)
    groups = layer_groups(model, data.example_input())
    env = HadMcCompressionEnv(RunConfig(search={"update_budgets": [0]}), evaluator=SurrogateEvaluator(groups, digits_env.evaluator.device))
    env.action_space.seed(0)
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        obs, _, done, _, _ = env.step(env.action_space.sample())
        steps += 1
    assert steps == len(groups) + 1
    assert obs.shape == digits_env.observation_space.shape == (OBS_DIM,)
    assert len(groups) != len(digits_env.groups) or arch == "resnet18"
    env.close()


class HardCodedFlatten(nn.Module):
    """A CNN whose forward hard-codes its channel count: pruning conv2 breaks it."""

    def __init__(self, side: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.side = side // 2
        self.fc = nn.Linear(16 * self.side * self.side, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(x.reshape(x.shape[0], 16 * self.side * self.side))


def test_plan_that_breaks_pruning_gives_the_penalty_an_error_row_and_the_next_episode_works(tmp_path):
    from hadmc import hal
    from hadmc.data import load_data
    from hadmc.evaluation import PlanEvaluator

    data = load_data("digits")
    device = hal.detect_local("cpu")
    timing = ("warmup_runs", "warmup_s", "min_iterations", "min_seconds")
    probe = hal.get_latency_probe("ort-cpu", device=device, **{k: TINY["latency"][k] for k in timing})
    evaluator = PlanEvaluator(
        HardCodedFlatten(data.input_shape[1]), data, device=device, latency_probe=probe,
        pipeline={"max_eval_batches": 2, "calibration_batches": 1}, profile=False,
    )
    cfg = RunConfig.parse({"name": "fail", "run_dir": str(tmp_path), "failure_penalty": -5.0, **TINY})
    env = HadMcCompressionEnv(cfg, evaluator=evaluator)
    steps, reward, info = _episode(env, env.plan_to_actions(CompressionPlan.uniform(0.5, budget=0)))
    assert steps == len(env.groups) + 1
    assert reward == -5.0 and "invalid for input" in info["error"]  # the pruned model no longer runs
    assert [e.error for e in env.store.errors(env.run_id)] == [info["error"]]
    _, reward_ok, info_ok = _episode(env, env.plan_to_actions(CompressionPlan.uniform(0.0, "int8", budget=0)))
    assert "error" not in info_ok and reward_ok > -5.0
    assert info_ok["provenance"]["latency_ms"] == "measured"
    env.close()



def test_gymnasium_make_without_arguments_builds_the_embedded_default(tmp_path, monkeypatch):
    import gymnasium

    import hadmc.envs  # noqa: F401  (registers hadmc/Compression-v0)

    monkeypatch.chdir(tmp_path)  # the default run directory is runs/default under the cwd
    env = gymnasium.make("hadmc/Compression-v0")
    try:
        obs, info = env.reset(seed=0)
        assert obs.shape == (OBS_DIM,) and info["step_type"] == "group"
        inner = env.unwrapped
        assert inner.config.model == "default" and inner.evaluator.device.backend == "ort-cpu"
        assert inner.baseline.provenance["latency_ms"] == "measured" and inner.baseline.accuracy > 0.95
        assert (tmp_path / "runs" / "default" / "hadmc.db").is_file()
    finally:
        env.close()


def test_sb3_checks_and_trains_on_the_flattened_real_env(digits_env):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from hadmc.envs.wrappers import FlattenActions

    env = FlattenActions(digits_env)
    sb3_check_env(env, warn=True)
    before = digits_env.store.count(digits_env.run_id)
    steps = 20 * (len(digits_env.groups) + 1)  # twenty real plans applied and measured
    model = PPO("MlpPolicy", env, n_steps=steps, batch_size=steps // 4, n_epochs=1, seed=0, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty /tmp/SB3-<date> folder
    model.learn(total_timesteps=steps)
    assert model.num_timesteps == steps
    assert digits_env.store.count(digits_env.run_id) > before  # new plans reached the store
