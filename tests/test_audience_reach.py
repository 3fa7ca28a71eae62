"""Reach %, subset (random by seed / first N / live), daily and run limits, safety gate, caps."""

from __future__ import annotations

from typing import Any

import pytest
from test_audience_support import (  # noqa: F401  (store fixtures)
    NOW,
    add_users,
    duck,
    make_campaign,
    make_segment,
    make_settings,
    make_state,
    phone,
    store,
)

from reconciler.alerts import safety_block_alert
from reconciler.audience import (
    AudienceStore,
    LiveAllowance,
    Member,
    UnknownSegmentError,
    campaign_rules,
    in_reach_sample,
    live_allowance,
    safety_check,
    select_audience,
    user_in_audience,
)
from reconciler.audience.semantics import subset_key
from reconciler.models.segment import AllRule

N_USERS = 200


def _users(n: int = N_USERS) -> list[dict[str, Any]]:
    return [{"id": f"user-{i:04d}", "phone": phone(i), "created_at": f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}Z",
             "tier": "gold" if i % 4 == 0 else "basic"} for i in range(n)]


@pytest.fixture
def audience(store: AudienceStore) -> AudienceStore:  # noqa: F811
    add_users(store, _users())
    return store


def _members(selection: Any, batch_size: int = 16) -> list[Member]:
    return [m for batch in selection.members(batch_size) for m in batch]


def test_reach_percent_is_a_stable_hash_sample(audience: AudienceStore) -> None:
    campaign = make_campaign("promo", audience={"reachPercent": 25})
    state = make_state(campaign)
    first = select_audience(audience, campaign, state, NOW, seed=1)
    again = select_audience(audience, campaign, state, NOW, seed=2)
    chosen = {m.user_id for m in _members(first)}
    assert first.qualified == N_USERS
    assert first.in_reach == len(chosen) == first.target
    assert 25 <= first.in_reach <= 75  # about a quarter of 200
    assert chosen == {m.user_id for m in _members(again)}  # same users across runs, whatever the seed
    assert chosen == {u["id"] for u in _users() if in_reach_sample("promo", u["id"], 25)}  # Python agrees with SQL
    other = select_audience(audience, make_campaign("other", audience={"reachPercent": 25}), state, NOW, seed=1)
    assert {m.user_id for m in _members(other)} != chosen  # the sample depends on the campaign


def test_reach_percent_grows_monotonically(duck: AudienceStore) -> None:  # noqa: F811
    add_users(duck, _users())
    state = make_state()
    previous: set[str] = set()
    for percent in (10, 30, 60, 100):
        campaign = make_campaign("promo", audience={"reachPercent": percent})
        current = {m.user_id for m in _members(select_audience(duck, campaign, state, NOW, seed=0))}
        assert previous <= current
        previous = current
    assert len(previous) == N_USERS


def test_random_subset_is_exact_and_reproducible_by_seed(audience: AudienceStore) -> None:
    campaign = make_campaign("coupons", audience={"subset": {"limit": 30}})
    state = make_state(campaign)
    a = select_audience(audience, campaign, state, NOW, seed=42)
    b = select_audience(audience, campaign, state, NOW, seed=42)
    c = select_audience(audience, campaign, state, NOW, seed=7)
    picked = [m.user_id for m in _members(a)]
    assert a.target == len(picked) == 30 and a.order == "random"
    assert picked == [m.user_id for m in _members(b)]
    assert set(picked) != {m.user_id for m in _members(c)}
    expected = sorted((u["id"] for u in _users()), key=lambda uid: (subset_key(42, uid), uid))[:30]
    assert picked == expected  # the documented order: md5(seed:user) — engine independent
    assert any(limit.name == "subset" and limit.binding for limit in a.limits)


def test_subset_seed_in_the_campaign_wins(audience: AudienceStore) -> None:
    campaign = make_campaign("coupons", audience={"subset": {"limit": 10, "seed": 99}})
    state = make_state(campaign)
    runs = [{m.user_id for m in _members(select_audience(audience, campaign, state, NOW, seed=s))} for s in (1, 2)]
    assert runs[0] == runs[1]


def test_first_n_subset_takes_the_earliest_users(audience: AudienceStore) -> None:
    campaign = make_campaign("early", audience={"subset": {"limit": 5, "mode": "first"}})
    selection = select_audience(audience, campaign, make_state(campaign), NOW, seed=3)
    assert selection.order == "created"
    assert [m.user_id for m in _members(selection)] == [f"user-{i:04d}" for i in range(5)]


def test_subset_larger_than_audience_sends_to_all(audience: AudienceStore) -> None:
    campaign = make_campaign("c", audience={"rules": {"property": {"name": "tier", "op": "eq", "value": "gold"}},
                                            "subset": {"limit": 1000}})
    selection = select_audience(audience, campaign, make_state(campaign), NOW, seed=1)
    assert selection.qualified == selection.target == 50
    assert selection.order == "none"
    assert len(_members(selection)) == 50


