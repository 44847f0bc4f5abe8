"""Every name the agents package resolves comes from one kind of registry (hadmc.registry)."""

from __future__ import annotations

import pytest

from hadmc.agents.advantages import ADVANTAGE_ESTIMATORS, AdvantageEstimator
from hadmc.agents.losses import P_SCHEDULES, POLICY_LOSSES, RATIO_MEANS, PolicyLossSpec
from hadmc.agents.policy import ACTIVATIONS, BOX_TRANSFORMS
from hadmc.agents.sampling import SAMPLING_CRITERIA
from hadmc.errors import ConfigError
from hadmc.registry import Registry

REGISTRIES = [
    (POLICY_LOSSES, "dpo", "pmd-mean, pmd-part, ppo-clip"),
    (ADVANTAGE_ESTIMATORS, "vtrace", "gae, group, loo, ploo"),
    (RATIO_MEANS, "median", "joint, power"),
    (P_SCHEDULES, "step", "constant, cosine, linear"),
    (SAMPLING_CRITERIA, "tv", "ess, kl"),
    (BOX_TRANSFORMS, "tanh", "clip, temperature-alpha"),
    (ACTIVATIONS, "gelu", "elu, relu, tanh"),
]


@pytest.mark.parametrize("registry,bad,valid", REGISTRIES, ids=lambda x: x.kind if isinstance(x, Registry) else "")
def test_every_agents_name_choice_is_a_registry_whose_unknown_names_list_the_valid_ones(registry, bad, valid):
    assert isinstance(registry, Registry)
    assert ", ".join(registry.names()) == valid
    with pytest.raises(ConfigError, match=f"unknown {registry.kind} '{bad}'; valid: {valid}"):
        registry.get(bad)


def test_losses_and_advantage_estimators_share_one_signature_per_kind():
    assert all(isinstance(POLICY_LOSSES.get(n), PolicyLossSpec) for n in POLICY_LOSSES)
    assert all(isinstance(ADVANTAGE_ESTIMATORS.get(n), AdvantageEstimator) for n in ADVANTAGE_ESTIMATORS)
    # gae is registered like the others; only the episode estimators need whole episodes
    assert [n for n in ADVANTAGE_ESTIMATORS if ADVANTAGE_ESTIMATORS.get(n).whole_episodes] == ["group", "loo", "ploo"]
