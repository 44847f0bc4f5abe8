"""PlanEvaluator: real application and measurement, provenance on every figure, no re-measuring."""

import pytest

from hadmc import hal
from hadmc.evaluation import PlanEvaluator
from hadmc.plan import CompressionPlan

FAST = {"warmup_runs": 10, "warmup_s": 0.05, "min_iterations": 20, "min_seconds": 0.1}


@pytest.fixture(scope="module")
def evaluator(trained_small, digits16):
    model, _ = trained_small
    # a spec that describes no machine these tests run on: its figures must say so
    spec = hal.load_device_spec("x86-cpu").model_dump()
    cpu = hal.DeviceSpec.model_validate({**spec, "name": "imaginary-cpu", "host": {"cpu_model": "Imaginary CPU 9000", "cores": 64}})
    return PlanEvaluator(
        model,
        digits16,
        device=cpu,
        latency_probe=hal.get_latency_probe("ort-cpu", device=cpu, **FAST),
        energy_probe=hal.get_energy_probe("estimated", device=cpu),
    )


def test_baseline_is_measured_and_attaches_latency_shares(evaluator):
    base = evaluator.baseline
    assert base.ok and base.latency_ms > 0 and base.latency_iterations >= 20
    assert base.provenance == {"accuracy": "measured", "latency_ms": "measured", "model_bytes": "measured", "energy_mj": "estimated"}
    assert all(g.latency_share is not None for g in evaluator.groups)
    assert sum(g.latency_share for g in evaluator.groups) == pytest.approx(1.0, abs=0.05)


def test_evaluation_records_objectives_versions_and_timings(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "int8", budget=0))
    assert ev.ok, ev.error
    assert ev.model_bytes < evaluator.baseline.model_bytes and ev.macs < evaluator.baseline.macs
    assert ev.energy_mj is not None and ev.provenance["energy_mj"] == "estimated"
    assert {"torch", "onnxruntime", "torch_pruning"} <= set(ev.versions)
    assert {"prune_s", "export_s", "quantize_s", "measure_s"} <= set(ev.timings)
    assert ev.device == evaluator.device.id and ev.probe["backend"] == "ort-cpu"


def test_identical_plan_is_applied_once_per_run_and_reused_as_cached(evaluator):
    from hadmc.config import RunConfig
    from hadmc.run import CompressionRun

    run = CompressionRun(RunConfig(name="dedupe", energy={"probe": None}), evaluator=evaluator)
    plan = CompressionPlan.uniform(0.3, "fp32", budget=0)
    # the same decisions spelled out per group: same resolved key
    spelled = CompressionPlan.parse({"groups": {g.name: {"prune_ratio": 0.3 if g.prunable else 0.0} for g in evaluator.groups}, "update": {"budget": 0}})
    first, again = run.evaluate([plan, spelled])
    assert again.plan_key == first.plan_key
    assert again.latency_ms == first.latency_ms and again.provenance["latency_ms"] == "cached"
    assert first.provenance["latency_ms"] == "measured" and run.distinct("search") == 1
    third = run.evaluate([plan])[0]
    assert third.provenance["accuracy"] == "cached" and run.distinct("search") == 1
    run.close()


def test_search_phase_reads_validation_accuracy_and_final_phase_the_test_split(evaluator):
    plan = CompressionPlan.uniform(0.0, "fp32", budget=0)
    search, final = evaluator.evaluate(plan, phase="search"), evaluator.evaluate(plan, phase="final")
    assert (search.phase, search.split, final.phase, final.split) == ("search", "val", "final", "test")
    assert evaluator.baseline_for("search").split == "val" and evaluator.baseline.split == "test"
    # with the number of images each was read on
    sizes = {s: len(evaluator.data.split(s)) for s in ("val", "test")}
    assert (search.accuracy_samples, final.accuracy_samples) == (sizes["val"], sizes["test"])
    assert (evaluator.baseline_for("search").accuracy_samples, evaluator.baseline.accuracy_samples) == (sizes["val"], sizes["test"])


