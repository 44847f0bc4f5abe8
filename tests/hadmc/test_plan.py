import json

import pytest

from hadmc.errors import PlanError
from hadmc.plan import CompressionPlan


def test_uniform_plan_round_trips_through_canonical_json_with_a_stable_key():
    plan = CompressionPlan.uniform(0.5, "int8", temperature=4, alpha=0.7, budget=2)
    again = CompressionPlan.parse(plan.canonical_json())
    assert again == plan
    assert again.key() == plan.key()
    assert len(plan.key()) == 64
    assert json.loads(plan.canonical_json())["default"] == {"prune_ratio": 0.5, "precision": "int8", "fusion": "conv_bn_act"}


def test_key_differs_when_any_decision_differs():
    a = CompressionPlan.uniform(0.5, "int8")
    assert a.key() != CompressionPlan.uniform(0.5, "fp32").key()
    assert a.key() != CompressionPlan.uniform(0.4, "int8").key()
    assert a.key() != CompressionPlan.uniform(0.5, "int8", temperature=5).key()


@pytest.mark.parametrize(
    "data, field, allowed",
    [
        ({"default": {"precision": "int4"}}, "plan.default.precision", "fp32"),
        ({"default": {"prune_ratio": 1.5}}, "plan.default.prune_ratio", "0.95"),
        ({"default": {"fusion": "all"}}, "plan.default.fusion", "conv_bn_act"),
        ({"distill": {"temperature": 0.5}}, "plan.distill.temperature", "1"),
        ({"update": {"scope": "everything"}}, "plan.update.scope", "last_stage"),
        ({"groups": {"conv1": {"prune_ratio": -0.1}}}, "plan.groups.conv1.prune_ratio", "0"),
    ],
)
def test_validation_error_names_the_field_and_the_allowed_values(data, field, allowed):
    with pytest.raises(PlanError) as info:
        CompressionPlan.parse(data)
    assert field in str(info.value)
    assert allowed in str(info.value)


def test_unknown_key_is_rejected_by_name():
    with pytest.raises(PlanError, match="plan.default.ratio"):
        CompressionPlan.parse({"default": {"ratio": 0.5}})


def test_resolve_spells_out_every_group_and_rejects_unknown_names():
    plan = CompressionPlan.parse({"default": {"prune_ratio": 0.3}, "groups": {"b": {"prune_ratio": 0.6}}})
    resolved = plan.resolve(["a", "b", "c"])
    assert [resolved.groups[n].prune_ratio for n in "abc"] == [0.3, 0.6, 0.3]
    # spelled out or not, the same decisions give the same key after resolving
    assert CompressionPlan.parse(resolved.canonical_json()).resolve(["a", "b", "c"]).key() == resolved.key()
    with pytest.raises(PlanError, match="does not have"):
        CompressionPlan.parse({"groups": {"zz": {}}}).resolve(["a"])


def test_missing_plan_file_says_what_to_pass(tmp_path):
    with pytest.raises(PlanError, match="does not exist"):
        CompressionPlan.load(tmp_path / "nope.json")


def test_a_default_and_the_same_decisions_spelled_out_resolve_to_one_key():
    by_default = CompressionPlan.parse({"default": {"prune_ratio": 0.3, "precision": "int8"}}).resolve(["a", "b"])
    spelled = CompressionPlan.parse({"groups": {n: {"prune_ratio": 0.3, "precision": "int8"} for n in "ab"}}).resolve(["a", "b"])
    assert by_default.key() == spelled.key()


def test_with_precision_changes_only_the_named_groups_precision():
    plan = CompressionPlan.uniform(0.7, "int8", fusion="conv_bn", budget=2)
    ends = plan.with_precision(["a", "c"], "fp32")
    resolved = ends.resolve(["a", "b", "c"])
    assert [resolved.groups[n].precision for n in "abc"] == ["fp32", "int8", "fp32"]
    assert {(d.prune_ratio, d.fusion) for d in resolved.groups.values()} == {(0.7, "conv_bn")}
    assert ends.update == plan.update and ends.distill == plan.distill
    assert plan.resolve(["a", "b", "c"]).groups["a"].precision == "int8"  # the original is unchanged
    assert CompressionPlan.parse(ends.canonical_json()).key() == ends.key()
    with pytest.raises(PlanError, match="unknown precision 'int4'"):
        plan.with_precision(["a"], "int4")
