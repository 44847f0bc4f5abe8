"""RunConfig: defaults, YAML loading, errors that name the field path and allowed values."""

from __future__ import annotations

import pytest

from hadmc.config import RunConfig
from hadmc.errors import ConfigError
from hadmc.plan import PRUNE_GRID


def test_defaults_describe_the_embedded_digits_run():
    cfg = RunConfig()
    assert (cfg.model, cfg.data, cfg.device, cfg.latency.probe) == ("default", "digits", "local", "ort-cpu")
    assert cfg.search.prune_grid == PRUNE_GRID
    assert cfg.database_path.as_posix() == "runs/default/hadmc.db"
    assert cfg.failure_penalty < 0


def test_yaml_round_trip_and_overrides(tmp_path):
    cfg = RunConfig.parse({"name": "x", "constraints": {"latency_budget_ms": 2.5, "min_accuracy": 0.97}})
    path = tmp_path / "run.yaml"
    path.write_text(cfg.dump_yaml())
    loaded = RunConfig.load(path, seed=7)
    assert loaded.constraints.latency_budget_ms == 2.5 and loaded.seed == 7
    assert loaded.model_copy(update={"seed": 0}) == cfg


def test_bad_precision_names_the_field_path_and_allowed_values():
    with pytest.raises(ConfigError) as err:
        RunConfig.parse({"search": {"precisions": ["fp32", "int4"]}})
    msg = str(err.value)
    assert "config.search.precisions.1" in msg and "'fp32', 'fp16' or 'int8'" in msg and "int4" in msg


def test_prune_grid_must_start_at_zero_and_increase():
    with pytest.raises(ConfigError, match=r"config.search.prune_grid: .*start at 0.0"):
        RunConfig.parse({"search": {"prune_grid": [0.2, 0.1]}})
    with pytest.raises(ConfigError, match=r"config.search.prune_grid"):
        RunConfig.parse({"search": {"prune_grid": [0.0, 0.99]}})


def test_unknown_key_and_missing_weights_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config.latncy: Extra inputs are not permitted"):
        RunConfig.parse({"latncy": {}})
    with pytest.raises(ConfigError, match="weights file .* does not exist"):
        RunConfig.parse({"weights": str(tmp_path / "nope.pt")})


def test_load_reports_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        RunConfig.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        RunConfig.load(bad)


def test_evaluation_context_changes_with_the_device_but_not_the_reward_weights():
    base = RunConfig()
    assert base.evaluation_context() == RunConfig.parse({"objectives": {"size": 2.0}}).evaluation_context()
    assert base.evaluation_context() != RunConfig.parse({"device": "jetson-orin"}).evaluation_context()


def test_search_context_records_the_narrow_student_rule_only_where_it_applies():
    base = RunConfig()
    plain = RunConfig.parse({"search": {"fidelity_macs_ref": 0.0}})
    assert base.evaluation_context("search") != plain.evaluation_context("search")
    assert base.evaluation_context("final") == plain.evaluation_context("final")  # final figures never depend on it
    full = RunConfig.parse({"search": {"fidelity": 1.0}})
    assert full.evaluation_context("search") == RunConfig.parse({"search": {"fidelity": 1.0, "fidelity_macs_ref": 0.0}}).evaluation_context("search")


def test_a_run_started_before_the_narrow_student_rule_resumes_without_it(tmp_path):
    from hadmc.run import config_differences

    old = RunConfig().model_dump(mode="json")
    del old["search"]["fidelity_macs_ref"]  # a run's stored configuration from before the setting
    assert config_differences(RunConfig(), old) == ["search"]  # it ran every plan at the fidelity
    assert config_differences(RunConfig.parse({"search": {"fidelity_macs_ref": 0.0}}), old) == []
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    assert RunConfig.load_stored(path).search.fidelity_macs_ref == 0.0
    assert RunConfig.load(path).search.fidelity_macs_ref == 0.4  # a user's file keeps the default


@pytest.mark.parametrize(
    ("field", "plans_own", "default"),
    [
        ("fidelity_lr", 1.0, 3.0), ("fidelity_temperature", 20.0, 4.0), ("fidelity_alpha", 1.0, 0.5), ("fidelity_batch_size", None, 32),
        ("fidelity_batch_share", 1.0, 0.5), ("fidelity_full_scope", False, True),
    ],  # fmt: skip
)
def test_search_context_records_how_shortened_recoveries_train_and_older_runs_resume_without_it(tmp_path, field, plans_own, default):
    """The search learning rate and the search temperature cap: in the search context only
    below full fidelity, absent at the value that trains as the plan says (older contexts)."""
    from hadmc.run import config_differences

    base, plain = RunConfig(), RunConfig.parse({"search": {field: plans_own}})
    assert base.evaluation_context("search") != plain.evaluation_context("search")
    assert base.evaluation_context("final") == plain.evaluation_context("final")  # final recoveries train as the plan says
    full = RunConfig.parse({"search": {"fidelity": 1.0}})
    assert full.evaluation_context("search") == RunConfig.parse({"search": {"fidelity": 1.0, field: plans_own}}).evaluation_context("search")
    old = RunConfig().model_dump(mode="json")
    del old["search"][field]  # a run's stored configuration from before the setting
    assert config_differences(plain, old) == []
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    assert getattr(RunConfig.load_stored(path).search, field) == plans_own
    assert getattr(RunConfig.load(path).search, field) == default  # a user's file keeps the default


