"""The compression MDP on the surrogate evaluator: API conformance, episode shape, masks,
cache, failures, store and Pareto updates."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from hadmc.config import RunConfig
from hadmc.envs.compression_env import HadMcCompressionEnv
from hadmc.envs.observation import OBS_DIM, STATE_DIM, STATE_FIELDS
from hadmc.envs.surrogate import SurrogateEvaluator
from hadmc.plan import CompressionPlan
from hadmc.store import RunStore


def _run_episode(env, actions=None, seed=None):
    obs, info = env.reset(seed=seed)
    steps, done = 0, False
    while not done:
        a = actions[steps] if actions is not None else env.action_space.sample()
        obs, reward, done, truncated, info = env.step(a)
        assert env.observation_space.contains(obs)
        steps += 1
    return steps, reward, info


def test_gymnasium_env_checker_passes(make_env):
    env = make_env(5)
    check_env(env, skip_render_check=True)


@pytest.mark.parametrize("n_groups", [2, 5, 23])
def test_episode_length_is_groups_plus_one_and_observation_size_is_fixed(make_env, n_groups):
    env = make_env(n_groups)
    env.action_space.seed(0)
    steps, _, info = _run_episode(env, seed=0)
    assert steps == n_groups + 1
    assert env.observation_space.shape == (OBS_DIM,)
    assert info["step_type"] == "done"


def test_observation_is_finite_normalised_and_reports_steps_left(make_env):
    env = make_env(4)
    obs, _ = env.reset(seed=1)
    assert np.all(np.isfinite(obs)) and np.abs(obs).max() <= 4.0
    state = {name: [] for name in STATE_FIELDS}
    for a in env.plan_to_actions(CompressionPlan.uniform(0.5, "int8", budget=0)):
        for name, value in zip(STATE_FIELDS, obs[-STATE_DIM:]):
            state[name].append(float(value))
        obs, *_ = env.step(a)
    assert state["steps_left"] == pytest.approx([5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5])
    assert state["previous_prune_ratio"] == pytest.approx([0.0, 0.5, 0.5, 0.5, 0.0])
    # Predicted MACs reduction grows as groups are pruned (classifier stays).
    macs = state["predicted_macs_reduction"]
    assert macs[0] == 0.0 and all(b > a for a, b in zip(macs[:4], macs[1:4]))
    assert state["share_int8"][1] == pytest.approx(1.0)
    # One-hot of the step type: group steps then the final step.
    assert obs[-2:].tolist() == [0.0, 1.0]


def test_action_mask_names_active_heads_and_masks_unsupported_precisions(make_env, gpu):
    env = make_env(3)
    _, info = env.reset()
    m = info["action_mask"]
    # ort-cpu re-fuses Conv-BN-ReLU at load time: the fusion head is masked, with the reason.
    assert m["heads"] == {"pruning": True, "quantization": True, "distillation": False, "fusion": False, "update": False}
    assert "re-fuses" in m["reasons"]["fusion"] and m["fusion"].tolist() == [False, False, True]
    # The CPU spec offers fp32 and int8 only: fp16 is masked.
    assert m["quantization"].tolist() == [True, False, True]
    for _ in range(2):
        _, _, _, _, info = env.step(env.action_space.sample())
    # The classifier (last group) is never pruned: only level 0.0 is valid.
    assert info["action_mask"]["pruning"].tolist() == [True] + [False] * 9
    _, _, _, _, info = env.step(env.action_space.sample())
    assert info["action_mask"]["heads"]["update"] and info["action_mask"]["heads"]["distillation"]
    gpu_env = make_env(3, device=gpu)
    assert gpu_env.reset()[1]["action_mask"]["quantization"].all()


def test_prune_levels_that_would_empty_a_group_are_masked_and_projected(chain, cpu):
    import dataclasses

    # 4 channels, at least 2 kept: 0.8 and 0.9 would leave 1 channel -> masked.
    groups = [dataclasses.replace(g, min_channels=2) for g in chain(3, widths=[4, 4])]
    env = HadMcCompressionEnv(RunConfig(), evaluator=SurrogateEvaluator(groups, cpu))
    _, info = env.reset()
    valid = info["action_mask"]["pruning"]
    assert valid.tolist() == [True] * 8 + [False] * 2
    _, _, _, _, info = env.step({"pruning": 9, "quantization": 1, "distillation": np.array([4, 0.7], np.float32), "fusion": 0, "update": 0})
    assert info["decision"]["prune_ratio"] == 0.7 and info["decision"]["precision"] == "fp32"
    assert info["action_corrected"] == ["pruning", "quantization"]
    env.close()


def test_terminal_info_has_all_four_objectives_with_surrogate_provenance(make_env):
    env = make_env(4)
    _, reward, info = _run_episode(env, env.plan_to_actions(CompressionPlan.uniform(0.5, "int8", budget=1)))
    assert set(info["objectives"]) == {"accuracy", "latency_ms", "energy_mj", "model_bytes"}
    assert all(v is not None for v in info["objectives"].values())
    assert set(info["provenance"].values()) == {"surrogate"}
    assert info["latency_ms"] < env.baseline.latency_ms and info["model_bytes"] < env.baseline.model_bytes
    assert reward == pytest.approx(sum(v for v in info["reward_terms"].values() if v is not None))
    assert "error" not in info


def test_replaying_a_plan_hits_the_cache_without_a_second_evaluation(make_env):
    env = make_env(4)
    actions = env.plan_to_actions(CompressionPlan.uniform(0.3, "int8", budget=1, scope="half"))
    _, r1, info1 = _run_episode(env, actions)
    calls = env.evaluator.calls
    _, r2, info2 = _run_episode(env, actions)
    assert env.evaluator.calls == calls == 1
    assert info2["cached"] and not info1["cached"]
    assert r1 == r2 and info1["objectives"] == info2["objectives"]
    assert env.store.count(env.run_id) == 1


def test_use_cache_false_evaluates_again(make_env):
    env = make_env(3, config=RunConfig(use_cache=False, search={"update_budgets": [0, 1]}))
    actions = env.plan_to_actions(CompressionPlan.uniform(0.3, budget=0))
    _run_episode(env, actions)
    _run_episode(env, actions)
    assert env.evaluator.calls == 2


def test_failed_plan_gives_penalty_and_error_row_and_next_episode_works(make_env):
    cfg = RunConfig(failure_penalty=-3.0, search={"update_budgets": [0]})
    env = make_env(4, config=cfg, fail_above_prune=0.9)
    steps, reward, info = _run_episode(env, env.plan_to_actions(CompressionPlan.uniform(0.9, budget=0)))
    assert steps == 5 and reward == -3.0
    assert "configured to fail" in info["error"]
    errors = env.store.errors(env.run_id)
    assert len(errors) == 1 and errors[0].error == info["error"]
    _, reward_ok, info_ok = _run_episode(env, env.plan_to_actions(CompressionPlan.uniform(0.5, budget=0)))
    assert "error" not in info_ok and reward_ok > -3.0
    assert len(env.archive) == 1


def test_evaluator_that_raises_is_recorded_as_a_failed_plan(make_env):
    env = make_env(3)

    def boom(plan, **kw):
        raise RuntimeError("probe down")

    env.evaluator.evaluate = boom
    _, reward, info = _run_episode(env, env.plan_to_actions(CompressionPlan.uniform(0.2, budget=0)))
    assert reward == env.config.failure_penalty and info["error"] == "RuntimeError: probe down"


def test_evaluations_and_pareto_front_are_in_the_store_and_survive_reopen(tmp_path, chain, cpu):
    db = tmp_path / "run" / "hadmc.db"
    cfg = RunConfig(name="resume", search={"update_budgets": [0, 1]})
    env = HadMcCompressionEnv(cfg, evaluator=SurrogateEvaluator(chain(4), cpu), store=RunStore(db))
    plans = [CompressionPlan.uniform(r, p, budget=0) for r, p in [(0.0, "int8"), (0.5, "fp32"), (0.8, "int8")]]
    for plan in plans:
        _, _, info = _run_episode(env, env.plan_to_actions(plan))
    hv = info["hypervolume"]
    front = sorted(env.archive.keys())
    assert hv is not None and hv > 0
    env.store.close()

    evaluator = SurrogateEvaluator(chain(4), cpu)
    again = HadMcCompressionEnv(cfg, evaluator=evaluator, store=RunStore(db))
    assert again.run_id == env.run_id
    assert sorted(again.archive.keys()) == front and again.archive.hypervolume() == pytest.approx(hv)
    assert sorted(again.store.pareto_keys(again.run_id)) == front
    _, _, info = _run_episode(again, again.plan_to_actions(plans[1]))
    assert info["cached"] and evaluator.calls == 0
    again.store.close()


def test_surrogate_results_are_never_served_to_another_evaluator(tmp_path, chain, cpu):
    db = tmp_path / "hadmc.db"
    plan = CompressionPlan.uniform(0.5, budget=0)

    class OtherEvaluator(SurrogateEvaluator):
        pass

    cfg = RunConfig(search={"update_budgets": [0]})
    a = HadMcCompressionEnv(cfg, evaluator=SurrogateEvaluator(chain(3), cpu), store=RunStore(db))
    _run_episode(a, a.plan_to_actions(plan))
    other = OtherEvaluator(chain(3), cpu)
    b = HadMcCompressionEnv(cfg, evaluator=other, store=RunStore(db))
    _, _, info = _run_episode(b, b.plan_to_actions(plan))
    assert not info["cached"] and other.calls == 1


def test_step_after_the_end_needs_a_reset(make_env):
    import gymnasium

    env = make_env(2)
    _run_episode(env)
    with pytest.raises(gymnasium.error.ResetNeeded):
        env.step(env.action_space.sample())


def test_gymnasium_make_builds_the_env_from_registration(chain, cpu):
    import gymnasium

    import hadmc.envs  # noqa: F401  (registers on import)

    env = gymnasium.make("hadmc/Compression-v0", evaluator=SurrogateEvaluator(chain(3), cpu), disable_env_checker=True)
    assert isinstance(env.unwrapped, HadMcCompressionEnv)
    env.close()
