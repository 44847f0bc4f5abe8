"""Every searcher spends its budget of distinct plans through one CompressionRun (surrogate figures)."""

from __future__ import annotations

import json

import pytest
from search_fixtures import chain, config, cpu, surrogate_run

from hadmc.envs.surrogate import SurrogateEvaluator
from hadmc.errors import ConfigError
from hadmc.run import CompressionRun
from hadmc.search import SEARCHERS, get_searcher

ALL = ["ppo", "random", "nsga2", "sb3-ppo", "greedy"]


@pytest.mark.parametrize("name", ALL)
def test_each_searcher_spends_exactly_its_budget_of_distinct_plans(name, tmp_path):
    run = surrogate_run(config(name, budget=10, run_dir=tmp_path))
    run.search()
    evaluations = run.evaluations("search")
    keys = [e.plan_key for e in evaluations]
    assert run.distinct("search") == 10 == len(set(keys)) == len(keys)  # none evaluated twice
    assert all(e.phase == "search" and e.split == "val" for e in evaluations if e.ok)
    assert run.store.meta(run.run_id)["searcher"] == name
    assert (tmp_path / "searcher" / "state.pt").is_file()
    run.close()


def test_registry_rejects_an_unknown_searcher_listing_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown searcher 'bayes'; valid: greedy, nsga2, ppo, random, sb3-ppo"):
        get_searcher("bayes")
    with pytest.raises(ConfigError, match=r"search.searcher: .*valid: greedy, nsga2, ppo, random, sb3-ppo"):
        config("bayes")
    assert sorted(SEARCHERS.names()) == sorted(ALL)


def test_cached_plans_do_not_count_against_the_budget(tmp_path):
    # a grid of 4 plans: random search repeats itself, yet stops at 4 distinct evaluations
    cfg = config("random", budget=4, search={"searcher": "random", "budget": 4, "prune_grid": [0.0], "precisions": ["fp32", "int8"], "update_budgets": [0, 1]})
    run = surrogate_run(cfg)
    run.search()
    assert run.distinct("search") == 4 and len(run.evaluations("search")) == 4
    assert run.evaluator.calls == 4  # every other ask was a cache hit
    run.close()


def test_finalize_reevaluates_the_front_on_the_test_split_and_writes_the_results(tmp_path):
    run = surrogate_run(config("random", budget=8, run_dir=tmp_path))
    run.search()
    result = run.finalize()
    assert result.front and all(e.phase == "final" and e.split == "test" for e in result.front)
    assert result.original.split == "test" and result.best is not None
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["best"] == result.best.plan_key and {r["split"] for r in pareto["front"]} == {"test"}
    assert json.loads((tmp_path / "best" / "plan.json").read_text()) == result.best.plan
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "hadmc.db").is_file()
    assert result.evaluations == 8
    run.close()


def test_resume_continues_to_the_budget_with_no_plan_evaluated_twice(tmp_path):
    first = surrogate_run(config("ppo", budget=6, run_dir=tmp_path), resume=False)
    first.search()
    steps = first.store.meta(first.run_id)["agent_steps"]
    assert steps > 0
    first.close()
    again = surrogate_run(config("ppo", budget=10, run_dir=tmp_path), resume=True)
    searcher = again.make_searcher()
    assert searcher.impl.trainer.num_timesteps == steps  # the agent continues from its checkpoint
    again.search(searcher)
    keys = [e.plan_key for e in again.evaluations("search")]
    assert len(keys) == len(set(keys)) == 10
    assert again.store.meta(again.run_id)["agent_steps"] > steps
    again.close()


def test_a_run_directory_is_never_silently_reused_or_resumed_under_other_settings(tmp_path):
    run = surrogate_run(config("random", budget=3, run_dir=tmp_path))
    run.search()
    run.close()
    with pytest.raises(ConfigError, match="--resume"):
        surrogate_run(config("random", budget=3, run_dir=tmp_path), resume=False)
    with pytest.raises(ConfigError, match="objectives"):
        surrogate_run(config("random", budget=3, run_dir=tmp_path, objectives={"latency": 2.0}), resume=True)
    with pytest.raises(ConfigError, match="nothing to resume|no run"):
        surrogate_run(config("random", budget=3, run_dir=tmp_path / "new"), resume=True)


