"""Audience rules: predicates on user properties and past behaviour, combined with all/any/not.

Saved as `kind: Segment` or written inline in a campaign's audience.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator, model_validator

from .common import (
    INT64_MAX,
    INT64_MIN,
    MAX_COUNT,
    POSITIVE_DURATION_PATTERN,
    DocumentBase,
    Duration,
    StrictModel,
)
from .schema_rules import given, none_of, rules, when

Scalar = str | int | float | bool

PropertyOp = Literal[
    "eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between",
    "exists", "not_exists", "contains", "starts_with",
    "before", "after", "within_last", "more_than_ago",
]
VALUELESS_OPS = {"exists", "not_exists"}
LIST_OPS = {"in", "not_in", "between"}
DURATION_OPS = {"within_last", "more_than_ago"}


class PropertyPredicate(StrictModel):
    """`name` is a user property (or an event property inside `event.where`).

    Built-in user fields: phone, timezone, country, created_at. Dates compare with before/after
    (ISO timestamps) and within_last/more_than_ago (durations such as 30d).
    """

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    op: PropertyOp = "eq"
    value: Scalar | list[Scalar] | None = None

    model_config = ConfigDict(json_schema_extra=rules(
        when("op", sorted(VALUELESS_OPS), none_of("value")),
        when("op", sorted(LIST_OPS), {"allOf": [given("value"), {"type": "object", "properties": {
            "value": {"type": "array", "minItems": 1}}}]}),
        when("op", ["between"], {"type": "object", "properties": {"value": {
            "type": "array", "minItems": 2, "maxItems": 2}}}),
        when("op", sorted(DURATION_OPS), {"type": "object", "properties": {
            "value": {"type": "string", "pattern": POSITIVE_DURATION_PATTERN}}}),
        {"if": {"type": "object", "properties": {"op": {"not": {"enum": sorted(VALUELESS_OPS | LIST_OPS)}}}},
         "then": {"allOf": [given("value"), {"type": "object", "properties": {"value": {"not": {"type": "array"}}}}]}},
    ))

    @field_validator("value")
    @classmethod
    def _bindable(cls, value: Scalar | list[Scalar] | None, info: ValidationInfo) -> Scalar | list[Scalar] | None:
        for item in value if isinstance(value, list) else [value]:
            _check_bindable(item)
        if info.data.get("op") in DURATION_OPS and not isinstance(value, list | None):
            from .common import parse_duration

            if parse_duration(str(value)) <= timedelta(0):
                raise ValueError(f"op '{info.data['op']}' needs a positive duration (got {value!r})")
        return value

    @model_validator(mode="after")
    def _value_fits_op(self) -> PropertyPredicate:
        if self.op in VALUELESS_OPS:
            if self.value is not None:
                raise ValueError(f"op '{self.op}' takes no value")
        elif self.value is None:
            raise ValueError(f"op '{self.op}' needs a value")
        elif self.op in LIST_OPS:
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op '{self.op}' needs a non-empty list value")
            if self.op == "between" and len(self.value) != 2:
                raise ValueError("op 'between' needs exactly [low, high]")
        elif isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' needs a single value, not a list")
        if self.op in DURATION_OPS:
            from .common import parse_duration

            parse_duration(str(self.value))
        return self


def _check_bindable(value: Scalar | None) -> None:
    """Numbers are compared in the audience store: integers must fit its 64-bit columns, floats must
    be finite (a 401-digit integer passed validation and then overflowed at run time)."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"integer value out of range ({value.bit_length()} bits): values must lie between "
                         f"{INT64_MIN} and {INT64_MAX}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"number value must be finite (got {value})")


class EventPredicate(StrictModel):
    """Past behaviour: the user did event `name` between `atLeast` and `atMost` times within `within`."""

    name: str = Field(min_length=1)
    atLeast: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    atMost: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    within: Duration | None = Field(default=None, description="Look-back window; all history when absent.")
    where: list[PropertyPredicate] = Field(default_factory=list, description="Filters on event properties.")

    @model_validator(mode="after")
    def _bounds(self) -> EventPredicate:
        if self.atLeast is not None and self.atMost is not None and self.atLeast > self.atMost:
            raise ValueError("atLeast must not exceed atMost")
        return self

    @property
    def min_count(self) -> int:
        """Did the event at least once unless told otherwise."""
        if self.atLeast is not None:
            return self.atLeast
        return 0 if self.atMost is not None else 1


class AllRule(StrictModel):
    all: list[Rule] = Field(min_length=1)


class AnyRule(StrictModel):
    any: list[Rule] = Field(min_length=1)


class NotRule(StrictModel):
    not_: Rule = Field(alias="not")


class PropertyRule(StrictModel):
    property: PropertyPredicate


class EventRule(StrictModel):
    event: EventPredicate


_RULE_KEYS = ("all", "any", "not", "property", "event")


def _rule_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [k for k in _RULE_KEYS if k in value]
        return keys[0] if len(keys) == 1 else None
    for key, cls in (("all", AllRule), ("any", AnyRule), ("not", NotRule), ("property", PropertyRule),
                     ("event", EventRule)):
        if isinstance(value, cls):
            return key
    return None


Rule = Annotated[
    Annotated[AllRule, Tag("all")]
    | Annotated[AnyRule, Tag("any")]
    | Annotated[NotRule, Tag("not")]
    | Annotated[PropertyRule, Tag("property")]
    | Annotated[EventRule, Tag("event")],
    Discriminator(
        _rule_tag,
        custom_error_type="rule_shape",
        custom_error_message="a rule is an object with exactly one of: all, any, not, property, event",
    ),
]

AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


class SegmentSpec(StrictModel):
    rules: Rule


class Segment(DocumentBase):
    kind: Literal["Segment"]
    spec: SegmentSpec