def test_failing_plan_returns_an_error_instead_of_raising(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.0, "fp16", budget=0))
    assert not ev.ok and "PlanError" in ev.error and "fp16" in ev.error
    assert ev.latency_ms is None and ev.accuracy is None


def test_plans_are_timed_against_the_original_and_record_where_and_under_what_load(evaluator):
    base = evaluator.baseline
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=0))
    assert ev.ok, ev.error
    assert base.latency_ratio is None  # the original is the reference
    assert ev.latency_ratio is not None and ev.latency_ratio > 0 and ev.latency_ratio_spread >= 0
    assert ev.latency_noisy in (True, False)
    for e in (base, ev):
        assert e.host["cpu_model"] == hal.describe_host().cpu_model
        assert len(e.load_avg) == 3 and e.cpu_s is not None


def test_a_device_spec_that_does_not_describe_the_measuring_host_is_flagged(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=0))
    assert ev.host_mismatch and "Imaginary CPU 9000" in ev.host_mismatch[0]
    assert evaluator.baseline.host_mismatch


def _small_evaluator(trained_small, digits16, **kw):
    model, _ = trained_small
    cpu = hal.load_device_spec("x86-cpu")
    return PlanEvaluator(
        model, digits16, device=cpu, latency_probe=hal.get_latency_probe("ort-cpu", device=cpu, **FAST),
        pipeline={"max_train_batches": 3}, profile=False, **kw,
    )  # fmt: skip


def test_teacher_logit_cache_gives_the_same_accuracy_as_running_the_teacher(trained_small, digits16):
    plan = CompressionPlan.uniform(0.5, "fp32", budget=1)
    cached = _small_evaluator(trained_small, digits16, student_cache=0).evaluate(plan)
    direct = _small_evaluator(trained_small, digits16, student_cache=0, teacher_cache=False).evaluate(plan)
    assert cached.ok and direct.ok
    assert abs(cached.accuracy - direct.accuracy) <= 1.0 / len(digits16.test)  # at most one image apart


def test_teacher_logits_are_not_cached_when_the_training_images_are_augmented(trained_small, digits16):
    import dataclasses

    augmented = dataclasses.replace(digits16, train_augmented=True)
    assert not _small_evaluator(trained_small, augmented).teacher_cache


def test_a_recovered_student_is_shared_by_plans_that_differ_only_in_precision(trained_small, digits16):
    fp32, int8 = CompressionPlan.uniform(0.5, "fp32", budget=1), CompressionPlan.uniform(0.5, "int8", budget=1)
    shared = _small_evaluator(trained_small, digits16)
    shared.evaluate(fp32)
    reused = shared.evaluate(int8)
    assert shared.stats == {"students_reused": 1, "recoveries": 1, "recoveries_skipped": 0}
    alone = _small_evaluator(trained_small, digits16, student_cache=0).evaluate(int8)
    assert reused.accuracy == alone.accuracy and reused.model_bytes == alone.model_bytes
    assert "recover_s" not in reused.timings  # no recovery was paid for


def test_search_fidelity_runs_a_fraction_of_the_recovery_and_a_hard_budget_skips_it(trained_small, digits16):
    plan = CompressionPlan.uniform(0.3, "fp32", budget=2)
    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.5)
    search, final = ev.evaluate(plan, phase="search"), ev.evaluate(plan, phase="final")
    assert (search.recovery_steps, search.full_recovery_steps, search.fidelity) == (3, 6, 0.5)
    assert (final.recovery_steps, final.fidelity) == (6, 1.0)
    # both phases keep re-estimated BatchNorm statistics only where the validation accuracy says
    # so (search on the PyTorch student, final on the artifacts), and record the comparison
    assert search.bn_recalibrated in (True, False) and final.bn_recalibrated in (True, False)
    assert any(n.startswith("BatchNorm statistics") and "accuracy of the PyTorch student on the first" in n for n in search.notes)
    assert any(n.startswith("BatchNorm statistics") and "validation accuracy" in n for n in final.notes)
    tight = _small_evaluator(trained_small, digits16, latency_budget_ms=1e-6)
    skipped = tight.evaluate(plan, phase="search")
    assert skipped.ok and not skipped.complete and "hard budget" in skipped.skipped
    assert skipped.accuracy is None and skipped.latency_ms > 0 and skipped.provenance["latency_ms"] == "measured"
    assert tight.stats["recoveries"] == 0 and tight.stats["recoveries_skipped"] == 1


