"""Data that crosses a boundary (plans, run configs, device specs, probe requests) is
validated where it enters: unknown fields, infinite or NaN numbers, and true/false where a
number belongs are refused, not coerced (pydantic alone would read ``true`` as 1)."""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NUMBERS = (int, float)


def bool_for_number(value: Any, annotation: Any) -> bool:
    """Whether ``value`` puts a bool where ``annotation`` wants a number (also inside a
    tuple/list of numbers, or an Optional number)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        return bool not in args and any(bool_for_number(value, a) for a in args if a is not type(None))
    if isinstance(value, bool):
        return annotation in _NUMBERS
    if origin in (tuple, list) and args and isinstance(value, (list, tuple)):
        return any(isinstance(v, bool) for v in value) and args[0] in _NUMBERS
    if origin is dict and len(args) == 2 and isinstance(value, dict):
        return args[1] in _NUMBERS and any(isinstance(v, bool) for v in value.values())
    return False


def numbers_are_not_booleans() -> Any:
    """A field validator for any pydantic model: true/false where a field wants a number is
    refused (assign it in the class body: ``_no_bools = numbers_are_not_booleans()``)."""

    def check(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and bool_for_number(value, field.annotation):
            raise ValueError("must be a number, not true/false")
        return value

    return field_validator("*", mode="before")(check)


class StrictModel(BaseModel):
    """Frozen, no unknown fields, finite numbers only, and no booleans for numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    _numbers_are_not_booleans = numbers_are_not_booleans()
