"""Searchers: ask/tell plan proposers behind one registry (see `base.Searcher`).

``ppo`` (our five-head agent, Dyna-style on a predictor refitted to the real evaluations),
``random`` (uniform over the grid), ``nsga2`` (Optuna's NSGA-II), ``sb3-ppo``
(Stable-Baselines3 PPO, or sb3-contrib MaskablePPO when installed) and ``greedy`` (per-group
sensitivity, then one bisected threshold). Entries import lazily, so choosing one never loads
the others' libraries.
"""

from __future__ import annotations

from hadmc.errors import ConfigError
from hadmc.registry import Registry

SEARCHERS: Registry = Registry("searcher", ConfigError)
SEARCHERS.add_lazy("ppo", "hadmc.search.ppo:PPOSearcher")
SEARCHERS.add_lazy("random", "hadmc.search.random:RandomSearcher")
SEARCHERS.add_lazy("nsga2", "hadmc.search.nsga2:NSGA2Searcher")
SEARCHERS.add_lazy("sb3-ppo", "hadmc.search.sb3:SB3PPOSearcher")
SEARCHERS.add_lazy("greedy", "hadmc.search.greedy:GreedySearcher")


def get_searcher(name: str):
    """The searcher class registered as `name` (an unknown name lists the valid ones)."""
    return SEARCHERS.get(name)


__all__ = ["SEARCHERS", "get_searcher"]