def test_search_evaluations_keep_re_estimated_batchnorm_statistics_only_where_validation_accuracy_rises(trained_small, digits16):
    import re

    plan = CompressionPlan.uniform(0.3, "fp32", budget=2)
    kw = {"search_fidelity": 0.5, "student_cache": 0}
    chosen = _small_evaluator(trained_small, digits16, **kw).evaluate(plan, phase="search")
    always = _small_evaluator(trained_small, digits16, search_bn_select=False, **kw).evaluate(plan, phase="search")
    never = _small_evaluator(trained_small, digits16, bn_recalibration="never", **kw).evaluate(plan, phase="search")
    assert always.bn_recalibrated is True and never.bn_recalibrated is False  # as runs before the choice did
    (note,) = [n for n in chosen.notes if n.startswith("BatchNorm statistics")]
    with_, without = (float(v) for v in re.findall(r"([0-9.]+)% with(?:out)?", note))
    assert chosen.bn_recalibrated is (with_ > without)  # a tie keeps the statistics recovery left
    # chosen on the first validation batch (the accuracy recorded is read on the whole split)
    assert f"on the first {min(64, len(digits16.val))} validation images" in note
    # the read is the artifact of the chosen student: the same figure the other choice gives
    assert chosen.accuracy == (always.accuracy if chosen.bn_recalibrated else never.accuracy)
    assert chosen.recovery_steps == always.recovery_steps == never.recovery_steps
    assert "recalibration_select_s" in chosen.timings and "recalibration_select_s" not in always.timings


def test_narrow_students_run_more_of_their_recovery_while_searching(trained_small, digits16):
    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_macs_ref=0.5, student_cache=0)
    # fidelity * ref / share, between the fidelity itself and the whole budget
    assert ev.search_fraction(None) == 0.5 and ev.search_fraction(1.0) == 0.5 and ev.search_fraction(0.5) == 0.5
    assert ev.search_fraction(0.4) == pytest.approx(0.625) and ev.search_fraction(0.1) == 1.0
    wide, narrow = CompressionPlan.uniform(0.0, "fp32", budget=2), CompressionPlan.uniform(0.9, "fp32", budget=2)
    w, n = ev.evaluate(wide, phase="search"), ev.evaluate(narrow, phase="search")
    assert w.ok and n.ok, (w.error, n.error)
    share = n.macs / w.macs
    assert share < 0.25  # so the rule gives the narrow plan its whole budget
    assert (w.recovery_steps, w.full_recovery_steps) == (3, 6)
    assert (n.recovery_steps, n.full_recovery_steps, n.fidelity) == (6, 6, 1.0)
    from hadmc.pipeline import resolve_plan

    assert ev.macs_share(resolve_plan(narrow, ev.groups))[0] == pytest.approx(share, rel=1e-6)  # remembered per decisions
    # final evaluations always run the whole budget; without the rule every plan runs the fraction
    assert ev.evaluate(wide, phase="final").recovery_steps == 6
    plain = _small_evaluator(trained_small, digits16, search_fidelity=0.5, student_cache=0)
    assert plain.evaluate(narrow, phase="search").recovery_steps == 3
    from hadmc.errors import ConfigError

    with pytest.raises(ConfigError, match="search_fidelity_macs_ref"):
        _small_evaluator(trained_small, digits16, search_fidelity_macs_ref=2.0)