def test_a_run_started_before_a_setting_existed_resumes_with_that_settings_default(tmp_path):
    # a run stored by an older HAD-MC lacks settings added since (here search.floor_slack_pt);
    # it ran with their defaults, so resuming it under them is resuming under its own settings
    import json
    import sqlite3

    run = surrogate_run(config("random", budget=3, run_dir=tmp_path))
    run.search()
    run.close()
    with sqlite3.connect(tmp_path / "hadmc.db") as db:
        (stored,) = db.execute("SELECT config_json FROM runs").fetchone()
        older = json.loads(stored)
        del older["search"]["floor_slack_pt"]
        db.execute("UPDATE runs SET config_json = ?", (json.dumps(older),))
    resumed = surrogate_run(config("random", budget=4, run_dir=tmp_path), resume=True)
    resumed.search()
    assert resumed.distinct("search") == 4
    resumed.close()
    with pytest.raises(ConfigError, match="search"):  # a setting that differs from its default still refuses
        surrogate_run(config("random", budget=4, run_dir=tmp_path, search={"searcher": "random", "budget": 4, "update_budgets": [0, 1, 2, 3], "finalize_max": 4, "floor_slack_pt": 1.0}), resume=True)


def test_ppo_searcher_counts_the_predicted_episodes_it_trained_on():
    run = surrogate_run(config("ppo", budget=8))
    searcher = run.search()
    summary = searcher.summary()
    assert summary["agent_mode"] == "dyna" and summary["predicted_episodes"] >= 16
    # predictions never reach the store: every stored figure is the evaluator's
    assert {v for e in run.evaluations("search") for v in e.provenance.values()} == {"surrogate"}
    run.close()


def test_on_policy_ppo_runs_on_real_evaluations_for_comparison():
    run = surrogate_run(config("ppo", budget=6, agent={"dyna": False}))
    searcher = run.search()
    assert searcher.summary()["agent_mode"] == "on-policy" and run.distinct("search") == 6
    run.close()


def test_when_no_plan_meets_the_constraints_the_best_found_is_returned_with_what_it_misses():
    run = surrogate_run(config("random", budget=6, constraints={"min_accuracy": 0.9999, "latency_budget_ms": 0.001}))
    run.search()
    result = run.finalize()
    assert result.best is not None
    assert any("below the floor 99.99%" in v for v in result.violations)
    assert any("over the budget 0.001 ms" in v for v in result.violations)
    run.close()


def test_floor_slack_softens_the_floor_for_search_evaluations_only():
    # a plan 1.5 points under a -1pt floor: while searching (fidelity 0.25) with 1 point of
    # slack it pays for half a point; its final, full-fidelity evaluation pays for all 1.5
    cfg = config("random", budget=2, search={"searcher": "random", "budget": 2, "fidelity": 0.25, "floor_slack_pt": 1.0})
    run = surrogate_run(cfg)
    run.search()
    base = run.baseline("search")
    low = run.evaluations("search")[0].model_copy(update={"accuracy": base.accuracy - 0.025})
    assert run.reward_breakdown(low).terms["min_accuracy_penalty"] == pytest.approx(-0.5)
    final = low.model_copy(update={"phase": "final", "accuracy": run.baseline("final").accuracy - 0.025})
    assert run.reward_breakdown(final).terms["min_accuracy_penalty"] == pytest.approx(-1.5)
    run.close()
    full = surrogate_run(config("random", budget=2, search={"searcher": "random", "budget": 2, "fidelity": 1.0, "floor_slack_pt": 1.0}))
    full.search()
    assert full.reward_breakdown(low).terms["min_accuracy_penalty"] == pytest.approx(-1.5)  # full fidelity: no slack
    full.close()