def test_search_context_records_the_batchnorm_choice_and_older_runs_resume_without_it(tmp_path):
    from hadmc.run import config_differences

    base, always = RunConfig(), RunConfig.parse({"search": {"bn_select": False}})
    assert base.evaluation_context("search") != always.evaluation_context("search")
    assert base.evaluation_context("final") == always.evaluation_context("final")
    never = {"pipeline": {"bn_recalibration": "never"}}  # nothing to choose: no mark
    assert RunConfig.parse(never).evaluation_context("search") == RunConfig.parse({**never, "search": {"bn_select": False}}).evaluation_context("search")
    old = RunConfig().model_dump(mode="json")
    del old["search"]["bn_select"]  # stored before the setting: its search always re-estimated
    assert config_differences(RunConfig(), old) == ["search"] and config_differences(always, old) == []
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    assert RunConfig.load_stored(path).search.bn_select is False


def test_a_run_started_before_the_search_warm_up_setting_resumes_with_the_full_warm_up(tmp_path):
    from hadmc.run import config_differences

    old = RunConfig().model_dump(mode="json")
    del old["latency"]["search_warmup_s"]  # stored before the setting: searches warmed up for warmup_s
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    stored = RunConfig.load_stored(path)
    assert stored.latency.search_warmup_s is None and RunConfig().latency.search_warmup_s == 0.05
    assert config_differences(RunConfig.parse({"latency": {"search_warmup_s": None}}), old) == []
    # resumed, it computes the contexts of an explicit null (the key left out of the hash, as before the setting)
    before = RunConfig.parse({"latency": {"search_warmup_s": None}})
    assert stored.evaluation_context("search") == before.evaluation_context("search")
    assert RunConfig().evaluation_context("search") != before.evaluation_context("search")


def test_search_context_records_the_scope_rule_and_older_runs_resume_without_it(tmp_path):
    from hadmc.run import config_differences

    assert RunConfig().search.fidelity_scope is False  # off since frozen BatchNorm statistics are re-estimated first
    with pytest.raises(ConfigError, match="set fidelity_full_scope: false to use fidelity_scope"):
        RunConfig.parse({"search": {"fidelity_scope": True}})  # shortened recoveries train the whole model by default
    partial = {"fidelity_full_scope": False}
    base, same = RunConfig.parse({"search": {"fidelity_scope": True, **partial}}), RunConfig.parse({"search": partial})
    assert base.evaluation_context("search") != same.evaluation_context("search")
    assert base.evaluation_context("final") == same.evaluation_context("final")  # final figures never depend on it
    full = {"search": {"fidelity": 1.0}}  # every plan runs its whole budget: no mark
    scoped = RunConfig.parse({"search": {"fidelity": 1.0, "fidelity_scope": True, **partial}})
    assert RunConfig.parse({"search": {"fidelity": 1.0, **partial}}).evaluation_context("search") == scoped.evaluation_context("search")
    old = base.model_dump(mode="json")
    del old["search"]["fidelity_scope"]  # stored before the setting: every scope ran the same fraction
    assert config_differences(base, old) == ["search"] and config_differences(same, old) == []
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    assert RunConfig.load_stored(path).search.fidelity_scope is False
    assert RunConfig.load_stored(path).evaluation_context("search") == same.evaluation_context("search")


def test_training_device_is_checked_and_only_a_gpu_changes_the_context(monkeypatch):
    import torch

    from hadmc.config import resolve_train_device

    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        RunConfig.parse({"pipeline": {"train_device": "gpu"}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_train_device("auto") == "cpu"
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU.*set it to auto or cpu"):
        resolve_train_device("cuda")
    cpu = RunConfig.parse({"pipeline": {"train_device": "cpu"}})
    # auto on a machine without a GPU trains on the CPU: the same figures, the same context as before the setting
    assert RunConfig().evaluation_context() == cpu.evaluation_context()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_train_device("auto") == "cuda" and resolve_train_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="torch sees 1 CUDA GPU"):
        resolve_train_device("cuda:1")
    assert RunConfig().evaluation_context() != cpu.evaluation_context()
    assert RunConfig().evaluation_context("search") != cpu.evaluation_context("search")


def test_the_frozen_batchnorm_refresh_changes_every_context_and_older_runs_resume_without_it(tmp_path):
    from hadmc.run import config_differences

    base, off = RunConfig(), RunConfig.parse({"pipeline": {"refresh_frozen_norms": False}})
    assert base.pipeline.refresh_frozen_norms is True
    for phase in ("search", "final"):  # it changes final figures too
        assert base.evaluation_context(phase) != off.evaluation_context(phase)
    never = {"bn_recalibration": "never"}  # nothing is re-estimated then: no mark
    assert RunConfig.parse({"pipeline": never}).evaluation_context() == RunConfig.parse(
        {"pipeline": {**never, "refresh_frozen_norms": False}}
    ).evaluation_context()
    old = RunConfig().model_dump(mode="json")
    del old["pipeline"]["refresh_frozen_norms"]  # stored before the setting: frozen layers kept their statistics
    assert config_differences(RunConfig(), old) == ["pipeline"] and config_differences(off, old) == []
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    stored = RunConfig.load_stored(path)
    assert stored.pipeline.refresh_frozen_norms is False
    assert stored.evaluation_context("search") == off.evaluation_context("search")