def test_plans_that_train_part_of_the_model_run_more_of_their_recovery_while_searching(trained_small, digits16):
    from hadmc.evaluation import SCOPE_STEP_COST
    from hadmc.pipeline import resolve_plan

    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.2, search_fidelity_scope=True, student_cache=0)
    # as many more steps as each is cheaper, at most the whole budget
    assert ev.search_fraction(None) == 0.2 and ev.search_fraction(None, "full") == 0.2
    assert ev.search_fraction(None, "half") == pytest.approx(0.2 / SCOPE_STEP_COST["half"])
    assert ev.search_fraction(None, "head") == pytest.approx(0.2 / SCOPE_STEP_COST["head"])
    assert _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_scope=True).search_fraction(None, "head") == 1.0
    plan = CompressionPlan.uniform(0.5, "fp32", budget=3)  # 9 steps at 3 batches per epoch
    half = plan.model_copy(update={"update": plan.update.model_copy(update={"scope": "half"})})
    assert ev.recovery_plan(resolve_plan(plan, ev.groups), "search") == (2, 9)  # ceil(0.2 * 9)
    assert ev.recovery_plan(resolve_plan(half, ev.groups), "search") == (4, 9)  # ceil(0.2 / 0.55 * 9)
    e = ev.evaluate(half, phase="search")
    assert e.ok and (e.recovery_steps, e.full_recovery_steps) == (4, 9), e.error
    assert ev.evaluate(half, phase="final").recovery_steps == 9  # final evaluations run the whole budget
    plain = _small_evaluator(trained_small, digits16, search_fidelity=0.2, student_cache=0)  # without the rule
    assert plain.recovery_plan(resolve_plan(half, ev.groups), "search") == (2, 9)


def test_shortened_search_recoveries_train_at_the_search_learning_rate_and_batch_size_and_final_ones_at_the_plan_own(trained_small, digits16, monkeypatch):
    import hadmc.pipeline as pipeline_module

    rates = []
    real = pipeline_module.recover

    def spy(*args, **kw):
        rates.append((kw["max_steps"], kw["lr"], kw["batch_size"]))
        return real(*args, **kw)

    monkeypatch.setattr(pipeline_module, "recover", spy)
    plan = CompressionPlan.uniform(0.3, "fp32", budget=2)  # 6 steps at 3 batches per epoch
    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_lr=3.0, search_fidelity_batch_size=32)
    search, final = ev.evaluate(plan, phase="search"), ev.evaluate(plan, phase="final")
    assert search.ok and final.ok, (search.error, final.error)
    # 3 of 6 steps of 64 images while searching: the same 192 images in 6 steps of 32
    assert rates == [(6, pytest.approx(0.03), 32), (6, pytest.approx(0.01), 64)]
    assert search.recovery_steps == 3  # recorded in steps of the plan's own budget
    rates.clear()  # a search recovery that runs the whole budget trains at the plan's own rate and batch size
    whole = _small_evaluator(
        trained_small, digits16, search_fidelity=0.5, search_fidelity_macs_ref=1.0, search_fidelity_lr=3.0, search_fidelity_batch_size=32
    )
    assert whole.evaluate(CompressionPlan.uniform(0.9, "fp32", budget=2), phase="search").recovery_steps == 6
    assert rates == [(6, pytest.approx(0.01), 64)]
    rates.clear()  # with a batch share, only recoveries shorter than that share of the budget take the small batch
    kw = {"search_fidelity": 0.5, "search_fidelity_lr": 3.0, "search_fidelity_batch_size": 32, "student_cache": 0}
    assert _small_evaluator(trained_small, digits16, search_fidelity_batch_share=0.6, **kw).evaluate(plan, phase="search").ok
    assert _small_evaluator(trained_small, digits16, search_fidelity_batch_share=0.5, **kw).evaluate(plan, phase="search").ok
    assert rates == [(6, pytest.approx(0.03), 32), (3, pytest.approx(0.03), 64)]  # 3 < 0.6 * 6; 3 is not < 0.5 * 6
    from hadmc.errors import ConfigError

    with pytest.raises(ConfigError, match="search_fidelity_lr"):
        _small_evaluator(trained_small, digits16, search_fidelity_lr=0.5)
    with pytest.raises(ConfigError, match="search_fidelity_batch_size"):
        _small_evaluator(trained_small, digits16, search_fidelity_batch_size=0)
    with pytest.raises(ConfigError, match="search_fidelity_batch_share"):
        _small_evaluator(trained_small, digits16, search_fidelity_batch_share=0.0)