def test_a_requested_stop_is_honoured_before_the_next_evaluation_even_if_the_interrupt_was_lost():
    run = surrogate_run(config("random", budget=6))
    searcher = run.make_searcher()
    told = []
    tell = searcher.tell

    def tell_then_stop(plans, evaluations, rewards):  # Ctrl-C's handler ran; its KeyboardInterrupt went nowhere
        tell(plans, evaluations, rewards)
        told.extend(plans)
        if len(told) == 2:
            run.request_stop()

    searcher.tell = tell_then_stop
    with pytest.raises(KeyboardInterrupt):
        run.search(searcher)
    assert run.distinct("search") == 2
    with pytest.raises(KeyboardInterrupt):  # the final phase honours it too
        run.finalize()
    run.close()


class _DriftingSurrogate(SurrogateEvaluator):
    """Final figures whose interleaved ratios rank plans against their medians (as on a machine
    whose load drifted between measurements): the slowest median gets the best ratio."""

    def evaluate(self, plan, phase="final", progress=None):
        ev = super().evaluate(plan, phase, progress)
        if phase == "final" and ev.latency_ms:
            ev = ev.model_copy(update={"latency_ratio": 1e-3 / ev.latency_ms, "accuracy": 0.9})
        return ev


def test_the_best_plan_is_on_the_front_the_user_sees_even_when_ratios_and_medians_disagree():
    run = CompressionRun(config("random", budget=8), evaluator=_DriftingSurrogate(chain(), cpu()))
    run.search()
    result = run.finalize()
    front = {e.plan_key for e in result.front}
    assert len(front) < 4 and result.best.plan_key in front  # some finals are dominated; the best is not one of them
    run.close()


def test_plan_space_round_trips_plans_and_masks_fusion_on_a_refusing_backend():
    run = surrogate_run(config("random"))
    searcher = run.make_searcher()
    space = searcher.space
    assert space.fusions == ("conv_bn_act",)  # ort-cpu re-fuses: no budget spent on fusion
    assert not any(d.name.endswith("/fusion") for d in space.dimensions)
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(20):
        plan = space.sample(rng)
        assert space.decode(space.encode(plan)) == plan
    assert space.uniform(0.5, "int8").groups["conv1"].prune_ratio == 0.5
    assert space.uniform(0.5, "int8").groups["fc"].prune_ratio == 0.0  # the classifier keeps its outputs
    run.close()


def test_the_agent_starts_its_distillation_at_the_usual_recipe_not_at_the_clip():
    run = surrogate_run(config("ppo", budget=4))
    searcher = run.make_searcher()
    plans = searcher.impl.sample_plans(64)
    temperatures = [p.distill.temperature for p in plans]
    assert 2.5 < sum(temperatures) / len(temperatures) < 5.5 and sum(t == 1.0 for t in temperatures) < 16
    assert 0.5 < sum(p.distill.alpha for p in plans) / len(plans) < 0.85
    run.close()


def test_a_ppo_checkpoint_resumes_the_agent_of_its_own_history_not_a_later_round_on_disk(tmp_path):
    from hadmc.search.ppo import PPOSearcher

    run = surrogate_run(config("ppo", budget=12, run_dir=tmp_path))
    searcher = run.make_searcher()
    first = searcher.ask(4)  # the initial plans: no training round yet
    searcher.tell(first, run.evaluate(first), [0.0] * 4)
    before = searcher.state_dict()  # what state.pt holds when a kill comes now
    second = searcher.ask(1)  # trains a round and writes ppo_policy.pt; the run dies before the tell
    trained = searcher.summary()["agent_steps"]
    assert trained > 0 and searcher.impl.checkpoint.is_file()

    searcher.tell(second, run.evaluate(second), [0.0])
    later = searcher.state_dict()  # saved after that round's tell

    again = PPOSearcher(searcher.context)
    again.load_state_dict({"mode": "dyna", **before})
    assert again.summary()["agent_steps"] == 0 and not again.impl.checkpoint.is_file()
    after = PPOSearcher(searcher.context)
    after.load_state_dict({"mode": "dyna", **later})  # a state saved after the round resumes its agent
    assert after.summary()["agent_steps"] == trained
    for s in (searcher, again, after):
        s.close()
    run.close()


