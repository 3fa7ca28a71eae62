"""Numbers and durations are bounded where they are declared, and the compiler never overflows.

Validation refuses what a store or datetime cannot hold; values that bypass validation (built in
code) fail in the compiler with UnbindableValueError, a PredicateError, never an OverflowError.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from test_audience_support import NOW, add_events, add_users, phone, store  # noqa: F401  (store fixture)

from reconciler.audience import AudienceStore
from reconciler.audience.compiler import UnbindableValueError
from reconciler.audience.semantics import PredicateError, predicate_holds
from reconciler.models.common import INT64_MAX, INT64_MIN, MAX_DURATION, parse_duration
from reconciler.models.segment import EventPredicate, EventRule, PropertyPredicate, PropertyRule


@pytest.mark.parametrize(("text", "expected"), [
    ("3650d", MAX_DURATION),
    ("521w3d", timedelta(weeks=521, days=3)),
    ("-3650d", -MAX_DURATION),
    ("0000000000000000000000001s", timedelta(seconds=1)),
])
def test_durations_up_to_ten_years_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["3650d1s", "-3650d1s", "999999999999999w", "1" + "0" * 5000 + "s", "87601h"])
def test_longer_durations_are_refused_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"is longer than the maximum of 3650d \(10 years\)") as info:
        parse_duration(text)
    assert len(str(info.value)) < 200, "a hostile value is cut short in the message"


@pytest.mark.parametrize("value", [INT64_MIN, INT64_MAX, 0, -1, 1.5e308, -1.5e308])
def test_extreme_but_bindable_values_run_on_every_store(store: AudienceStore, value: Any) -> None:  # noqa: F811
    """The largest values validation lets through compile, bind and run on DuckDB and PostgreSQL."""
    add_users(store, [{"id": "u", "phone": phone(1), "score": 1}])
    for op in ("eq", "gt", "lte"):
        pred = PropertyPredicate.model_validate({"name": "score", "op": op, "value": value})
        store.count(PropertyRule(property=pred), NOW)
    pred = PropertyPredicate.model_validate({"name": "score", "op": "in", "value": [value, 1]})
    assert store.count(PropertyRule(property=pred), NOW) == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=-(2**70), max_value=2**70) | st.floats())
def test_validation_admits_only_bindable_numbers(value: int | float) -> None:
    """Any number either fails validation or fits a 64-bit integer / a finite float."""
    try:
        PropertyPredicate.model_validate({"name": "score", "op": "gte", "value": value})
    except ValidationError as exc:
        assert "out of range" in str(exc) or "finite" in str(exc)
        return
    assert isinstance(value, float) or INT64_MIN <= value <= INT64_MAX


def _unchecked_property(op: str, value: Any) -> PropertyRule:
    """A predicate built in code, bypassing validation (as a future caller might)."""
    return PropertyRule.model_construct(property=PropertyPredicate.model_construct(name="score", op=op, value=value))


@pytest.mark.parametrize(("rule", "message"), [
    (_unchecked_property("eq", 10**400), "number too large to compare"),
    (_unchecked_property("gt", 10**400), "number too large to compare"),
    (_unchecked_property("in", [1, float("inf")]), "not finite"),
    (_unchecked_property("lt", float("nan")), "not finite"),
    (EventRule.model_construct(event=EventPredicate.model_construct(
        name="buy", atLeast=10**30, atMost=None, within=None, where=[])), "64-bit range"),
    (EventRule.model_construct(event=EventPredicate.model_construct(
        name="buy", atLeast=1, atMost=None, within=timedelta(days=999_999_999), where=[])), "outside the calendar"),
])
def test_unbindable_values_raise_a_predicate_error(store: AudienceStore, rule: Any, message: str) -> None:  # noqa: F811
    add_users(store, [{"id": "u", "phone": phone(1), "score": 1}])
    add_events(store, [{"user_id": "u", "name": "buy", "ts": "2026-11-30T00:00:00Z"}])
    with pytest.raises(UnbindableValueError, match=message) as info:
        store.count(rule, NOW)
    assert isinstance(info.value, PredicateError)


@pytest.mark.parametrize(("op", "value", "holds"), [
    ("gt", 5, True), ("lt", 5, False), ("eq", 7, False), ("between", [1, 10], False), ("exists", None, True),
])
def test_python_semantics_compare_an_oversize_stored_number_without_overflow(op: str, value: Any, holds: bool) -> None:
    """A property stored before ingest refused such numbers: live triggers compare it as +infinity."""
    pred = PropertyPredicate.model_validate({"name": "score", "op": op, "value": value})
    assert predicate_holds(pred, 10**400, NOW) is holds
    assert predicate_holds(pred, -(10**400), NOW) is (op == "exists" or (op == "lt"))
