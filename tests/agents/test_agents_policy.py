"""Actor-critic heads, masks (the compression env's info format), Gaussian distillation head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium import spaces

from hadmc.agents.policy import ActionMasks, ActorCritic, encode_observation
from hadmc.errors import ConfigError

ACTIONS = spaces.Dict({
    "pruning": spaces.Discrete(9),
    "quantization": spaces.Discrete(3),
    "fusion": spaces.Discrete(3),
    "update": spaces.MultiDiscrete([4, 5]),
    "distillation": spaces.Box(np.array([1.0, 0.0], np.float32), np.array([20.0, 1.0], np.float32)),
})
OBS = spaces.Box(-1.0, 1.0, (6,), np.float32)


def _info(n: int):
    return {
        "action_mask": {
            "heads": {"pruning": np.array([True] * n), "distillation": np.array([False] * n), "_pruning": np.ones(n, bool), "_distillation": np.ones(n, bool)},
            "quantization": np.tile(np.array([True, False, True]), (n, 1)),
            "_quantization": np.ones(n, bool),
        },
        "_action_mask": np.ones(n, bool),
    }


def test_heads_follow_the_dict_space_and_the_distillation_head_is_gaussian():
    pol = ActorCritic(OBS, ACTIONS)
    kinds = {h.name: (h.kind, h.size) for h in pol.heads}
    assert kinds == {"distillation": ("gaussian", 2), "fusion": ("categorical", 3), "pruning": ("categorical", 9),
                     "quantization": ("categorical", 3), "update/0": ("categorical", 4), "update/1": ("categorical", 5)}
    assert len([m for m in pol.trunk if isinstance(m, torch.nn.Linear)]) == 3


def test_masked_options_are_never_sampled_and_inactive_heads_contribute_nothing():
    torch.manual_seed(0)
    pol = ActorCritic(OBS, ACTIONS)
    n = 512
    masks = pol.masks_from_info(_info(n), n)
    obs = torch.randn(n, 6)
    actions, logp, _ = pol.act(obs, masks)
    env_a = pol.to_env_action(actions)
    assert not (env_a["quantization"] == 1).any()
    d = pol.head_names.index("distillation")
    assert (logp[:, d] == 0).all()
    lp, ent, _ = pol.evaluate(obs, actions, masks)
    assert torch.allclose(lp, logp, atol=1e-6)
    assert (ent[:, d] == 0).all()
    q = pol.head_names.index("quantization")
    # two valid options left: entropy <= log 2
    assert (ent[:, q] <= math.log(2) + 1e-6).all()


def test_distillation_transform_and_log_prob_of_the_pre_transform_sample():
    torch.manual_seed(1)
    pol = ActorCritic(OBS, ACTIONS, log_std_init=1.5)
    obs = torch.randn(256, 6)
    actions, logp, _ = pol.act(obs)
    env_a = pol.to_env_action(actions)["distillation"]
    assert env_a[:, 0].min() >= 1.0 and env_a[:, 0].max() <= 20.0
    assert (env_a[:, 1] > 0).all() and (env_a[:, 1] < 1).all()
    d = pol.head_names.index("distillation")
    col = pol.action_slice("distillation")
    x = actions[:, col]
    np.testing.assert_allclose(env_a[:, 1], 1 / (1 + np.exp(-x[:, 1].numpy())), rtol=1e-5)
    _, means, _ = pol(obs)
    ref = torch.distributions.Normal(means[:, pol.mean_slice("distillation")], math.exp(1.5)).log_prob(x).sum(-1)
    assert torch.allclose(logp[:, d], ref, atol=1e-5)


def test_plain_spaces_work_and_discrete_observations_are_one_hot():
    for act in (spaces.Discrete(4), spaces.MultiDiscrete([3, 2]), spaces.Box(-1, 1, (3,))):
        pol = ActorCritic(spaces.Discrete(5), act)
        obs = encode_observation(spaces.Discrete(5), np.array([0, 4]))
        assert obs.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
        a, lp, v = pol.act(obs)
        env_a = pol.to_env_action(a)
        assert all(act.contains(x) for x in (env_a if not isinstance(act, spaces.Box) else env_a.astype(np.float32)))
        assert lp.shape == (2, len(pol.heads)) and v.shape == (2,)


def test_no_mask_in_info_means_everything_valid_and_bad_masks_say_what_to_fix():
    pol = ActorCritic(OBS, ACTIONS)
    m = pol.masks_from_info({}, 3)
    assert m.heads.all() and m.options is None
    bad = _info(2)
    bad["action_mask"]["quantization"] = np.zeros((2, 3), bool)
    with pytest.raises(ConfigError, match="no valid option"):
        pol.masks_from_info(bad, 2)
    bad["action_mask"]["heads"]["quantization"] = np.array([False, False])
    bad["action_mask"]["heads"]["_quantization"] = np.ones(2, bool)
    assert not pol.masks_from_info(bad, 2).heads[:, pol.head_names.index("quantization")].any()
    with pytest.raises(ConfigError, match="options per env"):
        pol.masks_from_info({"action_mask": {"pruning": np.ones((2, 4), bool)}, "_action_mask": np.ones(2, bool)}, 2)


def test_an_all_false_option_mask_of_an_inactive_head_gives_zero_log_prob_and_entropy_not_nan():
    torch.manual_seed(2)
    pol = ActorCritic(OBS, ACTIONS)
    n = 8
    obs = torch.randn(n, 6)
    actions, _, _ = pol.act(obs)
    q = pol.head_names.index("quantization")
    heads = torch.ones(n, len(pol.heads), dtype=torch.bool)
    heads[:, q] = False
    options = torch.ones(n, pol.n_logits, dtype=torch.bool)
    options[:, pol.logit_slice("quantization")] = False  # passed straight to ActionMasks
    masks = ActionMasks(heads, options)
    lp, ent, _ = pol.evaluate(obs, actions, masks)
    assert torch.isfinite(lp).all() and torch.isfinite(ent).all()
    assert (lp[:, q] == 0).all() and (ent[:, q] == 0).all()
    (lp.sum() + ent.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in pol.parameters() if p.grad is not None)
    a2, lp2, _ = pol.act(obs, masks)
    assert torch.isfinite(lp2).all() and (lp2[:, q] == 0).all()
