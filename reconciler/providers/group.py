"""Provider groups: route by country, fail over in priority order, retry with backoff, break circuits.

For each group the router walks the providers in order. At one provider a message (or batch) is
retried while the error is a definite, retryable refusal (connect failures, 429, 503), waiting an
exponential backoff with jitter, never less than the provider's Retry-After. When the provider stays
unhealthy, or refuses for an account reason (auth, suspended sender), the pending messages move to
the next provider. A message-level refusal (invalid number, missing template) ends that message:
another provider would refuse it too. An IN-DOUBT outcome (timeout after the request was written,
dropped connection, 500/502/504: the provider may have accepted it) also ends the message here, as
`in_doubt`: it is neither retried nor failed over, since either could send it twice; the caller
settles it later by asking the provider (`look_up`) or by the group's `inDoubt` policy. Each
provider has a circuit breaker: after `failureThreshold` consecutive failed requests it is skipped
until `cooldownSeconds` have passed on the Clock, then a single probe request decides whether it
closes again.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import httpx
import phonenumbers

from ..clock import Clock, SystemClock
from ..config import RuntimeConfig
from ..loading import DesiredState
from ..models import ProviderGroup
from ..models.group import CircuitBreaker
from ..secrets import SecretError
from .base import (
    Found,
    InDoubt,
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderConfigError,
    ProviderError,
    SendResult,
    result_from,
)
from .registry import build_adapter, default_client

SleepFn = Callable[[float], Awaitable[None]]
# (provider name, messages, deadline) -> False when the request may not go out before the deadline
BeforeSend = Callable[[str, Sequence[OutboundMessage], float | None], Awaitable[object]]  # ratelimit.SendRateGuard
ResultHook = Callable[[SendResult], None]  # sees each message's final result as soon as it is known
# (messages) -> False when they must not be sent: awaited inside the request slot, right before the request
# is written, so a durable "attempted" mark (delivery.AttemptMarks) precedes every byte sent
BeforeSubmit = Callable[[Sequence[OutboundMessage]], Awaitable[bool]]
MIN_ATTEMPT_SECONDS = 1.0  # with a deadline, an attempt starts only if it can wait this long (or its timeout)
BreakerState = Literal["closed", "open", "half-open"]


class RoutingError(ValueError):
    """No group can take this number (invalid number, unknown group, no default group)."""


class InvalidNumber(RoutingError):
    pass


@dataclass(frozen=True)
class RetryPolicy:
    attempts_per_provider: int = 3
    max_total_attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 10.0
    max_retry_after: float = 30.0  # a longer Retry-After moves on to the next provider instead of waiting

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Backoff before retry number `attempt` (1-based): exponential with 50-100% jitter."""
        backoff = min(self.max_delay, self.base_delay * 2 ** (attempt - 1)) * (0.5 + rng.random() / 2)
        return max(backoff, retry_after or 0.0)


@dataclass
class CircuitBreakerState:
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    probing: bool = False

    def state(self, now: datetime, settings: CircuitBreaker) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        if now - self.opened_at >= timedelta(seconds=settings.cooldownSeconds):
            return "half-open"
        return "open"

    def acquire(self, now: datetime, settings: CircuitBreaker) -> bool:
        """May a request go out now? In half-open state only one probe at a time."""
        state = self.state(now, settings)
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def record(self, success: bool, now: datetime, settings: CircuitBreaker) -> None:
        self.probing = False
        if success:
            self.consecutive_failures, self.opened_at = 0, None
            return
        self.consecutive_failures += 1
        if self.opened_at is not None or self.consecutive_failures >= settings.failureThreshold:
            self.opened_at = now  # (re)open: a failed probe starts a new cooldown


@dataclass
class _Pending:
    message: OutboundMessage
    attempts: int = 0
    last_error: ProviderError | None = None
    last_provider: str | None = None


@dataclass
class _Tally:
    results: dict[str, SendResult] = field(default_factory=dict)
    on_result: ResultHook | None = None
    deadline: float | None = None  # event-loop time after which no request may still be running

    def settle(self, result: SendResult) -> None:
        self.results[result.message_id] = result
        if self.on_result is not None:
            self.on_result(result)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - asyncio.get_running_loop().time()

    def time_for(self, seconds: float) -> bool:
        """Would something taking `seconds` from now end before the deadline?"""
        remaining = self.remaining()
        return remaining is None or seconds <= remaining

    def attempt_timeout(self, provider_timeout: float) -> float | None:
        """The timeout for an attempt starting now: the provider's own, shortened to end by the
        deadline; None when there is not even MIN_ATTEMPT_SECONDS (or the provider's timeout) left."""
        remaining = self.remaining()
        if remaining is None:
            return provider_timeout
        return min(provider_timeout, remaining) if remaining >= min(provider_timeout, MIN_ATTEMPT_SECONDS) else None


