"""Provider faults through the whole engine (git → apply → run → outbox → router → mock provider):
first provider down, 50% 5xx, 10 s latency against a short timeout, 429 with Retry-After, malformed
answers, every provider down. Failover and retries behave as docs/providers.md says, the circuit
breaker opens and closes, and every message is accepted exactly once or recorded as failed."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from daemon_harness import (
    SETTINGS_YAML,
    Mock,
    campaign_yaml,
    engine_world,
    metric_value,
    providers_yaml,
    wait_for,
    world_phones,
)

from reconciler.delivery import MAX_CLAIMS, DeliveryWorker
from reconciler.demo import DemoWorld
from reconciler.providers.group import GroupRouter
from reconciler.report import delivery_report, report_table
from reconciler.runtime import Leases
from reconciler.store.base import OutboxRow

FIRE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
USERS = 30


def files(*, timeout: float = 5.0, cooldown: float = 30.0, campaigns: int = 1, threshold: int = 3) -> dict[str, str]:
    found = {"providers/providers.yaml": providers_yaml(timeout, cooldown, threshold),
             "campaigns/settings.yaml": SETTINGS_YAML}
    for index in range(campaigns):
        name = f"blast{index}"
        found[f"campaigns/{name}.yaml"] = campaign_yaml(name, FIRE + timedelta(hours=index), everyone=True)
    return found


@pytest.fixture
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[DemoWorld]:
    options = getattr(request, "param", {})
    with engine_world(tmp_path, files(**options), population=USERS) as w:
        w.step()  # apply the commit
        assert w.engine.rt.store.applied_state().get("Campaign", "blast0") is not None
        yield w


def fire(world: DemoWorld, at: datetime = FIRE) -> float:
    """Move the clock to `at` and run one engine step; returns the real seconds it took."""
    world.clock.set(at)
    began = time.monotonic()
    world.step(sync=False)
    return time.monotonic() - began


def rows(world: DemoWorld, campaign: str = "blast0") -> list[OutboxRow]:
    return world.engine.rt.store.list_outbox(campaign=campaign, limit=10_000)


def assert_each_accepted_once(world: DemoWorld, mock: Mock, campaign: str = "blast0") -> Counter[str]:
    """Every user's message was accepted by exactly one provider, once; the outbox agrees. Returns
    how many messages each provider accepted."""
    received = [m for m in mock.messages() if str(m["body"]).startswith("Hi ")]
    keys = {r.idempotency_key for r in rows(world, campaign)}
    mine = [m for m in received if m["idempotency_key"] in keys]
    per_phone = Counter(str(m["to"]) for m in mine)
    assert set(per_phone) == world_phones(USERS)
    assert set(per_phone.values()) == {1}, "a message was accepted twice"
    outbox = rows(world, campaign)
    assert len(outbox) == USERS and {r.status for r in outbox} == {"sent"}
    by_key = {str(m["idempotency_key"]): m for m in mine}
    for row in outbox:  # the store names the provider that really accepted it
        assert by_key[row.idempotency_key]["provider"] == {"tw": "twilio", "vn": "vonage"}[row.provider or ""]
    return Counter(str(m["provider"]) for m in mine)


def breaker(world: DemoWorld, provider: str) -> str:
    router = world.run(world.engine.router)
    return router.breaker_state(provider, "main")


def test_first_provider_down_fails_over_and_the_breaker_opens_then_closes(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", down=True)
    fire(world)
    accepted = assert_each_accepted_once(world, mock)
    assert accepted == {"vonage": USERS}
    tw = mock.provider_stats("twilio")
    assert tw["faulted"] == tw["requests"] and tw.get("messages", 0) == 0
    # The breaker (3 consecutive failures) stops retries at the dead provider: about one request per
    # message, not the 3 attempts each would get without it.
    assert 3 <= tw["requests"] <= USERS + 3
    assert breaker(world, "tw") == "open"
    metrics = world.engine.rt.metrics.render().decode()
    assert metric_value(metrics, "herald_sends_total", {"provider": "vn", "status": "sent"}) == USERS


@pytest.mark.parametrize("world", [{"campaigns": 3, "cooldown": 30.0}], indirect=True)
def test_breaker_half_opens_after_the_cooldown_and_closes_on_a_good_probe(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", down=True)
    fire(world)
    assert breaker(world, "tw") == "open"
    mock.clear("twilio")
    world.clock.set(FIRE + timedelta(seconds=20))
    assert breaker(world, "tw") == "open"  # still cooling down (30 s on the engine's clock)
    world.clock.set(FIRE + timedelta(seconds=31))
    assert breaker(world, "tw") == "half-open"
    fire(world, FIRE + timedelta(hours=1))  # blast1: one probe goes to twilio, it succeeds
    assert breaker(world, "tw") == "closed"
    probe_run = assert_each_accepted_once(world, mock, "blast1")
    assert probe_run["twilio"] >= 1
    fire(world, FIRE + timedelta(hours=2))  # blast2: the circuit is closed, twilio takes everything
    assert assert_each_accepted_once(world, mock, "blast2") == {"twilio": USERS}


def test_half_of_the_requests_failing_with_5xx_loses_and_doubles_nothing(world: DemoWorld) -> None:
    """A 500 leaves the message in doubt: not retried, not failed over; after Twilio's lookup delay the
    lookup says it was not taken (the injected 500 came before the mock took it), so it is resent."""
    mock = Mock(world.mock_url)
    mock.fault("twilio", error_rate=0.5, status=500)
    fire(world)
    in_doubt = [r for r in rows(world) if r.status == "pending" and r.doubt]
    tw = mock.provider_stats("twilio")
    assert len(in_doubt) == tw["faulted"] >= 1
    assert all(json.loads(r.doubt or "{}")["providers"] == ["tw"] for r in in_doubt), "never failed over"
    mock.clear("twilio")
    fire(world, FIRE + timedelta(seconds=31))  # past the lookup delay (30 s): looked up, not found, resent
    accepted = assert_each_accepted_once(world, mock)  # (others failed over only once tw's breaker opened)
    assert accepted["twilio"] + accepted["vonage"] == USERS and accepted["twilio"] >= len(in_doubt)
    assert world.engine.rt.store.in_doubt_counts(campaign="blast0") == {"resent": len(in_doubt)}
    assert mock.provider_stats("twilio")["lookups"] == len(in_doubt)
    report = delivery_report(world.engine.rt.store, "blast0")  # what `herald report` shows
    assert report.in_doubt == {"resent": len(in_doubt)}
    assert f"in doubt: {len(in_doubt)} (resent={len(in_doubt)})" in report_table([report])


@pytest.mark.parametrize("world", [{"timeout": 0.3}], indirect=True)
def test_a_provider_that_answers_too_late_leaves_doubts_that_the_lookup_settles(world: DemoWorld) -> None:
    """Twilio takes each message but answers after Herald's timeout (and, like the real API, finishes
    the work anyway). Those messages are in doubt — never failed over — until Twilio's lookup finds
    them (requests that never reached Twilio because its breaker opened fail over to Vonage)."""
    mock = Mock(world.mock_url)
    mock.fault("twilio", latency_ms=3_000)
    seconds = fire(world)
    assert seconds < 8, f"the step waited for the slow provider ({seconds:.1f}s)"
    in_doubt = [r for r in rows(world) if r.status == "pending" and r.doubt]
    assert 1 <= len(in_doubt) == mock.provider_stats("twilio")["abandoned"]
    wait_for(lambda: mock.provider_stats("twilio").get("messages", 0) == len(in_doubt), timeout=20,
             what="twilio finishing the requests Herald gave up on")
    mock.clear("twilio")
    fire(world, FIRE + timedelta(seconds=31))  # past Twilio's lookup delay: found, recorded sent
    accepted = assert_each_accepted_once(world, mock)
    assert (accepted["twilio"], accepted["vonage"]) == (len(in_doubt), USERS - len(in_doubt))
    assert world.engine.rt.store.in_doubt_counts(campaign="blast0") == {"found": len(in_doubt)}


def test_429_with_retry_after_waits_and_retries_the_same_provider(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", rate_limited=True, retry_after=1, times=2)
    seconds = fire(world)
    accepted = assert_each_accepted_once(world, mock)
    assert accepted == {"twilio": USERS}  # two throttled requests, below the breaker's threshold
    assert mock.provider_stats("twilio")["faulted"] == 2
    assert sorted(r.attempts for r in rows(world))[-2:] == [2, 2]
    assert seconds >= 1.0, "the router did not honour Retry-After"


def test_a_retry_after_beyond_30s_fails_over_instead_of_waiting(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", rate_limited=True, retry_after=120, times=1)
    seconds = fire(world)
    accepted = assert_each_accepted_once(world, mock)
    assert accepted == {"twilio": USERS - 1, "vonage": 1}
    assert seconds < 10


@pytest.mark.parametrize("world", [{"timeout": 0.3, "campaigns": 2}], indirect=True)
def test_a_worker_never_waits_past_its_claim_it_fails_over_or_releases(world: DemoWorld) -> None:
    """A Retry-After longer than what is left of the claim's lease is not waited out: once the lease
    ends another worker may claim the same rows, and a request still running then would double-send."""
    mock = Mock(world.mock_url)
    world.engine.rt.leases = Leases.uniform(1.0)  # 0.8 s of real time to send each claimed batch
    mock.fault("twilio", rate_limited=True, retry_after=5)
    seconds = fire(world)
    assert seconds < 1.0, f"the batch outlived its claim ({seconds:.1f}s)"
    assert assert_each_accepted_once(world, mock) == {"vonage": USERS}  # failed over instead of waiting

    mock.fault("vonage", rate_limited=True, retry_after=5)  # the next run: nobody can take it now
    seconds = fire(world, FIRE + timedelta(hours=1))
    assert seconds < 1.0
    waiting = rows(world, "blast1")
    assert {r.status for r in waiting} == {"pending"} and {r.claimed_by for r in waiting} == {None}
    assert all(r.last_error for r in waiting)
    assert all(m["idempotency_key"] not in {r.idempotency_key for r in waiting} for m in mock.messages())


def test_malformed_success_answers_count_as_sent_and_are_not_resent(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", malformed=True, times=3)
    fire(world)
    assert assert_each_accepted_once(world, mock) == {"twilio": USERS}
    unreadable = [r for r in rows(world) if r.provider_message_id is None]
    assert len(unreadable) == 3 and all(r.status == "sent" for r in unreadable)
    assert mock.stats()["total"].get("duplicates", 0) == 0


@pytest.mark.parametrize("world", [{"cooldown": 3600.0}], indirect=True)
def test_every_provider_down_retries_later_then_delivers_once(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", down=True)
    mock.fault("vonage", down=True)
    fire(world)
    waiting = rows(world)
    assert {r.status for r in waiting} == {"pending"} and all(r.last_error for r in waiting)
    assert min(r.not_before for r in waiting) >= FIRE + timedelta(seconds=5)  # backoff before the next claim
    assert mock.accepted() == 0
    mock.clear("twilio")
    mock.clear("vonage")
    fire(world, FIRE + timedelta(hours=2))  # both breakers half-open: one probe each, the rest wait
    assert 1 <= mock.accepted() <= 2
    assert breaker(world, "tw") == "closed"
    fire(world, FIRE + timedelta(hours=2, minutes=1))  # after their backoff, the rest go out
    accepted = assert_each_accepted_once(world, mock)
    assert sum(accepted.values()) == USERS


@pytest.mark.parametrize("world", [{"cooldown": 3600.0}], indirect=True)
def test_while_every_circuit_is_open_messages_wait_for_the_probe_without_churning(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", down=True)
    mock.fault("vonage", down=True)
    fire(world)  # real attempts fail, both circuits open
    fire(world, FIRE + timedelta(minutes=10))  # nothing can be attempted: wait for the first probe
    waiting = rows(world)
    assert {r.claim_count for r in waiting} == {2}
    assert {r.last_error for r in waiting} == {"no provider available (all circuits open)"}
    probe_at = min(r.not_before for r in waiting)
    assert FIRE + timedelta(minutes=59) <= probe_at <= FIRE + timedelta(minutes=61)  # the 1 h cooldown ends
    fire(world, FIRE + timedelta(minutes=30))
    assert {r.claim_count for r in rows(world)} == {2}  # not claimed again meanwhile (no busy loop)
    assert mock.accepted() == 0


@pytest.mark.parametrize("world", [{"threshold": 1000}], indirect=True)
def test_messages_that_never_get_through_are_recorded_failed_after_the_last_claim(world: DemoWorld) -> None:
    mock = Mock(world.mock_url)
    mock.fault("twilio", down=True)
    mock.fault("vonage", down=True)

    async def no_backoff(seconds: float) -> None:
        return None

    engine = world.engine  # the router's retry backoff is real time: inject an instant one
    engine._router = GroupRouter(engine.state, engine.rt.config, world.clock, sleep=no_backoff)
    at = FIRE
    for _ in range(MAX_CLAIMS):
        fire(world, at)
        at += timedelta(minutes=10)  # past every backoff (5 s, 10 s, 20 s, …)
    final = rows(world)
    assert {r.status for r in final} == {"failed"}
    assert {r.claim_count for r in final} == {MAX_CLAIMS}
    assert all("503" in (r.last_error or "") or "Unavailable" in (r.last_error or "") for r in final)
    assert mock.accepted() == 0
    assert mock.provider_stats("twilio")["requests"] == USERS * MAX_CLAIMS * 3  # 3 attempts per claim, no breaker


def test_accepted_messages_are_recorded_while_the_rest_of_the_batch_is_still_retrying(world: DemoWorld) -> None:
    """The in-doubt window is one request, not one batch: while one message of the batch waits to be
    retried, the messages already accepted are in the store as sent (a crash now would resend one)."""
    mock = Mock(world.mock_url)
    engine = world.engine
    world.clock.set(FIRE)
    world.run(lambda: asyncio.to_thread(engine.tick))
    assert len(rows(world)) == USERS
    mock.fault("twilio", status=503, error_rate=1.0, times=1)
    release = asyncio.Event()
    waits: list[float] = []

    async def held_backoff(seconds: float) -> None:
        waits.append(seconds)
        await release.wait()

    async def scenario() -> tuple[int, int]:
        router = GroupRouter(engine.state, engine.rt.config, world.clock, sleep=held_backoff)
        worker = DeliveryWorker(engine.rt, router, engine.state, batch_size=200)
        delivering = asyncio.create_task(worker.run_once())
        sent_while_held = 0
        for _ in range(500):  # poll the store while the router holds one message back
            await asyncio.sleep(0.01)
            sent_while_held = sum(r.status == "sent" for r in rows(world))
            if waits and sent_while_held == USERS - 1:
                break
        release.set()
        await delivering
        await router.aclose()
        return sent_while_held, sum(r.status == "sent" for r in rows(world))

    held, finally_sent = world.run(scenario)
    assert waits, "the fault did not make the router back off"
    assert held == USERS - 1
    assert finally_sent == USERS
    assert_each_accepted_once(world, mock)
