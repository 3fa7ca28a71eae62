"""doubt.settle / doubt_of: how an in-doubt message is settled, rule by rule (a scripted router: which
providers have a lookup, what each lookup answers)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from reconciler import doubt
from reconciler.models import ProviderGroup
from reconciler.providers.base import Found, InDoubt, OutboundMessage, ProviderError
from reconciler.providers.group import GroupRouter
from reconciler.store.base import OutboxRow

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MESSAGE = OutboundMessage("key-1", "+14155550123", "Hello")


@dataclass
class ScriptedRouter:
    """can_look_up / lookup_delay / look_up as GroupRouter offers them, answers scripted per provider."""

    answers: dict[str, Found | ProviderError]
    delays: dict[str, float] = field(default_factory=dict)
    asked: list[tuple[str, InDoubt]] = field(default_factory=list)

    def can_look_up(self, provider: str) -> bool:
        return provider in self.answers

    def lookup_delay(self, provider: str) -> float:
        return self.delays.get(provider, 0.0)

    async def look_up(self, provider: str, question: InDoubt) -> Found | ProviderError:
        self.asked.append((provider, question))
        return self.answers[provider]


def group(providers: list[str], policy: str | None = None) -> ProviderGroup:
    spec: dict[str, Any] = {"providers": providers, "default": True}
    if policy:
        spec["inDoubt"] = policy
    return ProviderGroup.model_validate({"apiVersion": "herald/v1", "kind": "ProviderGroup",
                                         "metadata": {"name": "g"}, "spec": spec})


def settle(router: ScriptedRouter, grp: ProviderGroup, suspects: tuple[str, ...], *, now: datetime = T0,
           claims: int = 2) -> doubt.Verdict:
    open_doubt = doubt.Doubt(suspects, T0 - timedelta(seconds=10), T0, "read timeout")
    return asyncio.run(doubt.settle(cast(GroupRouter, router), grp, MESSAGE, open_doubt, now, claims))


def test_nothing_is_decided_before_the_lookup_delay_has_passed() -> None:
    router = ScriptedRouter({"tw": Found("SM1")}, delays={"tw": 30})
    verdict = settle(router, group(["tw"]), ("tw",), now=T0 + timedelta(seconds=29))
    assert (verdict.action, verdict.retry_at) == ("wait", T0 + timedelta(seconds=30))
    assert router.asked == []


def test_found_at_the_provider_is_recorded_with_its_id_and_asks_over_the_window() -> None:
    router = ScriptedRouter({"tw": Found(None), "tw2": Found("SM2")})
    verdict = settle(router, group(["tw", "tw2"]), ("tw", "tw2"))
    assert (verdict.action, verdict.provider, verdict.provider_message_id, verdict.settled) == \
        ("found", "tw2", "SM2", "found")
    assert [(p, q.message.to, q.since, q.until) for p, q in router.asked] == [
        ("tw", MESSAGE.to, T0 - timedelta(seconds=10), T0), ("tw2", MESSAGE.to, T0 - timedelta(seconds=10), T0)]


def test_a_failed_lookup_is_asked_again_never_taken_as_not_found() -> None:
    router = ScriptedRouter({"tw": ProviderError("HTTP 500: lookup failed", retryable=True)})
    verdict = settle(router, group(["tw"]), ("tw",))
    assert (verdict.action, verdict.retry_at) == ("wait", T0 + doubt.LOOKUP_RETRY)
    given_up = settle(router, group(["tw"]), ("tw",), claims=doubt.MAX_DOUBT_CLAIMS)
    assert given_up.action == "skip" and given_up.reason.startswith("in_doubt: lookup at tw failed")


def test_not_found_where_every_suspect_can_be_asked_is_resent_same_provider_first() -> None:
    verdict = settle(ScriptedRouter({"tw": Found(None), "tw2": Found(None)}), group(["tw2", "tw"]), ("tw",))
    assert (verdict.action, verdict.prefer, verdict.exclude, verdict.settled) == ("resend", "tw", (), "resent")


@pytest.mark.parametrize(("policy", "expected"), [
    (None, ("skip", None, ())),  # the default
    ("skip", ("skip", None, ())),
    ("resend", ("resend", "vn", ())),
    ("failover", ("resend", None, ("vn",))),
])
def test_a_suspect_without_lookup_follows_the_groups_policy(policy: str | None, expected: tuple[Any, ...]) -> None:
    router = ScriptedRouter({"tw": Found(None)})
    verdict = settle(router, group(["vn", "tw"], policy), ("vn", "tw"))
    assert (verdict.action, verdict.prefer, verdict.exclude) == expected
    assert [p for p, _ in router.asked] == ["tw"], "the provider with a lookup is asked first"
    if verdict.action == "skip":
        assert verdict.reason.startswith("in_doubt: may have been sent by vn") and "inDoubt skip" in verdict.reason


def test_failover_with_no_other_provider_skips() -> None:
    verdict = settle(ScriptedRouter({}), group(["vn"], "failover"), ("vn",))
    assert verdict.action == "skip"


def row(**changes: Any) -> OutboxRow:
    base: dict[str, Any] = dict(
        id=1, idempotency_key="key-1", run_id=1, campaign="c", spec_hash=None, user_id="u1", phone=MESSAGE.to,
        context={}, not_before=T0 - timedelta(minutes=5), expires_at=None, status="claimed", skip_reason=None,
        provider=None, provider_message_id=None, attempts=0, claim_count=1, last_error=None, claimed_by="w",
        lease_until=T0, segments=None, cost=None, delivery_status=None, delivery_error_code=None,
        delivery_updated_at=None, created_at=T0, updated_at=T0, sent_at=None)
    base.update(changes)
    return OutboxRow(**base)


def test_doubt_of_a_fresh_a_recorded_and_an_abandoned_claim() -> None:
    grp = group(["tw", "vn"])
    assert doubt.doubt_of(row(), grp, T0) is None
    assert doubt.doubt_of(row(claim_count=3, released_claims=2), grp, T0) is None  # every claim released
    recorded = doubt.Doubt(("tw",), T0 - timedelta(minutes=9), T0 - timedelta(minutes=8), "HTTP 502")
    assert doubt.doubt_of(row(claim_count=2, released_claims=1, doubt=recorded.to_json()), grp, T0) == recorded
    assert doubt.doubt_of(row(claim_count=2, released_claims=0), grp, T0) is None  # abandoned before sending
    abandoned = doubt.doubt_of(row(claim_count=2, released_claims=0, attempted_claim=1), grp, T0)
    assert abandoned is not None and abandoned.providers == ("tw", "vn") and abandoned.until == T0
    assert abandoned.since == T0 - timedelta(minutes=5) - doubt.ABANDONED_MARGIN
    widened = doubt.doubt_of(row(claim_count=3, released_claims=1, attempted_claim=2, doubt=recorded.to_json()),
                             grp, T0)
    assert widened is not None and widened.providers == ("tw", "vn") and widened.since == recorded.since


def test_a_resend_left_in_doubt_keeps_the_doubt_it_followed() -> None:
    previous = doubt.Doubt(("vn",), T0 - timedelta(minutes=3), T0 - timedelta(minutes=2), "crash")
    again = doubt.sent_in_doubt("tw", T0 - timedelta(seconds=1), T0, "HTTP 504", previous)
    assert again.providers == ("tw", "vn") and again.since == previous.since and again.until == T0
    assert doubt.Doubt.from_json(again.to_json()) == again