def test_live_subset_counts_what_was_sent_and_then_ends(duck: AudienceStore) -> None:  # noqa: F811
    add_users(duck, _users(20))
    campaign = make_campaign("first-buyers", type="live", audience={"subset": {"limit": 10}})
    state = make_state(campaign)
    fresh = select_audience(duck, campaign, state, NOW, seed=0, sent_total=0)
    assert (fresh.remaining, fresh.complete) == (10, False)
    later = select_audience(duck, campaign, state, NOW, seed=0, sent_total=7)
    assert (later.remaining, later.complete) == (3, False)
    done = select_audience(duck, campaign, state, NOW, seed=0, sent_total=10)
    assert (done.remaining, done.complete) == (0, True)
    assert _members(done) == []
    assert live_allowance(campaign, already_sent_today=0, sent_total=7) == LiveAllowance(3, False)
    daily = make_campaign("d", type="live", audience={"subset": {"limit": 10}, "dailyLimit": 2})
    assert live_allowance(daily, already_sent_today=2, sent_total=5) == LiveAllowance(0, False)
    assert live_allowance(make_campaign("free", type="live"), already_sent_today=9, sent_total=9) == \
        LiveAllowance(None, False)


def test_daily_limit_counts_what_was_already_sent_today(audience: AudienceStore) -> None:
    campaign = make_campaign("daily", audience={"dailyLimit": 50})
    state = make_state(campaign)
    morning = select_audience(audience, campaign, state, NOW, seed=1)
    assert morning.target == 50 and len(_members(morning)) == 50
    evening = select_audience(audience, campaign, state, NOW, seed=1, already_sent_today=45)
    assert evening.target == 5
    full = select_audience(audience, campaign, state, NOW, seed=1, already_sent_today=60)
    assert full.target == 0 and _members(full) == []


def test_run_limit_caps_each_run(audience: AudienceStore) -> None:
    campaign = make_campaign("runs", audience={"runLimit": 40, "dailyLimit": 100})
    selection = select_audience(audience, campaign, make_state(campaign), NOW, seed=5, already_sent_today=30)
    assert selection.target == 40
    assert {limit.name: limit.binding for limit in selection.limits} == {"dailyLimit": False, "runLimit": True}
    assert len({m.user_id for m in _members(selection)}) == 40


def test_limits_combine_smallest_wins(audience: AudienceStore) -> None:
    campaign = make_campaign("all", audience={"reachPercent": 50, "subset": {"limit": 60}, "runLimit": 30,
                                              "dailyLimit": 45})
    selection = select_audience(audience, campaign, make_state(campaign), NOW, seed=5, already_sent_today=20)
    assert selection.target == min(selection.in_reach, 60, 30, 25) == 25
    members = _members(selection)
    assert len(members) == 25
    assert all(in_reach_sample("all", m.user_id, 50) for m in members)


def test_segment_and_inline_rules_are_anded(audience: AudienceStore) -> None:
    segment = make_segment("gold", {"property": {"name": "tier", "op": "eq", "value": "gold"}})
    campaign = make_campaign("c", audience={"segment": "gold", "rules": {
        "property": {"name": "id", "op": "starts_with", "value": "user-00"}}})
    state = make_state(campaign, segments=(segment,))
    rules = campaign_rules(campaign, state)
    assert isinstance(rules, AllRule) and len(rules.all) == 2
    selection = select_audience(audience, campaign, state, NOW, seed=0)
    assert {m.user_id for m in _members(selection)} == {f"user-{i:04d}" for i in range(0, 100, 4)}
    assert user_in_audience(audience, campaign, state, "user-0004", NOW)
    assert not user_in_audience(audience, campaign, state, "user-0005", NOW)
    assert not user_in_audience(audience, campaign, state, "user-0104", NOW)


def test_unknown_segment_is_an_error() -> None:
    campaign = make_campaign("c", audience={"segment": "missing"})
    with pytest.raises(UnknownSegmentError, match="missing"):
        campaign_rules(campaign, make_state(campaign))


# -- safety limit ------------------------------------------------------------------------------


def test_safety_limit_blocks_the_run(audience: AudienceStore) -> None:
    campaign = make_campaign("big", audience={"subset": {"limit": 10}, "safetyLimit": 150})
    selection = select_audience(audience, campaign, make_state(campaign), NOW, seed=1)
    assert selection.blocked
    assert selection.safety.limit == 150 and selection.safety.qualified == N_USERS
    assert "safety limit of 150" in selection.safety.reason
    assert _members(selection) == []  # nothing is sent
    alert = safety_block_alert(campaign, selection.safety, run_id="run-1")
    assert alert.owner == "owner@example.com" and "200 users qualify" in alert.text


def test_global_default_safety_limit_applies(audience: AudienceStore) -> None:
    campaign = make_campaign("big")
    settings = make_settings(safety={"defaultLimit": 100})
    selection = select_audience(audience, campaign, make_state(campaign, settings=settings), NOW, seed=1)
    assert selection.blocked and selection.safety.source == "settings"
    roomy = make_campaign("roomy", audience={"safetyLimit": 1000})
    assert not select_audience(audience, roomy, make_state(roomy, settings=settings), NOW, seed=1).blocked


def test_safety_check_boundaries() -> None:
    campaign = make_campaign("c", audience={"safetyLimit": 100})
    assert not safety_check(100, campaign, None).blocked
    assert safety_check(101, campaign, None).blocked
    assert safety_check(10**9, make_campaign("free"), None).limit is None
    live = make_campaign("l", type="live")
    assert not safety_check(10**9, live, make_settings(safety={"defaultLimit": 5})).blocked  # live: own limit only
    own = make_campaign("l2", type="live", audience={"safetyLimit": 5})
    assert safety_check(6, own, None).blocked