def test_shortened_search_recoveries_train_the_whole_model_and_final_ones_the_plan_own_scope(trained_small, digits16, monkeypatch):
    import hadmc.pipeline as pipeline_module

    scopes = []
    real = pipeline_module.recover

    def spy(student, teacher, plan, *args, **kw):
        scopes.append((kw["max_steps"], plan.update.scope))
        return real(student, teacher, plan, *args, **kw)

    monkeypatch.setattr(pipeline_module, "recover", spy)
    plan = CompressionPlan.uniform(0.5, "fp32", budget=2)  # 6 steps at 3 batches per epoch
    half = plan.model_copy(update={"update": plan.update.model_copy(update={"scope": "half"})})
    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_full_scope=True, student_cache=0)
    search, final = ev.evaluate(half, phase="search"), ev.evaluate(half, phase="final")
    assert search.ok and final.ok, (search.error, final.error)
    assert scopes == [(3, "full"), (6, "half")]
    assert search.plan["update"]["scope"] == "half"  # the evaluation records the plan's own scope
    scopes.clear()  # without the setting the search recovery trains the plan's own scope
    assert _small_evaluator(trained_small, digits16, search_fidelity=0.5, student_cache=0).evaluate(half, phase="search").ok
    assert scopes == [(3, "half")]
    scopes.clear()  # a search recovery that runs the whole budget is not shortened: the plan's own scope
    whole = _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_macs_ref=1.0, search_fidelity_full_scope=True)
    narrow = CompressionPlan.uniform(0.9, "fp32", budget=2)
    assert whole.evaluate(narrow.model_copy(update={"update": half.update}), phase="search").recovery_steps == 6
    assert scopes == [(6, "half")]
    from hadmc.errors import ConfigError

    with pytest.raises(ConfigError, match="set one of them false"):
        _small_evaluator(trained_small, digits16, search_fidelity_scope=True, search_fidelity_full_scope=True)


def test_shortened_search_recoveries_distil_at_the_capped_temperature_and_weight_and_final_ones_at_the_plan_own(trained_small, digits16, monkeypatch):
    import hadmc.pipeline as pipeline_module

    temperatures = []
    real = pipeline_module.recover

    def spy(student, teacher, plan, *args, **kw):
        temperatures.append((kw["max_steps"], plan.distill.temperature, plan.distill.alpha))
        return real(student, teacher, plan, *args, **kw)

    monkeypatch.setattr(pipeline_module, "recover", spy)
    hot = CompressionPlan.uniform(0.3, "fp32", budget=2, temperature=12.0, alpha=0.9)  # 6 steps at 3 batches per epoch
    ev = _small_evaluator(trained_small, digits16, search_fidelity=0.5, search_fidelity_temperature=4.0, search_fidelity_alpha=0.3)
    search, final = ev.evaluate(hot, phase="search"), ev.evaluate(hot, phase="final")
    assert search.ok and final.ok, (search.error, final.error)
    assert temperatures == [(3, 4.0, 0.3), (6, 12.0, 0.9)]
    assert search.plan["distill"] == {"alpha": 0.9, "temperature": 12.0}  # the plan recorded is the plan's own
    temperatures.clear()  # below the caps, and over the whole budget, the plan's own temperature and weight
    cool = CompressionPlan.uniform(0.3, "fp32", budget=2, temperature=2.0, alpha=0.1)
    assert ev.evaluate(cool, phase="search").ok
    whole = _small_evaluator(
        trained_small, digits16, search_fidelity=0.5, search_fidelity_macs_ref=1.0, search_fidelity_temperature=4.0, search_fidelity_alpha=0.3
    )
    assert whole.evaluate(CompressionPlan.uniform(0.9, "fp32", budget=2, temperature=12.0), phase="search").recovery_steps == 6
    assert temperatures == [(3, 2.0, 0.1), (6, 12.0, 0.7)]
    from hadmc.errors import ConfigError

    with pytest.raises(ConfigError, match="search_fidelity_temperature"):
        _small_evaluator(trained_small, digits16, search_fidelity_temperature=0.5)
    with pytest.raises(ConfigError, match="search_fidelity_alpha"):
        _small_evaluator(trained_small, digits16, search_fidelity_alpha=1.5)