def test_dyna_ppo_sends_in_turn_the_largest_hypervolume_gain_and_the_largest_reward(tmp_path):
    import numpy as np

    from hadmc.search.predictor import Prediction

    run = surrogate_run(config("ppo", budget=12, run_dir=tmp_path))
    searcher = run.make_searcher()
    dyna = searcher.impl
    first = searcher.ask(4)
    searcher.tell(first, run.evaluate(first), [0.0] * 4)
    dyna._refit()
    base = dyna.context.baseline
    acc0, lat0 = base.accuracy, base.latency_ms
    # three candidates the model predicts exactly, all at a tenth of the original's size: 2 pt
    # above the original's accuracy at half its latency (the largest hypervolume gain), 0.5 pt
    # below it at a fiftieth (the largest reward: inside the -1pt floor and 50x faster), and a
    # plan that gains neither
    slow_accurate, fast, neither = (dyna.space.uniform(r, "fp32") for r in (0.25, 0.5, 0.75))
    figures = {slow_accurate.key(): (acc0 + 0.02, 0.5 * lat0), fast.key(): (acc0 - 0.005, 0.02 * lat0), neither.key(): (acc0 - 0.3, 0.99 * lat0)}

    def predict(plans):
        acc, lat = zip(*(figures[p.key()] for p in plans))
        n = len(plans)
        return Prediction(np.array(acc), np.full(n, 1e-6), np.array(lat), np.full(n, 0.1 * base.model_bytes), None)

    dyna.predictor.predict = predict
    assert dyna.selections == 0
    assert dyna.select([neither, fast, slow_accurate], 2) == [slow_accurate, fast]
    assert dyna.select([neither, fast, slow_accurate], 1) == [slow_accurate]  # the third choice of the run: hypervolume's turn
    assert dyna.select([neither, slow_accurate, fast], 1) == [fast]  # the fourth: the reward's
    assert searcher.state_dict()["selections"] == 4
    searcher.close()
    run.close()


def test_front_neighbours_include_every_group_moved_one_prune_level_and_distillation_moves(tmp_path):
    run = surrogate_run(config("ppo", budget=12, run_dir=tmp_path))
    searcher = run.make_searcher()
    dyna, space = searcher.impl, searcher.impl.space
    plan = space.uniform(0.5, "int8")
    dyna.plans, dyna.evaluations = [plan], run.evaluate([plan])
    moved = [space.encode(p) for p in dyna.neighbours(40)]
    start = space.encode(plan)
    prunable = [n for n in space.group_names if len(space.prune_options[n]) > 1]

    def shift(values, name):
        opts = space.prune_options[name]
        return opts.index(values[f"{name}/prune"]) - opts.index(start[f"{name}/prune"])

    uniform_moves = {shift(v, prunable[0]) for v in moved if len({shift(v, n) for n in prunable}) == 1 and shift(v, prunable[0]) != 0}
    assert uniform_moves == {-1, 1}  # every prunable group one level down, or one level up
    assert any(sum(shift(v, n) != 0 for n in prunable) in (1, 2) for v in moved)  # and the local moves
    distilled = [v for v in moved if v["alpha"] != start["alpha"]]  # and the distillation one option
    assert distilled
    for v in distilled:
        assert abs(space.alphas.index(v["alpha"]) - space.alphas.index(start["alpha"])) == 1
        assert all(shift(v, n) == 0 for n in prunable) and all(v[f"{n}/precision"] == start[f"{n}/precision"] for n in space.group_names)
    searcher.close()
    run.close()


