"""FlattenActions: MultiDiscrete decoding, masks, and Stable-Baselines3 on the wrapped env."""

from __future__ import annotations

import numpy as np
import pytest

from hadmc.envs.wrappers import ALPHA_GRID, FLAT_ORDER, TEMPERATURE_GRID, FlattenActions


def test_flat_action_decodes_to_the_dict_action(make_env):
    env = FlattenActions(make_env(3))
    assert env.action_space.nvec.tolist() == [10, 3, len(TEMPERATURE_GRID), len(ALPHA_GRID), 3, 4 * 2]
    a = env.action(np.array([3, 2, 2, 3, 1, 5]))
    assert a["pruning"] == 3 and a["quantization"] == 2 and a["fusion"] == 1 and a["update"] == 5
    assert a["distillation"].tolist() == pytest.approx([TEMPERATURE_GRID[2], ALPHA_GRID[3]])


def test_final_step_decodes_update_index_into_scope_and_budget(make_env):
    env = FlattenActions(make_env(2))
    env.reset(seed=0)
    for _ in range(2):
        env.step(np.zeros(6, dtype=np.int64))
    # update index 5 with budgets (0, 1): scope 5 // 2 = 2 ("half"), budget index 1 -> 1.
    _, _, done, _, info = env.step(np.array([0, 0, 1, 4, 0, 5]))
    assert done
    assert info["plan"]["update"] == {"scope": "half", "budget": 1}
    assert info["plan"]["distill"] == {"temperature": TEMPERATURE_GRID[1], "alpha": ALPHA_GRID[4]}


def test_action_masks_follow_the_step(make_env):
    env = FlattenActions(make_env(2))
    env.reset()
    sizes = env.action_space.nvec
    m = env.action_masks()
    assert m.shape == (sizes.sum(),)
    q = m[sizes[0] : sizes[0] + sizes[1]]
    assert q.tolist() == [True, False, True]  # CPU: no fp16
    env.step(env.action_space.sample())
    env.step(env.action_space.sample())
    m = env.action_masks()
    start = int(sizes[: FLAT_ORDER.index("temperature")].sum())
    assert m[start : start + sizes[2]].all()  # final step: distillation acts


def test_sb3_check_env_passes_on_the_flattened_env(make_env):
    from stable_baselines3.common.env_checker import check_env

    check_env(FlattenActions(make_env(4)), warn=True)


def test_sb3_ppo_runs_a_few_hundred_steps(make_env):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    env = FlattenActions(make_env(4))
    model = PPO("MlpPolicy", env, n_steps=100, batch_size=50, n_epochs=2, seed=0, device="cpu", verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))  # SB3's default makes an empty /tmp/SB3-<date> folder
    model.learn(total_timesteps=300)
    assert model.num_timesteps >= 300
    base = env.unwrapped
    # 300 steps of 5-step episodes: 60 plans went through the store (cache hits included).
    assert base.store.count(base.run_id) >= 1 and len(base.archive) >= 1


def test_grids_outside_the_box_are_rejected(make_env):
    with pytest.raises(ValueError, match="temperature_grid must be"):
        FlattenActions(make_env(2), temperature_grid=(0.5, 4.0))
