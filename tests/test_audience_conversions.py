"""Batched conversion counting (AudienceStore.converted_keys, report.count_conversions) against the
per-message rule it replaces — one count_events query per sent message — on DuckDB and PostgreSQL."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
from test_audience_support import (  # noqa: F401  (store fixtures)
    NOW,
    add_events,
    add_users,
    make_campaign,
    phone,
    store,
)

from reconciler.audience import AudienceStore
from reconciler.models.segment import PropertyPredicate
from reconciler.report import Tally, count_conversions
from reconciler.store.base import OutboxRow

DAY = timedelta(days=1)
TICK = timedelta(microseconds=1)
Pair = tuple[str, str, datetime]


def per_message(store: AudienceStore, pairs: Sequence[Pair], event: str, within: timedelta,  # noqa: F811
                where: Sequence[PropertyPredicate], now: datetime) -> set[str]:
    """The rule report.count_conversions applied before batching, one query per message."""
    found: set[str] = set()
    for key, user_id, sent_at in pairs:
        window_end = min(now, sent_at + within)
        if window_end <= sent_at:
            continue
        if store.count_events(user_id, event, now=window_end, since=sent_at, where=where):
            found.add(key)
    return found


def where(*predicates: dict[str, Any]) -> list[PropertyPredicate]:
    return [PropertyPredicate.model_validate(p) for p in predicates]


def event(user: str, at: datetime, name: str = "purchase", **properties: Any) -> dict[str, Any]:
    return {"user_id": user, "name": name, "ts": at.isoformat(), **properties}


def both(store: AudienceStore, pairs: Sequence[Pair], within: timedelta = DAY,  # noqa: F811
         filters: Sequence[PropertyPredicate] = (), now: datetime = NOW, name: str = "purchase") -> set[str]:
    """converted_keys, after checking it agrees with the per-message rule."""
    batched = store.converted_keys(pairs, name, within, filters, now)
    assert batched == per_message(store, pairs, name, within, filters, now)
    return batched


def test_window_edges_are_inclusive_at_both_ends(store: AudienceStore) -> None:  # noqa: F811
    sent = NOW - 3 * DAY
    add_events(store, [event("at-send", sent), event("at-end", sent + DAY), event("after-end", sent + DAY + TICK),
                       event("before-send", sent - TICK)])
    pairs = [(user, user, sent) for user in ("at-send", "at-end", "after-end", "before-send")]
    assert both(store, pairs) == {"at-send", "at-end"}


def test_events_after_now_do_not_count_and_an_unopened_window_never_converts(store: AudienceStore) -> None:  # noqa: F811
    add_events(store, [event("a", NOW), event("b", NOW + TICK), event("c", NOW)])
    pairs = [("a", "a", NOW - timedelta(hours=1)),  # event exactly at now: inside
             ("b", "b", NOW - timedelta(hours=1)),  # event after now: not yet
             ("c", "c", NOW)]  # sent at now: the window has not opened
    assert both(store, pairs) == {"a"}


def test_only_the_goal_event_of_the_same_user_counts(store: AudienceStore) -> None:  # noqa: F811
    sent = NOW - DAY
    add_events(store, [event("u1", sent + timedelta(hours=1), name="viewed"),
                       event("u2", sent + timedelta(hours=1))])
    assert both(store, [("k1", "u1", sent), ("k3", "u3", sent)]) == set()
    assert both(store, [("k2", "u2", sent)]) == {"k2"}


def test_property_filters_apply(store: AudienceStore) -> None:  # noqa: F811
    sent = NOW - 2 * DAY
    add_events(store, [
        {**event("big", sent + timedelta(hours=2)), "properties": {"amount": 120, "cart": {"coupon": "XMAS"}}},
        {**event("small", sent + timedelta(hours=2)), "properties": {"amount": 20, "cart": {"coupon": "XMAS"}}},
        {**event("no-coupon", sent + timedelta(hours=2)), "properties": {"amount": 500}},
    ])
    pairs = [(u, u, sent) for u in ("big", "small", "no-coupon")]
    filters = where({"name": "amount", "op": "gte", "value": 100}, {"name": "cart.coupon", "op": "eq", "value": "XMAS"})
    assert both(store, pairs, filters=filters) == {"big"}
    assert both(store, pairs, filters=where({"name": "cart.coupon", "op": "not_exists"})) == {"no-coupon"}


def test_relative_filters_are_judged_at_each_window_end(store: AudienceStore) -> None:  # noqa: F811
    """`within_last` in a goal's `where` is relative to the message's window end (min(sent + within, now)),
    which differs per message: batching must not replace it with one shared `now`."""
    early, late = NOW - 5 * DAY, NOW - timedelta(hours=6)
    paid = NOW - 4 * DAY + timedelta(hours=1)
    add_events(store, [{**event("e", early + timedelta(hours=1)), "properties": {"paid_at": paid.isoformat()}},
                       {**event("l", late + timedelta(hours=1)), "properties": {"paid_at": paid.isoformat()}}])
    pairs = [("early", "e", early), ("late", "l", late)]
    filters = where({"name": "paid_at", "op": "within_last", "value": "2d"})
    # early's window ends at early + 2d = NOW - 3d: paid 23 h before → inside; late's window ends at NOW: 4 d ago → outside
    assert both(store, pairs, within=2 * DAY, filters=filters) == {"early"}
    assert both(store, pairs, within=2 * DAY, filters=where({"name": "paid_at", "op": "more_than_ago", "value": "2d"})
                ) == {"late"}


def test_the_same_user_in_several_runs_is_judged_per_message(store: AudienceStore) -> None:  # noqa: F811
    first, second = NOW - 4 * DAY, NOW - 2 * DAY
    add_events(store, [event("u", first + timedelta(hours=12))])
    pairs = [("run1", "u", first), ("run2", "u", second), ("run2-again", "u", second)]
    assert both(store, pairs) == {"run1"}


def test_many_pairs_in_small_chunks_match_the_per_message_rule(store: AudienceStore) -> None:  # noqa: F811
    rng = random.Random(20261201)
    users = [f"u{i}" for i in range(40)]
    add_users(store, [{"id": u, "phone": phone(i)} for i, u in enumerate(users)])
    add_events(store, [{**event(rng.choice(users), NOW - timedelta(minutes=rng.randrange(-600, 8000)),
                                name=rng.choice(["purchase", "viewed"])),
                        "properties": {"amount": rng.randrange(0, 200)}} for _ in range(300)])
    pairs = [(str(i), rng.choice(users), NOW - timedelta(minutes=rng.randrange(0, 7000))) for i in range(120)]
    filters = where({"name": "amount", "op": "lt", "value": 150})
    expected = per_message(store, pairs, "purchase", DAY, filters, NOW)
    assert 0 < len(expected) < len(pairs)  # the data exercises both outcomes
    for chunk_size in (1, 7, 5000):
        assert store.converted_keys(pairs, "purchase", DAY, filters, NOW, chunk_size=chunk_size) == expected


def test_no_pairs_means_no_query_and_no_conversions(store: AudienceStore) -> None:  # noqa: F811
    assert store.converted_keys([], "purchase", DAY, (), NOW) == set()


def _sent(row_id: int, user: str, run_id: int | None, sent_at: datetime | None) -> OutboxRow:
    return OutboxRow(id=row_id, idempotency_key=f"k{row_id}", run_id=run_id, campaign="c", spec_hash=None,
                     user_id=user, phone=phone(row_id), context={}, not_before=NOW, expires_at=None, status="sent",
                     skip_reason=None, provider="p", provider_message_id=None, attempts=1, claim_count=1,
                     last_error=None, claimed_by=None, lease_until=None, segments=1, cost=None,
                     delivery_status=None, delivery_error_code=None, delivery_updated_at=None, created_at=NOW,
                     updated_at=NOW, sent_at=sent_at)


def test_count_conversions_totals_and_runs(store: AudienceStore) -> None:  # noqa: F811
    campaign = make_campaign(conversion={"event": "purchase", "within": "1d",
                                         "where": [{"name": "amount", "op": "gt", "value": 10}]})
    first, second = NOW - 4 * DAY, NOW - 2 * DAY
    add_events(store, [{**event("a", first + timedelta(hours=1)), "properties": {"amount": 50}},
                       {**event("a", second + timedelta(hours=1)), "properties": {"amount": 5}},
                       {**event("b", second + timedelta(hours=3)), "properties": {"amount": 80}}])
    rows = [_sent(1, "a", 1, first), _sent(2, "b", 1, first), _sent(3, "a", 2, second), _sent(4, "b", 2, second),
            _sent(5, "b", None, second), _sent(6, "b", 2, None)]
    total, by_run = Tally(), defaultdict[int, Tally](Tally)
    count_conversions(rows, store, campaign, NOW, total, by_run)
    assert total.converted == 3  # row 1 (a, run 1), row 4 (b, run 2), row 5 (b, live)
    assert {run: tally.converted for run, tally in by_run.items()} == {1: 1, 2: 1}


@pytest.mark.parametrize("within", [timedelta(hours=1), 3 * DAY])
def test_windows_longer_than_the_time_since_sending_end_at_now(store: AudienceStore,  # noqa: F811
                                                                within: timedelta) -> None:
    sent = NOW - 2 * timedelta(hours=1)
    add_events(store, [event("u", sent + timedelta(minutes=90))])
    assert both(store, [("k", "u", sent)], within=within) == ({"k"} if within > timedelta(minutes=90) else set())