def test_ppo_anchors_include_the_most_pruned_int8_plans_with_stem_and_classifier_in_fp32_and_cheap_groups_wider(tmp_path):
    run = surrogate_run(config("ppo", budget=12, run_dir=tmp_path))
    searcher = run.make_searcher()
    space = searcher.impl.space
    anchors = searcher.impl.anchors()
    assert anchors[:4] == [space.uniform(r, "int8") for r in (0.3, 0.5, 0.7, 0.9)]
    first, last = space.group_names[0], space.group_names[-1]
    assert (first, last) == ("conv0", "fc")  # network order
    for plain, ends in zip(anchors[2:4], anchors[4:]):
        assert [ends.decision_for(n).precision for n in space.group_names] == ["fp32"] + ["int8"] * (len(space.group_names) - 2) + ["fp32"]
        assert [ends.decision_for(n).prune_ratio for n in space.group_names] == [plain.decision_for(n).prune_ratio for n in space.group_names]
        assert space.decode(space.encode(ends)) == ends  # on the grid
    wider, most = anchors[6], anchors[5]
    prunable = [g for g in space.groups if len(space.prune_options[g.name]) > 1]
    share = {g.name: g.cost_share for g in prunable}
    cheap = sorted(share, key=share.get)[: round(len(prunable) / 3)]
    assert cheap and len(anchors) == 7
    for n in space.group_names:
        d, base = wider.decision_for(n), most.decision_for(n)
        assert d.precision == base.precision
        if n in cheap:  # the groups cheapest in latency kept wider, at the level at or below 0.5
            assert d.prune_ratio == max(r for r in space.prune_options[n] if r <= 0.5 + 1e-9) < base.prune_ratio
        else:
            assert d.prune_ratio == base.prune_ratio
    assert space.decode(space.encode(wider)) == wider
    assert (wider.distill.alpha, wider.distill.temperature) == (0.0, 1.0)  # plain fine-tuning: it recovered better
    assert all(a.distill == most.distill for a in anchors[:6])  # the others at the most thorough recovery
    asked = [searcher.ask(1) for _ in range(7)]
    assert [len(a) for a in asked] == [1] * 7  # one plan per ask(1)
    assert [a[0] for a in asked] == anchors  # the initial plans start with them, in order
    searcher.close()
    run.close()


def test_searchers_see_the_latency_shares_that_measuring_the_original_gives_the_groups(tmp_path):
    from dataclasses import replace

    class Profiling(SurrogateEvaluator):
        """Like the real evaluator: measuring the original profiles it and sets the shares."""

        def baseline_for(self, phase):
            out = super().baseline_for(phase)
            n = len(self.groups)
            self.groups = [replace(g, latency_share=(n - i) / (n * (n + 1) / 2)) for i, g in enumerate(self.groups)]
            return out

    run = CompressionRun(config("ppo", budget=12, run_dir=tmp_path), evaluator=Profiling(chain(), cpu()))
    assert len({g.latency_share for g in run.groups}) == 1  # the fixture's equal shares until the original is measured
    searcher = run.make_searcher()
    space = searcher.impl.space
    n = len(space.groups)
    assert [g.latency_share for g in space.groups] == [(n - i) / (n * (n + 1) / 2) for i in range(n)]
    assert run.groups == space.groups
    # so the anchor keeps the groups measured cheapest wider: the last prunable ones here
    wider, most = searcher.impl.anchors()[-1], searcher.impl.anchors()[-2]
    widened = [g for g in space.group_names if wider.decision_for(g).prune_ratio < most.decision_for(g).prune_ratio]
    prunable = [g for g in space.group_names if len(space.prune_options[g]) > 1]
    assert widened == prunable[-round(len(prunable) / 3) :]
    searcher.close()
    run.close()


def test_plans_one_validation_image_short_of_the_front_are_finalize_candidates_and_no_others():
    from hadmc.evaluation import Evaluation
    from hadmc.run import near_front

    def ev(name, acc, lat, samples=100):
        return Evaluation(plan_key=name, plan={}, phase="search", split="val", accuracy=acc, accuracy_samples=samples, latency_ms=lat, model_bytes=1000)

    a, b = ev("a", 0.98, 1.0), ev("b", 0.97, 0.9)  # the front
    near = ev("near", 0.97, 0.95)  # one image more would put it on the front (0.98 at 0.95 ms)
    tie = ev("tie", 0.96, 0.95)  # one image more only ties b, which is faster
    uncounted = ev("uncounted", 0.97, 0.95, samples=None)  # no image count: no allowance
    chosen = near_front([a, b, near, tie, uncounted], ["accuracy", "latency_ms", "model_bytes"])
    assert [e.plan_key for e in chosen] == ["a", "b", "near"]