@functools.lru_cache(maxsize=65536)
def number_region(number: str) -> str:
    """The ISO region of a valid E.164 number, or InvalidNumber. Cached: a campaign run sees the same
    numbers again on retries and reruns, and validation is the costliest step per message."""
    if not number.startswith("+"):
        raise InvalidNumber(f"'{number}' is not in E.164 format (+ and country code)")
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException as exc:
        raise InvalidNumber(f"'{number}' is not a phone number: {exc}") from None
    region = phonenumbers.region_code_for_number(parsed)
    if region is None or not phonenumbers.is_valid_number_for_region(parsed, region):
        raise InvalidNumber(f"'{number}' is not a valid phone number")
    if number != f"+{parsed.country_code}{phonenumbers.national_significant_number(parsed)}":
        raise InvalidNumber(f"'{number}' is not in canonical E.164 form")
    return region


def parse_number(number: str) -> phonenumbers.PhoneNumber:
    """A valid E.164 number, or InvalidNumber."""
    number_region(number)
    return phonenumbers.parse(number, None)


class GroupRouter:
    """Sends through the provider groups of one desired state. Use as an async context manager or
    call aclose(); the shared httpx client is closed only if the router created it."""

    def __init__(self, state: DesiredState, config: RuntimeConfig | None = None, clock: Clock | None = None,
                 *, client: httpx.AsyncClient | None = None, sleep: SleepFn = asyncio.sleep,
                 rng: random.Random | None = None, retry: RetryPolicy | None = None,
                 max_concurrency: int = 64, environ: dict[str, str] | None = None,
                 before_send: BeforeSend | None = None) -> None:
        self.state = state
        self.config = config or RuntimeConfig()
        self.clock: Clock = clock or SystemClock()
        self._own_client = client is None
        self.client = client or default_client(max_connections=max_concurrency)
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retry = retry or RetryPolicy()
        self.environ = environ
        self.before_send = before_send  # awaited before every request (attempt) to a provider
        self.before_submit: BeforeSubmit | None = None  # awaited in the request slot, just before writing
        self._semaphore = asyncio.Semaphore(max_concurrency)
        self._adapters: dict[str, ProviderAdapter | ProviderError] = {}
        self._breakers: dict[str, CircuitBreakerState] = {}
        self._country_group = {c: g for g in state.groups.values() for c in g.spec.countries}

    async def __aenter__(self) -> GroupRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own_client:
            await self.client.aclose()

    # -- routing -------------------------------------------------------------------------

    def group_for(self, number: str, group: str | None = None) -> ProviderGroup:
        """The group for this number: the requested one, else its country's, else the default."""
        region = number_region(number)
        if group is not None:
            if group not in self.state.groups:
                raise RoutingError(f"unknown provider group '{group}'")
            return self.state.groups[group]
        chosen = self._country_group.get(region) or self.state.default_group()
        if chosen is None:
            raise RoutingError(f"no group routes {region or 'this country'} and no group is marked default")
        return chosen

    def adapter(self, provider_name: str) -> ProviderAdapter | ProviderError:
        """The provider's adapter (built once), or the configuration error that prevents it."""
        if provider_name not in self._adapters:
            provider = self.state.providers.get(provider_name)
            built: ProviderAdapter | ProviderError
            if provider is None:
                built = ProviderError(f"unknown provider '{provider_name}'", retryable=False, scope="provider")
            else:
                try:
                    built = build_adapter(provider, self.client, self.config, self.environ, self.state.settings)
                except (SecretError, ProviderConfigError, ValueError) as exc:
                    built = ProviderError(f"provider {provider_name} is misconfigured: {exc}",
                                          retryable=False, scope="provider")
            self._adapters[provider_name] = built
        return self._adapters[provider_name]

    def breaker(self, provider_name: str) -> CircuitBreakerState:
        return self._breakers.setdefault(provider_name, CircuitBreakerState())

    def breaker_state(self, provider_name: str, group: str | None = None) -> BreakerState:
        settings = self._settings(group)
        return self.breaker(provider_name).state(self.clock.now(), settings)

    def _settings(self, group: str | None) -> CircuitBreaker:
        if group and group in self.state.groups:
            return self.state.groups[group].spec.circuitBreaker
        return CircuitBreaker()

    # -- in-doubt lookups ------------------------------------------------------------------

    def can_look_up(self, provider_name: str) -> bool:
        adapter = self.adapter(provider_name)
        return isinstance(adapter, ProviderAdapter) and adapter.supports_lookup

    def lookup_delay(self, provider_name: str) -> float:
        adapter = self.adapter(provider_name)
        return adapter.lookup_delay if isinstance(adapter, ProviderAdapter) else 0.0

    async def look_up(self, provider_name: str, doubt: InDoubt) -> Found | ProviderError:
        """Ask `provider_name` whether it accepted the in-doubt message (see ProviderAdapter.lookup)."""
        adapter = self.adapter(provider_name)
        if isinstance(adapter, ProviderError):
            return adapter
        if not adapter.supports_lookup:
            return ProviderError(f"{provider_name} has no message lookup", retryable=False, scope="provider")
        async with self._semaphore:
            return await adapter.lookup(doubt)

    # -- sending -------------------------------------------------------------------------

    async def send(self, messages: Sequence[OutboundMessage], group: str | None = None, *,
                   on_result: ResultHook | None = None, deadline: float | None = None,
                   exclude: Collection[str] = (), prefer: str | None = None) -> list[SendResult]:
        """Send each message through its group (or `group`); one SendResult per message, in order.

        `on_result` is called with each message's final result the moment it is known (before the
        whole call returns), so a caller can record accepted messages without waiting for the rest.
        `deadline` (event-loop time, e.g. when the caller's claim on the messages ends): every
        attempt's timeout is shortened to end by it, no attempt starts with less than
        MIN_ATTEMPT_SECONDS (or the provider's timeout) left and no backoff sleeps past it; messages
        still unsent then fail as retryable. Providers named in `exclude` are passed over (an in-doubt
        message failed over by policy must not go back to the provider that may have it); `prefer` is
        tried first (an in-doubt message the provider turned out not to have goes back to it)."""
        tally = _Tally(on_result=on_result, deadline=deadline)
        by_group: dict[str, list[_Pending]] = {}
        for message in messages:
            try:
                chosen = self.group_for(message.to, group)
            except RoutingError as exc:
                tally.settle(result_from(
                    None, message, ProviderError(str(exc), retryable=False, scope="message"), attempts=0))
                continue
            by_group.setdefault(chosen.name, []).append(_Pending(message))
        await asyncio.gather(*(self._send_group(self.state.groups[name], pending, tally, exclude, prefer)
                               for name, pending in by_group.items()))
        return [tally.results[m.message_id] for m in messages]

    async def send_via(self, provider_name: str, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send through one named provider (test-send --provider): retries, but no failover."""
        tally = _Tally()
        pending: list[_Pending] = []
        for message in messages:
            try:
                number_region(message.to)
            except InvalidNumber as exc:
                tally.settle(result_from(
                    None, message, ProviderError(str(exc), retryable=False, scope="message"), attempts=0))
                continue
            pending.append(_Pending(message))
        left = await self._send_provider(provider_name, CircuitBreaker(), pending, tally, respect_breaker=False)
        self._finish(left, tally)
        return [tally.results[m.message_id] for m in messages]

    async def _send_group(self, group: ProviderGroup, pending: list[_Pending], tally: _Tally,
                          exclude: Collection[str] = (), prefer: str | None = None) -> None:
        settings = group.spec.circuitBreaker
        order = list(group.spec.providers)
        if prefer in order:
            order.remove(prefer)
            order.insert(0, prefer)
        for provider_name in order:
            if provider_name in exclude:
                continue
            if not pending:
                return
            pending = await self._send_provider(provider_name, settings, pending, tally)
        self._finish(pending, tally, probe_in=self._next_probe(group))

    def _next_probe(self, group: ProviderGroup) -> float | None:
        """Seconds until the first of the group's open circuits lets a probe through; None unless
        every circuit of the group is open."""
        now, settings = self.clock.now(), group.spec.circuitBreaker
        waits = []
        for name in group.spec.providers:
            breaker = self.breaker(name)
            if breaker.opened_at is None or breaker.state(now, settings) != "open":
                return None
            waits.append(settings.cooldownSeconds - (now - breaker.opened_at).total_seconds())
        return max(0.0, min(waits)) if waits else None

    def _finish(self, pending: list[_Pending], tally: _Tally, probe_in: float | None = None) -> None:
        """Settle what is still unsent. Never attempted because every circuit is open: retry_after
        says when a probe will be let through (so callers wait for it rather than spin)."""
        fallback = ("no provider available (all circuits open)" if tally.time_for(0)
                    else "out of time before the claim ends; retried later")
        for item in pending:
            error = item.last_error or ProviderError(fallback, retryable=True, scope="provider", retry_after=probe_in)
            tally.settle(result_from(item.last_provider, item.message, error, item.attempts))

    async def _send_provider(self, provider_name: str, settings: CircuitBreaker, pending: list[_Pending],
                             tally: _Tally, respect_breaker: bool = True) -> list[_Pending]:
        """Try one provider for every pending message; return those that should move on."""
        adapter = self.adapter(provider_name)
        if isinstance(adapter, ProviderError):
            for item in pending:
                item.last_error, item.last_provider = adapter, provider_name
            return pending
        chunks = [pending[i:i + adapter.max_batch] for i in range(0, len(pending), adapter.max_batch)]
        leftovers = await asyncio.gather(*(self._send_chunk(adapter, settings, chunk, tally, respect_breaker)
                                           for chunk in chunks))
        return [item for chunk in leftovers for item in chunk]

    async def _send_chunk(self, adapter: ProviderAdapter, settings: CircuitBreaker, chunk: list[_Pending],
                          tally: _Tally, respect_breaker: bool) -> list[_Pending]:
        breaker = self.breaker(adapter.name)
        for attempt in range(1, self.retry.attempts_per_provider + 1):
            spent = [p for p in chunk if p.attempts >= self.retry.max_total_attempts]
            self._finish(spent, tally)
            chunk = [p for p in chunk if p.attempts < self.retry.max_total_attempts]
            if not chunk:
                return []
            if tally.attempt_timeout(adapter.timeout) is None:
                return chunk
            if respect_breaker and not breaker.acquire(self.clock.now(), settings):
                return chunk
            holds_probe = respect_breaker and breaker.probing
            if self.before_send is not None:  # outside the semaphore: waiting holds no request slot
                allowed = await self.before_send(adapter.name, [p.message for p in chunk], tally.deadline)
                if allowed is False:  # no send tokens before the deadline: try the next provider
                    if holds_probe:
                        breaker.probing = False
                    return chunk
            async with self._semaphore:
                timeout = tally.attempt_timeout(adapter.timeout)
                if timeout is None or (self.before_submit is not None
                                       and not await self.before_submit([p.message for p in chunk])):
                    if holds_probe:  # out of time, or the attempt could not be marked: nothing was sent
                        breaker.probing = False  # give the probe back
                    return chunk
                outcomes = await adapter.submit([p.message for p in chunk],
                                                timeout=timeout if timeout < adapter.timeout else None)
            retry_later = self._settle(adapter.name, chunk, outcomes, tally)
            healthy = any(not isinstance(o, ProviderError) or o.scope == "message" for o in outcomes)
            breaker.record(healthy, self.clock.now(), settings)
            chunk = retry_later
            if not chunk:
                return []
            retryable = [p for p in chunk if p.last_error is not None and p.last_error.retryable]
            if len(retryable) != len(chunk) or attempt == self.retry.attempts_per_provider:
                return chunk  # account-level refusals (or attempts used up) move on now
            retry_after = max((p.last_error.retry_after or 0.0 for p in retryable if p.last_error), default=0.0)
            if retry_after > self.retry.max_retry_after:
                return chunk
            delay = self.retry.delay(attempt, retry_after, self.rng)
            if not tally.time_for(delay + min(adapter.timeout, MIN_ATTEMPT_SECONDS)):
                return chunk
            await self.sleep(delay)
        return chunk

    def _settle(self, provider: str, chunk: list[_Pending], outcomes: list[Outcome],
                tally: _Tally) -> list[_Pending]:
        """Record final results (accepted, refused for this message, or in doubt); return the messages
        that were refused for sure and so may still be sent (here or elsewhere)."""
        again: list[_Pending] = []
        for item, outcome in zip(chunk, outcomes, strict=True):
            item.attempts += 1
            item.last_provider = provider
            if (isinstance(outcome, ProviderError) and not outcome.ambiguous
                    and (outcome.scope == "provider" or outcome.retryable)):
                item.last_error = outcome
                again.append(item)
            else:
                tally.settle(result_from(provider, item.message, outcome, item.attempts))
        return again
