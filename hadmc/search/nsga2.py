"""NSGA-II through Optuna's ask/tell interface, multi-objective on the measured figures.

Objectives: accuracy (maximised), latency and size (minimised), and energy where the run
measures it. Each plan dimension is one categorical distribution. The study lives in the run's
own SQLite file (study ``hadmc-<run name>``), so ``optuna-dashboard sqlite:///runs/NAME/hadmc.db``
opens it and a resumed run continues the same study. A failed plan, or one that skipped
recovery over a hard latency budget, is told as a failed trial.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from hadmc.errors import ConfigError
from hadmc.plan import CompressionPlan

from .base import SearchContext, Searcher

log = logging.getLogger(__name__)


def _encode(value: Any) -> Any:
    # Optuna's categorical choices are None/bool/int/float/str: an update (scope, budget) becomes "scope:budget".
    return f"{value[0]}:{value[1]}" if isinstance(value, tuple) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and ":" in value:
        scope, budget = value.split(":")
        return scope, int(budget)
    return value


class NSGA2Searcher(Searcher):
    """Optuna NSGA-II (see module docstring).

    The population is a quarter of the budget (8 to 50), so a budget of a few dozen plans
    still sees several generations.
    """

    name = "nsga2"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        try:
            import optuna
        except ImportError:  # pragma: no cover - optuna ships with the test and search extras
            raise ConfigError("the nsga2 searcher needs Optuna: pip install 'hadmc[search]'") from None
        from optuna.distributions import CategoricalDistribution

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.objective_names = list(context.objectives)
        directions = ["maximize" if context.objectives[o] == "max" else "minimize" for o in self.objective_names]
        budget = context.config.search.budget
        sampler = optuna.samplers.NSGAIISampler(population_size=min(50, max(8, budget // 4)), seed=context.seed)
        if context.database is not None:
            storage: Any = optuna.storages.RDBStorage(
                f"sqlite:///{context.database}", engine_kwargs={"connect_args": {"timeout": 60}}
            )
        else:
            storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(
            study_name=f"hadmc-{context.run_name}", storage=storage, sampler=sampler, directions=directions, load_if_exists=True
        )
        self.distributions = {
            d.name: CategoricalDistribution([_encode(o) for o in d.options]) for d in self.space.dimensions
        }
        # Trials asked before a kill and never told are closed as failed, so none stays running.
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        #: plan key -> trial numbers asked and not told yet (in ask order; one plan may be asked twice)
        self.pending: dict[str, list[int]] = {}

    def ask(self, n: int) -> list[CompressionPlan]:
        plans = []
        for _ in range(n):
            trial = self.study.ask(self.distributions)
            plan = self.space.decode({k: _decode(v) for k, v in trial.params.items()})
            self.pending.setdefault(plan.key(), []).append(trial.number)
            plans.append(plan)
        return plans

    def tell(self, plans: Sequence[CompressionPlan], evaluations, rewards) -> None:
        """Any subset of the asked plans, in any order (parallel workers finish out of order)."""
        fail = self.optuna.trial.TrialState.FAIL
        for plan, ev in zip(plans, evaluations):
            numbers = self.pending.get(plan.key())
            if not numbers:  # not asked by this study (e.g. told again after a resume)
                continue
            number = numbers.pop(0)
            if not numbers:
                del self.pending[plan.key()]
            values = [getattr(ev, o) for o in self.objective_names]
            if not ev.complete or any(v is None for v in values):
                self.study.tell(number, state=fail)
            else:
                self.study.tell(number, [float(v) for v in values])

    def close(self) -> None:
        """Trials asked but never evaluated (the budget ran out while they were asked) fail."""
        fail = self.optuna.trial.TrialState.FAIL
        for numbers in self.pending.values():
            for number in numbers:
                self.study.tell(number, state=fail)
        self.pending = {}

    def summary(self) -> dict[str, Any]:
        return {"optuna_study": self.study.study_name}
