"""GroupRouter against the mock provider server: routing, failover, retries, circuit breaker, batching.

Every test counts what the mock actually received, so "no message lost or sent twice" is measured,
not assumed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from reconciler.clock import FakeClock
from reconciler.config import RuntimeConfig
from reconciler.loading import DesiredState, SourceFile, load_files
from reconciler.providers import GroupRouter, OutboundMessage, ProviderError, RetryPolicy
from reconciler.providers.base import Found, InDoubt
from reconciler.providers.mock_server import MockState, running_mock_server

ENV = {"T_TOKEN": "twilio-token-123", "V_SECRET": "vonage-secret-123", "M_KEY": "msg91-key-123",
       "E_TOKEN": "exotel-token-123", "B_KEY": "bulk-key-123"}

STATE = """
apiVersion: herald/v1
kind: Provider
metadata: {name: p-twilio}
spec:
  type: twilio
  accountSid: AC0123456789abcdef0123456789abcdef
  authToken: {secretRef: {env: T_TOKEN}}
  from: "+14155550100"
  timeoutSeconds: 0.25
---
apiVersion: herald/v1
kind: Provider
metadata: {name: p-vonage}
spec:
  type: vonage
  apiKey: key1
  apiSecret: {secretRef: {env: V_SECRET}}
  from: Herald
  reportsLookup: true
  timeoutSeconds: 0.25
---
apiVersion: herald/v1
kind: Provider
metadata: {name: p-broken}
spec:
  type: twilio
  accountSid: AC0123456789abcdef0123456789abcdee
  authToken: {secretRef: {env: NOT_SET_ANYWHERE}}
  from: "+14155550100"
---
apiVersion: herald/v1
kind: Provider
metadata: {name: p-msg91}
spec:
  type: msg91
  authKey: {secretRef: {env: M_KEY}}
  senderId: HERALD
---
apiVersion: herald/v1
kind: Provider
metadata: {name: p-exotel}
spec:
  type: exotel
  accountSid: acct1
  apiKey: k1
  apiToken: {secretRef: {env: E_TOKEN}}
  from: HERALD
---
apiVersion: herald/v1
kind: Provider
metadata: {name: p-bulk}
spec:
  type: generic_http
  url: https://bulk.example/v1/batch
  auth: {bearer: {secretRef: {env: B_KEY}}}
  globals: {sender: HERALD}
  body: {to: $$To, text: $$Body, reference: $$MessageID}
  batching: {enabled: true, size: 10, key: messages}
  success: {statusCodes: [200], messageIdPath: "messages.*.id"}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec:
  default: true
  providers: [p-twilio, p-vonage]
  circuitBreaker: {failureThreshold: 2, cooldownSeconds: 30}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: india}
spec:
  countries: [IN]
  providers: [p-msg91, p-exotel]
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: bulk}
spec:
  providers: [p-bulk, p-vonage]
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: misconfigured}
spec:
  providers: [p-broken, p-vonage]
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def desired() -> DesiredState:
    result = load_files([SourceFile("providers.yaml", STATE.encode())])
    assert result.ok, result.diagnostics
    return result.state


@pytest.fixture(scope="module")
def mock_server() -> Iterator[tuple[str, MockState]]:
    state = MockState(seed=7)
    with running_mock_server(state) as url:
        yield url, state


@pytest.fixture
def mock(mock_server: tuple[str, MockState]) -> Iterator[tuple[str, MockState]]:
    url, state = mock_server
    state.reset()
    yield url, state
    state.reset()