def test_int8_recipe_follows_the_cpu_isa_and_is_recorded(evaluator):
    from hadmc.pipeline import quantization_recipe

    assert quantization_recipe(hal.load_device_spec("x86-cpu")).reduce_range  # AVX2 only: 7-bit weights
    vnni = evaluator.device.model_copy(update={"vnni": True})
    assert not quantization_recipe(vnni).reduce_range
    assert quantization_recipe(hal.load_device_spec("h100")).activation == "QInt8"
    ev = evaluator.evaluate(CompressionPlan.uniform(0.0, "int8", budget=0))
    assert ev.quantization == {"activation": "QUInt8", "weight": "QInt8", "reduce_range": True, "per_channel": True,
                               "format": "QDQ", "name": "U8S8+reduce_range"}  # fmt: skip


class _RecordingLock:
    """A measurement lock that remembers what ran while it was held."""

    def __init__(self) -> None:
        self.held = False
        self.calls: list[tuple[str, bool]] = []

    def __enter__(self):
        assert not self.held  # measurements never nest
        self.held = True
        return self

    def __exit__(self, *exc) -> None:
        self.held = False

    def watch(self, obj, name: str) -> None:
        inner = getattr(obj, name)

        def wrapped(*a, **kw):
            self.calls.append((name, self.held))
            return inner(*a, **kw)

        setattr(obj, name, wrapped)


def test_the_measurement_lock_covers_latency_energy_and_profiling_but_not_accuracy(trained_small, digits16):
    model, _ = trained_small
    lock = _RecordingLock()
    probe = hal.get_latency_probe("ort-cpu", **FAST)
    energy = hal.get_energy_probe("estimated", device=probe.device)
    for name in ("measure", "measure_relative", "profile_nodes", "session"):
        lock.watch(probe, name)
    lock.watch(energy, "measure")
    ev = PlanEvaluator(model, digits16, latency_probe=probe, energy_probe=energy, measurement_lock=lock, profile_plans=True)
    assert ev.baseline_for("search").ok
    out = ev.evaluate(CompressionPlan.uniform(0.5, "int8", budget=0), phase="search")
    assert out.ok, out.error
    held = {name: {h for n, h in lock.calls if n == name} for name, _ in lock.calls}
    assert held["measure"] == held["measure_relative"] == held["profile_nodes"] == {True}  # latency, energy, profiles
    assert held["session"] == {False}  # accuracy runs (and recovery) go on while another worker measures
    assert out.group_latency_ms and out.node


