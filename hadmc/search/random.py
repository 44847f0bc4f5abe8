"""Random search: plans uniform over the grid, each dimension independently."""

from __future__ import annotations

from hadmc.plan import CompressionPlan

from .base import Searcher


class RandomSearcher(Searcher):
    """Uniform over the plan grid (seeded; resumes with its generator state)."""

    name = "random"

    def ask(self, n: int) -> list[CompressionPlan]:
        return [self.space.sample(self.rng) for _ in range(n)]