class Sleeps:
    """Backoff sleeps are recorded (and move the fake clock) instead of waiting."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[float] = []
        self.clock = clock

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        if self.clock:
            self.clock.advance(timedelta(seconds=seconds))


def router(desired: DesiredState, url: str, clock: FakeClock, sleeps: Sleeps | None = None,
           **kwargs: object) -> GroupRouter:
    return GroupRouter(desired, RuntimeConfig(provider_base_url=url), clock, sleep=sleeps or Sleeps(),
                       environ=ENV, **kwargs)  # type: ignore[arg-type]


def fault(url: str, **spec: object) -> None:
    httpx.post(f"{url}/_mock/faults", json=spec).raise_for_status()


def messages(n: int, prefix: str = "m", number: str = "+1415555{:04d}") -> list[OutboundMessage]:
    return [OutboundMessage(f"{prefix}-{i}", number.format(i + 100), f"Hello {i}") for i in range(n)]


def delivered_once(state: MockState, sent: list[OutboundMessage]) -> None:
    keys = [m.idempotency_key for m in state.query()]
    assert sorted(keys) == sorted(m.message_id for m in sent), "every message recorded exactly once"


@pytest.mark.anyio
async def test_routes_by_country_then_default(desired: DesiredState, mock, clock: FakeClock) -> None:
    url, state = mock
    async with router(desired, url, clock) as r:
        assert r.group_for("+919876543210").name == "india"
        assert r.group_for("+14155550123").name == "main"
        assert r.group_for("+14155550123", "bulk").name == "bulk"
        sent = [OutboundMessage("us", "+14155550123", "hi"),
                OutboundMessage("in", "+919876543210", "hi", template_id="1107160000000000002")]
        results = await r.send(sent)
    assert [x.provider for x in results] == ["p-twilio", "p-msg91"]
    assert all(x.status == "sent" and x.provider_message_id for x in results)
    delivered_once(state, sent)


@pytest.mark.anyio
async def test_invalid_numbers_are_rejected_before_any_request(desired, mock, clock) -> None:
    url, state = mock
    bad = [OutboundMessage("a", "+123", "x"), OutboundMessage("b", "14155550123", "x"),
           OutboundMessage("c", "+1 415 555 0123", "x"), OutboundMessage("d", "+999123456789", "x")]
    async with router(desired, url, clock) as r:
        results = await r.send(bad)
        unknown_group = await r.send([OutboundMessage("e", "+14155550123", "x")], group="nope")
    assert all(x.status == "failed" and not x.retryable and x.attempts == 0 and x.provider is None for x in results)
    assert "unknown provider group" in (unknown_group[0].error or "")
    assert state.stats()["total"] == {}


@pytest.mark.anyio
async def test_failover_when_first_provider_is_down(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", down=True)
    batch = messages(8)
    async with router(desired, url, clock) as r:
        results = await r.send(batch)
    assert {x.provider for x in results} == {"p-vonage"}
    assert all(x.status == "sent" for x in results)
    assert state.query("twilio") == []
    delivered_once(state, batch)


@pytest.mark.anyio
async def test_failover_when_first_provider_returns_503_sometimes(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", error_rate=0.5, status=503)  # 503: nothing was accepted, safe to retry
    batch = messages(40)
    sleeps = Sleeps()
    async with router(desired, url, clock, sleeps, retry=RetryPolicy(attempts_per_provider=2)) as r:
        results = await r.send(batch)
    assert all(x.status == "sent" for x in results)
    stats = state.stats()["providers"]
    assert stats["twilio"]["faulted"] > 0 and sleeps.calls, "some retries happened"
    assert {x.provider for x in results} <= {"p-twilio", "p-vonage"}
    assert any(x.attempts > 1 for x in results)
    delivered_once(state, batch)


@pytest.mark.anyio
async def test_a_provider_too_slow_to_answer_leaves_the_message_in_doubt_never_failed_over(desired, mock, clock) -> None:
    """Realistic mock: Twilio carries on with a request whose client timed out. Failing over (the old
    behaviour) would have sent every message twice; instead each is in doubt at p-twilio, and the
    lookup finds the message Twilio did send."""
    url, state = mock
    fault(url, provider="twilio", latency_ms=1000)  # p-twilio times out after 0.25 s
    batch = messages(4)
    async with router(desired, url, clock, retry=RetryPolicy(attempts_per_provider=2)) as r:
        results = await r.send(batch)
        assert [(x.status, x.provider, x.attempts) for x in results] == [("in_doubt", "p-twilio", 1)] * 4
        assert all("may have accepted" in (x.error or "") for x in results)
        assert state.query("vonage") == [], "never failed over on an ambiguous outcome"
        await _until(lambda: len(state.query("twilio")) == 4, seconds=10)
        now = datetime.now(UTC)  # the mock stamps messages with the real clock
        found = [await r.look_up("p-twilio", InDoubt(m, now - timedelta(seconds=5), now)) for m in batch]
    sids = {m.idempotency_key: m.provider_message_id for m in state.query("twilio")}
    assert [f.provider_message_id for f in found if isinstance(f, Found)] == [sids[m.message_id] for m in batch]
    delivered_once(state, batch)


@pytest.mark.anyio
async def test_a_500_leaves_the_message_in_doubt_and_the_lookup_tells_whether_it_was_taken(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", error_rate=1.0, status=500, accept=True, times=1)  # taken, then a 500
    fault_free, taken = messages(2)
    async with router(desired, url, clock) as r:
        (first,) = await r.send([taken])
        assert (first.status, first.provider, first.attempts) == ("in_doubt", "p-twilio", 1)
        fault(url, provider="twilio", error_rate=1.0, status=502, times=1)  # not taken, then a 502
        (second,) = await r.send([fault_free])
        assert (second.status, second.provider) == ("in_doubt", "p-twilio")
        now = datetime.now(UTC)  # the mock stamps messages with the real clock
        window = (now - timedelta(minutes=1), now)
        was_taken = await r.look_up("p-twilio", InDoubt(taken, *window))
        not_taken = await r.look_up("p-twilio", InDoubt(fault_free, *window))
    assert isinstance(was_taken, Found) and was_taken.provider_message_id == state.query("twilio")[0].provider_message_id
    assert isinstance(not_taken, Found) and not_taken.provider_message_id is None
    assert state.query("vonage") == []


@pytest.mark.anyio
async def test_vonage_reports_lookup_finds_an_in_doubt_message_by_its_client_ref(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="vonage", latency_ms=800, times=1)  # taken, answered after the 0.25 s timeout
    late, never_sent = messages(2, prefix="vn", number="+4479111{:05d}")
    async with router(desired, url, clock) as r:
        (result,) = await r.send_via("p-vonage", [late])
        assert (result.status, result.provider) == ("in_doubt", "p-vonage")
        await _until(lambda: len(state.query("vonage")) == 1, seconds=10)
        now = datetime.now(UTC)
        window = (now - timedelta(minutes=1), now)
        found = await r.look_up("p-vonage", InDoubt(late, *window))
        missing = await r.look_up("p-vonage", InDoubt(never_sent, *window))
    (taken,) = state.query("vonage")
    assert taken.fields["client-ref"] == late.message_id
    assert isinstance(found, Found) and found.provider_message_id == taken.provider_message_id
    assert isinstance(missing, Found) and missing.provider_message_id is None
    assert state.stats()["providers"]["vonage"]["lookups"] == 2


@pytest.mark.anyio
async def test_a_request_that_cannot_be_built_is_refused_with_a_reason_and_fails_over(desired, mock, clock) -> None:
    """A two-line secret file puts a newline in a header: httpx raises ValueError while building the
    request. That is a definite refusal (nothing left Herald), reported without the secret."""
    url, state = mock
    env = {**ENV, "T_TOKEN": "twilio-token-123\nsecond-line"}
    async with GroupRouter(desired, RuntimeConfig(provider_base_url=url), clock, sleep=Sleeps(), environ=env) as r:
        adapter = r.adapter("p-twilio")
        assert not isinstance(adapter, ProviderError)
        adapter.authorization = "Basic x\ny"  # what a secret with a newline yields
        results = await r.send(messages(2))
        (alone,) = await r.send_via("p-twilio", messages(1, prefix="solo"))
    assert [(x.status, x.provider) for x in results] == [("sent", "p-vonage")] * 2
    assert alone.status == "failed" and "could not be" in (alone.error or "")
    assert "second-line" not in repr(alone) and "x\ny" not in repr(alone)
    assert state.query("twilio") == []


async def _until(condition: Callable[[], bool], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_retry_honours_retry_after(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", rate_limited=True, retry_after=4, times=1)
    sleeps = Sleeps()
    async with router(desired, url, clock, sleeps, rng=__import__("random").Random(1)) as r:
        (result,) = await r.send(messages(1))
    assert result.status == "sent" and result.provider == "p-twilio" and result.attempts == 2
    assert sleeps.calls and sleeps.calls[0] >= 4.0
    assert state.stats()["providers"]["twilio"]["requests"] == 2


@pytest.mark.anyio
async def test_long_retry_after_moves_on_instead_of_waiting(desired, mock, clock) -> None:
    url, _state = mock
    fault(url, provider="twilio", rate_limited=True, retry_after=3600)
    sleeps = Sleeps()
    async with router(desired, url, clock, sleeps) as r:
        (result,) = await r.send(messages(1))
    assert result.provider == "p-vonage" and sleeps.calls == []


@pytest.mark.anyio
async def test_backoff_grows_exponentially_and_is_bounded(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", down=True)
    sleeps = Sleeps()
    policy = RetryPolicy(attempts_per_provider=4, base_delay=1.0, max_delay=3.0)
    async with router(desired, url, clock, sleeps, retry=policy) as r:
        (result,) = await r.send_via("p-twilio", messages(1))
    assert result.status == "failed" and result.retryable and result.attempts == 4
    assert len(sleeps.calls) == 3
    first, second, third = sleeps.calls
    assert 0.5 <= first <= 1.0 and 1.0 <= second <= 2.0 and 1.5 <= third <= 3.0
    assert state.stats()["providers"]["twilio"]["requests"] == 4


@pytest.mark.anyio
async def test_total_attempts_are_bounded_across_providers(desired, mock, clock) -> None:
    url, _state = mock
    fault(url, provider="p-bulk", down=True)
    fault(url, provider="vonage", down=True)
    policy = RetryPolicy(attempts_per_provider=3, max_total_attempts=4)
    async with router(desired, url, clock, retry=policy) as r:
        (result,) = await r.send(messages(1), group="bulk")
    assert result.status == "failed" and result.attempts == 4
    assert result.provider == "p-vonage"


@pytest.mark.anyio
async def test_circuit_breaker_opens_skips_and_closes_after_probe(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="twilio", down=True)
    async with router(desired, url, clock, retry=RetryPolicy(attempts_per_provider=1)) as r:
        await r.send(messages(1, "a"))
        assert r.breaker_state("p-twilio", "main") == "closed"
        await r.send(messages(1, "b"))
        assert r.breaker_state("p-twilio", "main") == "open"
        before = state.stats()["providers"]["twilio"]["requests"]
        results = await r.send(messages(3, "c"))
        assert [x.provider for x in results] == ["p-vonage"] * 3
        assert state.stats()["providers"]["twilio"]["requests"] == before, "open circuit: not even tried"

        clock.advance(timedelta(seconds=31))
        assert r.breaker_state("p-twilio", "main") == "half-open"
        await r.send(messages(1, "d"))  # probe fails: open again, new cooldown
        assert r.breaker_state("p-twilio", "main") == "open"
        assert state.stats()["providers"]["twilio"]["requests"] == before + 1

        httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "clear": True})
        clock.advance(timedelta(seconds=31))
        (probe,) = await r.send(messages(1, "e"))
        assert probe.provider == "p-twilio"
        assert r.breaker_state("p-twilio", "main") == "closed"


@pytest.mark.anyio
async def test_batching_sends_one_request_per_batch(desired, mock, clock) -> None:
    url, state = mock
    batch = messages(25)
    async with router(desired, url, clock) as r:
        results = await r.send(batch, group="bulk")
    assert all(x.status == "sent" and x.provider == "p-bulk" for x in results)
    stats = state.stats()["providers"]["p-bulk"]
    assert stats["requests"] == 3 and stats["messages"] == 25
    ids = [x.provider_message_id for x in results]
    assert len(set(ids)) == 25, "per-recipient ids read from messages.*.id"
    recorded = state.query("p-bulk")
    assert {m.fields["sender"] for m in recorded} == {"HERALD"}
    assert len({m.idempotency_key for m in recorded}) == 3
    delivered_once_keys = sorted(m.fields["reference"] for m in recorded)
    assert delivered_once_keys == sorted(m.message_id for m in batch)


@pytest.mark.anyio
async def test_failed_batch_fails_over_to_an_unbatched_provider(desired, mock, clock) -> None:
    url, state = mock
    fault(url, provider="p-bulk", down=True)
    batch = messages(12)
    async with router(desired, url, clock) as r:
        results = await r.send(batch, group="bulk")
    assert {x.provider for x in results} == {"p-vonage"}
    assert state.stats()["providers"]["vonage"]["requests"] == 12
    delivered_once(state, batch)


@pytest.mark.anyio
async def test_message_level_refusal_does_not_fail_over(desired, mock, clock) -> None:
    url, state = mock
    async with router(desired, url, clock) as r:
        (result,) = await r.send([OutboundMessage("no-template", "+919876543210", "hi")])
    assert result.status == "failed" and not result.retryable and result.provider == "p-msg91"
    assert "template" in (result.error or "")
    assert state.stats()["total"] == {}


@pytest.mark.anyio
async def test_misconfigured_provider_is_skipped_with_a_redacted_reason(desired, mock, clock) -> None:
    url, _state = mock
    async with router(desired, url, clock) as r:
        (result,) = await r.send(messages(1), group="misconfigured")
        (only,) = await r.send_via("p-broken", messages(1, "x"))
    assert result.status == "sent" and result.provider == "p-vonage"
    assert only.status == "failed" and "NOT_SET_ANYWHERE" in (only.error or "")


@pytest.mark.anyio
async def test_send_via_one_provider_and_resend_is_deduplicated_by_the_mock(desired, mock, clock) -> None:
    url, state = mock
    message = OutboundMessage("run-1:user-1", "+447911123456", "Same message, sent twice after a crash")
    state.dedupe = True  # the idempotent-provider mode
    try:
        async with router(desired, url, clock) as r:
            first = await r.send_via("p-vonage", [message])
            second = await r.send_via("p-vonage", [message])
    finally:
        state.dedupe = False
    assert first[0].provider_message_id == second[0].provider_message_id
    stats = state.stats()["providers"]["vonage"]
    assert stats["messages"] == 1 and stats["duplicates"] == 1


@pytest.mark.anyio
async def test_a_real_provider_does_not_deduplicate_a_resend(desired, mock, clock) -> None:
    url, state = mock
    message = OutboundMessage("run-1:user-1", "+447911123456", "Same message, sent twice after a crash")
    async with router(desired, url, clock) as r:
        first = await r.send_via("p-vonage", [message])
        second = await r.send_via("p-vonage", [message])
    assert first[0].provider_message_id != second[0].provider_message_id
    assert len(state.query("vonage")) == 2  # what a blind resend costs at a real provider


@pytest.mark.anyio
async def test_secrets_never_appear_in_results(desired, mock, clock) -> None:
    url, _state = mock
    fault(url, provider="vonage", error_rate=1.0, status=401)
    async with router(desired, url, clock) as r:
        (result,) = await r.send_via("p-vonage", messages(1))
    assert result.status == "failed"
    for secret in ENV.values():
        assert secret not in repr(result)


@pytest.mark.anyio
async def test_failover_when_first_provider_refuses_connections(mock, clock) -> None:
    import socket

    url, state = mock
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    refused = STATE.replace("  timeoutSeconds: 0.25\n", f"  baseUrl: http://127.0.0.1:{closed_port}\n", 1)
    desired = load_files([SourceFile("providers.yaml", refused.encode())]).state
    batch = messages(3)
    sleeps = Sleeps()
    async with router(desired, url, clock, sleeps) as r:
        results = await r.send(batch)
    assert [x.provider for x in results] == ["p-vonage"] * 3
    assert all(x.attempts >= 2 for x in results) and sleeps.calls
    delivered_once(state, batch)
