import pytest

from hadmc.errors import ConfigError, ProbeError
from hadmc.registry import Registry


def test_registry_returns_registered_objects_by_name_and_alias():
    reg = Registry("widget")

    @reg.register("a", "alpha")
    def make_a():
        return 1

    assert reg.get("a") is make_a and reg.get("alpha") is make_a
    assert reg.names() == ["a", "alpha"] and "a" in reg and len(reg) == 2


def test_unknown_name_lists_the_valid_ones_with_the_registry_error_type():
    reg = Registry("probe", ProbeError)
    reg.add("x", object())
    reg.add_lazy("y", "json:dumps")
    with pytest.raises(ProbeError, match=r"unknown probe 'z'; valid: x, y"):
        reg.get("z")


def test_lazy_entries_import_on_first_use():
    reg = Registry("thing", ConfigError)
    reg.add_lazy("dumps", "json:dumps")
    import json

    assert reg.get("dumps") is json.dumps


def test_registering_two_objects_under_one_name_is_refused():
    reg = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(ValueError):
        reg.add("a", 2)
