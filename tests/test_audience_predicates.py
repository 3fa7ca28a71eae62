"""Every predicate type, on DuckDB and PostgreSQL, checked against the Python semantics too."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_audience_support import (  # noqa: F401  (store fixtures)
    NOW,
    add_events,
    add_users,
    duck,
    ids,
    phone,
    rule,
    store,
)

from reconciler.audience import AudienceStore, event_matches, open_audience_store, parse_user
from reconciler.audience.semantics import PredicateError, predicate_holds, user_field_value
from reconciler.models.campaign import EventMatch
from reconciler.models.segment import PropertyPredicate

USERS: list[dict[str, Any]] = [
    {"id": "num", "phone": phone(1), "country": "US", "timezone": "America/New_York", "created_at": "2026-11-25T00:00:00Z",
     "age": 30, "score": "41", "ratio": 1.5, "plan": "pro", "name": "Ann"},
    {"id": "str", "phone": phone(2), "timezone": "Europe/Paris", "created_at": "2026-06-01T00:00:00Z",
     "plan": "free", "name": "Zoë", "city": "Paris", "age": 45},
    {"id": "bool", "phone": "+447911123456", "created_at": "2025-01-01T00:00:00Z", "vip": True, "plan": "enterprise",
     "age": "n/a"},
    {"id": "arr", "phone": "+919876543210", "created_at": "2026-11-30T12:00:00Z", "tags": ["a", "vip", 3],
     "name": "Bob"},
    {"id": "date", "phone": phone(5), "created_at": "2026-10-01T00:00:00Z", "signup": "2026-11-20T00:00:00Z",
     "birthday": "2000-05-01", "renewal": "2027-01-15T09:00:00+05:30"},
    {"id": "nested", "phone": phone(6), "created_at": "2026-11-01T00:00:00Z", "address": {"city": "Berlin", "zip": 10115}},
    {"id": "null", "phone": phone(7), "created_at": "2026-11-01T00:00:00Z", "plan": None, "vip": False},
    {"id": "empty", "phone": phone(8)},
]
# Never selected, whatever they match:
UNREACHABLE: list[dict[str, Any]] = [
    {"id": "optout", "phone": phone(9), "opted_out": True, "plan": "pro", "age": 30, "vip": True},
    {"id": "badphone", "phone": "12345", "plan": "pro", "age": 30, "vip": True},
    {"id": "nophone", "plan": "pro", "age": 30},
]
ALL = {u["id"] for u in USERS}

PROPERTY_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"name": "plan", "op": "eq", "value": "pro"}, {"num"}),
    ({"name": "age", "op": "eq", "value": 30}, {"num"}),
    ({"name": "score", "op": "eq", "value": 41}, {"num"}),  # numeric string compares as a number
    ({"name": "ratio", "op": "eq", "value": 1.5}, {"num"}),
    ({"name": "vip", "op": "eq", "value": True}, {"bool"}),
    ({"name": "vip", "op": "eq", "value": False}, {"null"}),
    ({"name": "plan", "op": "ne", "value": "pro"}, ALL - {"num"}),  # absent counts as "not equal"
    ({"name": "plan", "op": "in", "value": ["free", "enterprise"]}, {"str", "bool"}),
    ({"name": "age", "op": "in", "value": [30, 45, "n/a"]}, {"num", "str", "bool"}),
    ({"name": "plan", "op": "not_in", "value": ["free", "enterprise"]}, ALL - {"str", "bool"}),
    ({"name": "age", "op": "gt", "value": 30}, {"str"}),
    ({"name": "age", "op": "gte", "value": 30}, {"num", "str"}),
    ({"name": "age", "op": "lt", "value": 45}, {"num"}),
    ({"name": "age", "op": "lte", "value": 45}, {"num", "str"}),
    ({"name": "score", "op": "gt", "value": 40.5}, {"num"}),
    ({"name": "age", "op": "between", "value": [31, 50]}, {"str"}),
    ({"name": "name", "op": "gt", "value": "B"}, {"str", "arr"}),  # text order (bytes): Bob, Zoë > B
    ({"name": "signup", "op": "gt", "value": "2026-11-01"}, {"date"}),  # ISO value: compared as dates
    ({"name": "renewal", "op": "between", "value": ["2027-01-15T00:00:00Z", "2027-01-15T04:00:00Z"]}, {"date"}),
    ({"name": "vip", "op": "exists"}, {"bool", "null"}),
    ({"name": "plan", "op": "exists"}, {"num", "str", "bool"}),  # a JSON null is absent
    ({"name": "plan", "op": "not_exists"}, ALL - {"num", "str", "bool"}),
    ({"name": "address.city", "op": "eq", "value": "Berlin"}, {"nested"}),
    ({"name": "address.zip", "op": "gte", "value": 10000}, {"nested"}),
    ({"name": "address", "op": "exists"}, {"nested"}),
    ({"name": "city", "op": "contains", "value": "ari"}, {"str"}),
    ({"name": "tags", "op": "contains", "value": "vip"}, {"arr"}),
    ({"name": "tags", "op": "contains", "value": 3}, {"arr"}),
    ({"name": "tags", "op": "contains", "value": "v"}, set()),  # arrays match whole elements
    ({"name": "name", "op": "starts_with", "value": "Zo"}, {"str"}),
    ({"name": "name", "op": "contains", "value": "ë"}, {"str"}),
    ({"name": "signup", "op": "before", "value": "2026-11-21"}, {"date"}),
    ({"name": "signup", "op": "after", "value": "2026-11-21"}, set()),
    ({"name": "birthday", "op": "before", "value": "2001-01-01T00:00:00Z"}, {"date"}),
    ({"name": "renewal", "op": "after", "value": "2027-01-15T03:00:00Z"}, {"date"}),  # 09:00+05:30 = 03:30Z
    ({"name": "signup", "op": "within_last", "value": "30d"}, {"date"}),
    ({"name": "signup", "op": "within_last", "value": "7d"}, set()),
    ({"name": "birthday", "op": "more_than_ago", "value": "365d"}, {"date"}),
    ({"name": "renewal", "op": "within_last", "value": "3650d"}, set()),  # in the future: not "within the last"
    # Built-in user fields
    ({"name": "id", "op": "in", "value": ["num", "arr", "ghost"]}, {"num", "arr"}),
    ({"name": "phone", "op": "starts_with", "value": "+44"}, {"bool"}),
    ({"name": "country", "op": "eq", "value": "IN"}, {"arr"}),  # derived from the phone number
    ({"name": "country", "op": "in", "value": ["US"]}, ALL - {"bool", "arr"}),
    ({"name": "timezone", "op": "eq", "value": "Europe/Paris"}, {"str"}),
    ({"name": "timezone", "op": "not_exists"}, ALL - {"num", "str"}),
    ({"name": "created_at", "op": "within_last", "value": "7d"}, {"num", "arr", "empty"}),  # empty: created now
    ({"name": "created_at", "op": "more_than_ago", "value": "60d"}, {"str", "bool", "date"}),
    ({"name": "created_at", "op": "before", "value": "2026-01-01"}, {"bool"}),
    ({"name": "created_at", "op": "after", "value": "2026-11-29"}, {"arr", "empty"}),
    ({"name": "created_at", "op": "between", "value": ["2026-10-01", "2026-11-01T00:00:00Z"]},
     {"date", "nested", "null"}),
    ({"name": "created_at", "op": "eq", "value": "2026-06-01T00:00:00Z"}, {"str"}),
]


def _python_ids(pred: PropertyPredicate) -> set[str]:
    """The same predicate evaluated by the Python semantics over the same users."""
    matched = set()
    for raw in USERS:
        record = parse_user(raw)
        user = {"id": record.id, "phone": record.phone, "timezone": record.timezone, "country": record.country,
                "created_at": record.created_at or NOW, "properties": record.properties}
        value = user_field_value(pred.name, user)
        if predicate_holds(pred, value, NOW, timestamp_field=pred.name == "created_at"):
            matched.add(record.id)
    return matched


@pytest.fixture
def populated(store: AudienceStore) -> AudienceStore:  # noqa: F811
    add_users(store, USERS + UNREACHABLE)
    return store


@pytest.mark.parametrize(("predicate", "expected"), PROPERTY_CASES,
                         ids=[f"{c[0]['name']}-{c[0]['op']}-{i}" for i, c in enumerate(PROPERTY_CASES)])
def test_property_predicate(populated: AudienceStore, predicate: dict[str, Any], expected: set[str]) -> None:
    compiled = rule({"property": predicate})
    assert ids(populated, compiled) == expected
    assert populated.count(compiled, NOW) == len(expected)
    assert _python_ids(PropertyPredicate.model_validate(predicate)) == expected


def test_every_operator_is_covered() -> None:
    from typing import get_args

    from reconciler.models.segment import PropertyOp

    covered = {case[0]["op"] for case in PROPERTY_CASES}
    assert covered == set(get_args(PropertyOp))


def test_unreachable_users_are_never_selected(populated: AudienceStore) -> None:
    assert ids(populated, None) == ALL
    assert populated.count(None, NOW) == len(ALL)
    everyone_pro = rule({"property": {"name": "plan", "op": "eq", "value": "pro"}})
    assert ids(populated, everyone_pro) == {"num"}


@pytest.mark.parametrize(("predicate", "message"), [
    ({"name": "created_at", "op": "contains", "value": "2026"}, "does not apply"),
    ({"name": "created_at", "op": "eq", "value": "yesterday"}, "ISO 8601"),
    ({"name": "signup", "op": "before", "value": "soon"}, "ISO 8601"),
    ({"name": "vip", "op": "gt", "value": True}, "booleans"),
])
def test_meaningless_predicates_are_errors(duck: AudienceStore, predicate: dict[str, Any], message: str) -> None:  # noqa: F811
    with pytest.raises(PredicateError, match=message):
        duck.count(rule({"property": predicate}), NOW)


def _purchases(user: str, *days_ago_and_amount: tuple[float, int]) -> list[dict[str, Any]]:
    return [{"user_id": user, "name": "purchase", "ts": (NOW - timedelta(days=d)).isoformat(),
             "properties": {"amount": amount, "sku": f"sku-{amount}"}} for d, amount in days_ago_and_amount]


@pytest.fixture
def with_events(populated: AudienceStore) -> AudienceStore:
    add_events(populated,
               _purchases("num", (1, 10), (2, 20), (3, 30))
               + _purchases("str", (5, 100), (40, 5))
               + _purchases("arr", (60, 50))
               + _purchases("date", (-1, 70))  # tomorrow: not yet happened at NOW
               + _purchases("optout", (1, 10), (2, 10))
               + [{"user_id": "bool", "name": "app_launched", "ts": (NOW - timedelta(hours=2)).isoformat()}])
    return populated


EVENT_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"name": "purchase"}, {"num", "str", "arr"}),  # at least once, all history up to now
    ({"name": "purchase", "within": "30d"}, {"num", "str"}),
    ({"name": "purchase", "atLeast": 2, "within": "30d"}, {"num"}),
    ({"name": "purchase", "atLeast": 2}, {"num", "str"}),
    ({"name": "purchase", "atMost": 1, "within": "30d"}, ALL - {"num"}),  # includes never
    ({"name": "purchase", "atLeast": 1, "atMost": 1, "within": "30d"}, {"str"}),
    ({"name": "purchase", "atMost": 0, "within": "30d"}, ALL - {"num", "str"}),  # did not
    ({"name": "purchase", "atMost": 0}, ALL - {"num", "str", "arr"}),
    ({"name": "purchase", "atLeast": 0}, ALL),
    ({"name": "purchase", "where": [{"name": "amount", "op": "gte", "value": 50}]}, {"str", "arr"}),
    ({"name": "purchase", "atLeast": 2, "where": [{"name": "amount", "op": "lt", "value": 25}]}, {"num"}),
    ({"name": "purchase", "where": [{"name": "sku", "op": "starts_with", "value": "sku-1"}]}, {"num", "str"}),
    ({"name": "purchase", "atMost": 0, "where": [{"name": "amount", "op": "gt", "value": 25}]},
     ALL - {"num", "str", "arr"}),
    ({"name": "app_launched", "within": "1h"}, set()),
    ({"name": "app_launched", "within": "3h"}, {"bool"}),
]


@pytest.mark.parametrize(("predicate", "expected"), EVENT_CASES, ids=[str(i) for i in range(len(EVENT_CASES))])
def test_event_predicate(with_events: AudienceStore, predicate: dict[str, Any], expected: set[str]) -> None:
    compiled = rule({"event": predicate})
    assert ids(with_events, compiled) == expected
    assert with_events.count(compiled, NOW) == len(expected)
    # the per-user form (live triggers) agrees with the set form
    assert {uid for uid in ALL | {"optout"} if with_events.user_qualifies(compiled, uid, NOW)} == expected


def test_relative_windows_follow_the_now_passed_in(with_events: AudienceStore) -> None:
    compiled = rule({"event": {"name": "purchase", "within": "2d"}})
    assert ids(with_events, compiled, NOW) == {"num"}
    assert ids(with_events, compiled, NOW + timedelta(days=2)) == {"date"}  # only tomorrow's purchase remains
    assert ids(with_events, compiled, NOW + timedelta(days=30)) == set()


COMBINATIONS: list[tuple[dict[str, Any], set[str]]] = [
    ({"all": [{"property": {"name": "country", "op": "eq", "value": "US"}},
              {"event": {"name": "purchase", "atLeast": 1, "within": "30d"}}]}, {"num", "str"}),
    ({"any": [{"property": {"name": "vip", "op": "eq", "value": True}},
              {"property": {"name": "tags", "op": "contains", "value": "vip"}}]}, {"bool", "arr"}),
    ({"not": {"property": {"name": "plan", "op": "exists"}}}, ALL - {"num", "str", "bool"}),
    ({"all": [{"not": {"event": {"name": "purchase"}}},
              {"any": [{"property": {"name": "created_at", "op": "more_than_ago", "value": "30d"}},
                       {"property": {"name": "address.city", "op": "eq", "value": "Berlin"}}]}]},
     {"bool", "date", "nested", "null"}),
    ({"not": {"not": {"property": {"name": "age", "op": "gt", "value": 40}}}}, {"str"}),
]


@pytest.mark.parametrize(("rules", "expected"), COMBINATIONS, ids=[str(i) for i in range(len(COMBINATIONS))])
def test_combinations(with_events: AudienceStore, rules: dict[str, Any], expected: set[str]) -> None:
    assert ids(with_events, rule(rules)) == expected
    assert {uid for uid in ALL if with_events.user_qualifies(rule(rules), uid, NOW)} == expected


def test_rules_compile_to_bound_parameters(duck: AudienceStore) -> None:  # noqa: F811
    from reconciler.audience import AudienceQuery

    hostile = "x'); DROP TABLE users; --"
    compiled = rule({"all": [{"property": {"name": "plan", "op": "eq", "value": hostile}},
                             {"event": {"name": hostile, "where": [{"name": "k", "op": "contains", "value": hostile}]}}]})
    sql, params = duck.sql_for(AudienceQuery(compiled, NOW))
    assert hostile not in sql
    assert hostile in params
    add_users(duck, [{"id": "u", "phone": phone(1), "plan": hostile}])
    assert duck.count(compiled, NOW) == 0
    assert duck.count(None, NOW) == 1


# -- live trigger matching (Python) shares the semantics ---------------------------------------


def test_event_matches_name_and_filters() -> None:
    match = EventMatch.model_validate({"name": "added_to_cart", "where": [
        {"name": "value", "op": "gte", "value": 20}, {"name": "currency", "op": "in", "value": ["USD", "EUR"]}]})
    assert event_matches(match, "added_to_cart", {"value": 25, "currency": "USD"})
    assert event_matches(match, "added_to_cart", {"value": "20", "currency": "EUR"})
    assert not event_matches(match, "added_to_cart", {"value": 19.99, "currency": "USD"})
    assert not event_matches(match, "added_to_cart", {"currency": "USD"})
    assert not event_matches(match, "purchase", {"value": 25, "currency": "USD"})


def test_event_matches_relative_dates_need_now() -> None:
    match = EventMatch.model_validate({"name": "e", "where": [{"name": "at", "op": "within_last", "value": "1h"}]})
    props = {"at": (NOW - timedelta(minutes=30)).isoformat()}
    assert event_matches(match, "e", props, now=NOW)
    assert not event_matches(match, "e", props, now=NOW + timedelta(hours=2))
    with pytest.raises(PredicateError):
        event_matches(match, "e", props)


BUILTINS = ("id", "phone", "country", "timezone", "created_at")
EVENT_WHERE_CASES = [case for case in PROPERTY_CASES if case[0]["name"] not in BUILTINS]


@pytest.mark.parametrize(("predicate", "expected"), EVENT_WHERE_CASES,
                         ids=[str(i) for i in range(len(EVENT_WHERE_CASES))])
def test_event_where_uses_the_same_semantics_in_sql_and_python(
        duck: AudienceStore, predicate: dict[str, Any], expected: set[str]) -> None:  # noqa: F811
    """Each user's properties become one event's properties; SQL event filters == event_matches."""
    add_users(duck, [{"id": u["id"], "phone": phone(i + 1)} for i, u in enumerate(USERS)])
    events = [{"user_id": u["id"], "name": "e", "ts": NOW.isoformat(),
               "properties": {k: v for k, v in u.items() if k not in BUILTINS}} for u in USERS]
    add_events(duck, events)
    pred = PropertyPredicate.model_validate(predicate)
    match = EventMatch(name="e", where=[pred])
    python = {e["user_id"] for e in events if event_matches(match, "e", e["properties"], now=NOW)}
    sql = ids(duck, rule({"event": {"name": "e", "where": [predicate]}}))
    assert sql == python == expected


# -- property-based parity between the compiler and the Python semantics ----------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False, allow_infinity=False),
    st.sampled_from(["", "a", "ab", "B", "10", "2.5", "-3", "true", "2026-11-30", "2026-12-01T07:00:00Z",
                     "2025-01-01T00:00:00+02:00", "2026-13-01", "zoë"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))
predicates = st.one_of(
    st.builds(lambda op, v: {"op": op, "value": v},
              st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "contains", "starts_with"]),
              st.one_of(st.integers(-5, 5), st.sampled_from(["a", "B", "10", "2026-11-30", "true"]))),
    st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["in", "not_in"]),
              st.lists(st.one_of(st.integers(-5, 5), st.sampled_from(["a", "true", "10"]), st.booleans()),
                       min_size=1, max_size=3)),
    st.builds(lambda lo, hi: {"op": "between", "value": [lo, hi]}, st.integers(-5, 0), st.integers(0, 5)),
    st.builds(lambda op: {"op": op}, st.sampled_from(["exists", "not_exists"])),
    st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["before", "after"]),
              st.sampled_from(["2026-11-30", "2026-12-01T07:30:00Z"])),
    st.builds(lambda op, v: {"op": op, "value": v}, st.sampled_from(["within_last", "more_than_ago"]),
              st.sampled_from(["1h", "2d", "400d"])),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.lists(values, min_size=1, max_size=6), predicate=predicates)
def test_compiler_agrees_with_python_semantics(stored: list[Any], predicate: dict[str, Any]) -> None:
    pred = PropertyPredicate.model_validate({"name": "p", **predicate})
    users = [{"id": f"u{i}", "phone": phone(i + 1), "properties": {} if v is None else {"p": v}}
             for i, v in enumerate(stored)]
    with open_audience_store("duckdb:///:memory:") as db:
        add_users(db, users)
        try:
            expected = {u["id"] for u in users if predicate_holds(pred, u["properties"].get("p"), NOW)}
        except PredicateError:
            with pytest.raises(PredicateError):
                db.count(rule({"property": pred.model_dump(exclude_none=True)}), NOW)
            return
        assert ids(db, rule({"property": pred.model_dump(exclude_none=True)})) == expected