def test_with_a_deployed_model_each_artifact_records_its_patch_size(trained_small, digits16, tmp_path):
    model, _ = trained_small
    probe = hal.get_latency_probe("ort-cpu", **FAST)
    first = PlanEvaluator(model, digits16, latency_probe=probe)
    _, deployed = first.evaluate_with_artifact(CompressionPlan.uniform(0.0, "fp32", budget=0))
    ev = PlanEvaluator(model, digits16, latency_probe=probe, deployed_model=deployed.onnx_bytes)
    same = ev.evaluate(CompressionPlan.uniform(0.0, "fp32", budget=0))
    pruned = ev.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=0))
    assert same.patch_base_sha256 == pruned.patch_base_sha256 == hal.sha256_hex(deployed.onnx_bytes)
    assert same.patch_bytes < 0.1 * same.model_bytes  # nothing changed: the graph skeleton only
    assert pruned.patch_bytes > 0.5 * pruned.model_bytes  # every pruned tensor changed size: sent whole
    assert first.evaluate(CompressionPlan.uniform(0.0, "fp32", budget=0)).patch_bytes is None  # no deployed model, no figure


def test_search_evaluations_time_and_calibrate_more_coarsely_never_more_finely_than_final_ones(trained_small, digits16, tmp_path):
    from hadmc.config import RunConfig
    from hadmc.evaluation import build_evaluator

    model, _ = trained_small
    cfg = RunConfig(
        name="coarse", run_dir=str(tmp_path / "run"), energy={"probe": None},
        latency={**FAST, "search_min_iterations": 50, "search_min_seconds": 0.05, "search_warmup_s": 0.01,
                 "relative": {"min_pairs": 3, "max_rounds": 1, "max_spread": 0.1},
                 "search_relative": {"min_pairs": 4, "max_rounds": 2, "max_spread": 0.05, "block_s": 0.01}},
        pipeline={"calibration_batches": 3, "search_calibration_batches": 1},
    )  # fmt: skip
    evaluator = build_evaluator(cfg, model=model, data=digits16)
    evaluator.baseline_for("search")  # plans are timed against the original from here on
    plan = CompressionPlan.uniform(0.5, "int8", budget=0)
    search, final = evaluator.evaluate(plan, "search"), evaluator.evaluate(plan, "final")
    assert search.ok and final.ok, (search.error, final.error)
    # each search setting is the coarser of the two; final figures keep the final settings
    assert search.probe["relative"] == {"block_s": 0.01, "min_pairs": 3, "max_rounds": 1, "max_spread": 0.1}
    assert final.probe["relative"] == cfg.latency.relative.model_dump()
    assert (search.probe["min_iterations"], search.probe["min_seconds"]) == (20, 0.05)
    assert (final.probe["min_iterations"], final.probe["min_seconds"]) == (20, 0.1)
    assert (search.probe["warmup_s"], final.probe["warmup_s"], search.probe["warmup_runs"]) == (0.01, 0.05, 10)
    assert (search.probe["calibration_batches"], final.probe["calibration_batches"]) == (1, 3)
    assert search.latency_ratio is not None and final.latency_ratio is not None


def test_on_a_machine_with_a_gpu_a_cpu_target_is_described_and_its_energy_read_as_the_cpu(trained_small, digits16, tmp_path, monkeypatch):
    from hadmc.config import RunConfig
    from hadmc.evaluation import build_evaluator
    from hadmc.hal import device as hal_device

    # NVML reports a GPU here; `device: local` alone would describe (and read the energy of) it
    monkeypatch.setattr(hal_device, "_nvml_gpu_spec", lambda index=0: hal.load_device_spec("h100"))
    hal_device.detect_local.cache_clear()  # it remembers this machine
    try:
        assert hal.load_device_spec("local").kind == "gpu"
        model, _ = trained_small
        cfg = RunConfig(name="cpu-on-gpu-host", run_dir=str(tmp_path / "run"), latency=FAST, energy={"probe": "auto"})
        evaluator = build_evaluator(cfg, model=model, data=digits16)
    finally:
        hal_device.detect_local.cache_clear()
    assert evaluator.device.kind == "cpu" and evaluator.device.backend == "ort-cpu"
    assert evaluator.energy_probe is None or evaluator.energy_probe.name != "nvml"
