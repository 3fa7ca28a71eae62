"""Send-rate limits: token buckets shared by every worker of a daemon, or by every daemon.

One bucket per key ("provider:<name>", "campaign:<name>"). A bucket holds at most `burst` tokens
and refills at `rate` tokens per second. Taking tokens is a *reservation*: the backend refills the
bucket to the current time, subtracts the tokens (the level may go negative: reservations not yet
due) and answers how long the caller must wait before its tokens are really there. The caller then
sleeps that long and sends. One round trip per acquire, first come first served, and nobody polls.

Rule for a request of `tokens` (the same in Python, in Redis Lua and in PostgreSQL SQL):
    level  = min(burst, level + rate * max(0, now - at)); at = max(at, now)
    wait   = max(0, min(tokens, burst) - level) / rate
    level -= tokens
A request larger than the bucket (a big provider batch) waits until the bucket is full, then leaves
it in debt, so the long-run rate still holds. Grants therefore satisfy: in any window of W seconds
at most burst + rate * W tokens are granted.

Backends (see make_rate_limiter):
- InProcessRateLimiter: one daemon (SQLite store); shared by its workers, asyncio- and thread-safe.
- RedisRateLimiter: every daemon using the same Redis; atomic Lua script using the server's TIME.
- PostgresRateLimiter: every daemon using the same database; one row per bucket, one atomic
  INSERT ... ON CONFLICT DO UPDATE ... RETURNING per acquire, using the database clock.
The waiting goes through an injectable `sleep`, and the bucket time through an injectable `now`
(server time for Redis/PostgreSQL when not given), so tests need not wait in wall time.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from .encoding import analyze

if TYPE_CHECKING:
    from .loading import DesiredState
    from .metrics import Metrics
    from .models import Campaign, Provider
    from .providers.base import OutboundMessage

SleepFn = Callable[[float], Awaitable[None]]
NowFn = Callable[[], float]
Unit = Literal["message", "segment"]
DEFAULT_REDIS_PREFIX = "herald:ratelimit:"
DEFAULT_PG_TABLE = "herald_rate_buckets"
_EPSILON = 1e-9  # waits shorter than this are rounding noise


class RateLimitTimeout(Exception):
    """The tokens would come later than `max_wait` allows; nothing was taken from the bucket."""

    def __init__(self, key: str, wait: float) -> None:
        super().__init__(f"{key}: tokens in {wait:.3f} s, later than allowed")
        self.key = key
        self.wait = wait


class RateLimiter(Protocol):
    async def acquire(self, key: str, rate: float, burst: int, tokens: int = 1, *,
                      max_wait: float | None = None) -> float:
        """Wait until `tokens` may be spent from bucket `key`; returns the seconds waited. With
        `max_wait`, a longer wait takes nothing and raises RateLimitTimeout instead of waiting."""
        ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Reservation:
    level: float  # bucket level after taking (negative: reserved ahead)
    at: float  # bucket time the level refers to
    wait: float  # seconds until the reserved tokens are there
    taken: bool = True  # False: the wait exceeded max_wait and the level is only refilled


def reserve(level: float | None, at: float | None, now: float, rate: float, burst: int,
            tokens: int, max_wait: float = math.inf) -> Reservation:
    """The bucket rule (module docstring). `level is None`: a new bucket, which starts full."""
    if level is None or at is None:
        level, at = float(burst), now
    elif now > at:
        level, at = min(float(burst), level + (now - at) * rate), now
    need = min(tokens, burst)
    wait = max(0.0, need - level) / rate
    if wait > max_wait:
        return Reservation(level, at, wait, taken=False)
    return Reservation(level - tokens, at, wait)


def default_burst(rate: float) -> int:
    """One second's worth of tokens, at least one."""
    return max(1, math.ceil(rate))


def _check(rate: float, burst: int) -> None:
    if not rate > 0 or not math.isfinite(rate):
        raise ValueError(f"rate must be a positive number, not {rate!r}")
    if burst < 1:
        raise ValueError(f"burst must be at least 1, not {burst!r}")


class _ReservingLimiter:
    """Shared acquire(): reserve in the backend, then sleep the answer, then count it in metrics."""

    def __init__(self, *, sleep: SleepFn | None = None, metrics: Metrics | None = None) -> None:
        self.sleep: SleepFn = sleep or asyncio.sleep
        self.metrics = metrics

    async def acquire(self, key: str, rate: float, burst: int, tokens: int = 1, *,
                      max_wait: float | None = None) -> float:
        _check(rate, burst)
        if tokens <= 0:
            return 0.0
        limit = math.inf if max_wait is None else max(0.0, max_wait)
        wait, taken = await self._reserve(key, rate, burst, tokens, limit)
        if not taken:
            raise RateLimitTimeout(key, wait)
        if wait <= _EPSILON:
            return 0.0
        if self.metrics is not None:
            self.metrics.rate_limit_wait.labels(bucket=key).inc(wait)
        await self.sleep(wait)
        return wait

    async def _reserve(self, key: str, rate: float, burst: int, tokens: int,
                       max_wait: float) -> tuple[float, bool]:
        """(wait, taken) for one atomic reservation in the backend."""
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class InProcessRateLimiter(_ReservingLimiter):
    """Buckets in this process's memory: shared by all workers (tasks or threads) of one daemon."""

    def __init__(self, *, now: NowFn = time.monotonic, sleep: SleepFn | None = None,
                 metrics: Metrics | None = None) -> None:
        super().__init__(sleep=sleep, metrics=metrics)
        self.now = now
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def _reserve(self, key: str, rate: float, burst: int, tokens: int,
                       max_wait: float) -> tuple[float, bool]:
        with self._lock:
            level, at = self._buckets.get(key, (None, None))
            granted = reserve(level, at, self.now(), rate, burst, tokens, max_wait)
            self._buckets[key] = (granted.level, granted.at)
        return granted.wait, granted.taken


# KEYS[1] bucket; ARGV rate, burst, tokens, now (negative: use the server's TIME), max_wait
# (negative: no limit). Replies {wait, taken}; floats go back as strings (Redis would truncate a
# Lua number reply to an integer).
_LUA_RESERVE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local saved = redis.call('HMGET', KEYS[1], 'level', 'at')
local level, at
if saved[1] and saved[2] then
  level = tonumber(saved[1])
  at = tonumber(saved[2])
  if now > at then
    level = math.min(burst, level + (now - at) * rate)
    at = now
  end
else
  level = burst
  at = now
end
local max_wait = tonumber(ARGV[5])
local wait = math.max(0, math.min(tokens, burst) - level) / rate
local taken = max_wait < 0 or wait <= max_wait
if taken then
  level = level - tokens
end
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'at', string.format('%.17g', at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
return {string.format('%.17g', wait), taken and '1' or '0'}
"""


class RedisRateLimiter(_ReservingLimiter):
    """Buckets in Redis (a hash per bucket that expires once it would be full again)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_REDIS_PREFIX, now: NowFn | None = None,
                 sleep: SleepFn | None = None, metrics: Metrics | None = None) -> None:
        super().__init__(sleep=sleep, metrics=metrics)
        self.url = url
        self.prefix = prefix
        self.now = now
        self._client: Any = None
        self._script: Any = None

    def _ensure(self) -> Any:
        if self._script is None:
            import redis.asyncio as aioredis

            self._client = aioredis.Redis.from_url(self.url)
            self._script = self._client.register_script(_LUA_RESERVE)
        return self._script

    async def _reserve(self, key: str, rate: float, burst: int, tokens: int,
                       max_wait: float) -> tuple[float, bool]:
        script = self._ensure()
        now = -1.0 if self.now is None else self.now()
        limit = -1.0 if math.isinf(max_wait) else max_wait
        wait, taken = await script(keys=[self.prefix + key],
                                   args=[repr(float(rate)), burst, tokens, repr(now), repr(limit)])
        return float(wait), taken in (b"1", "1")

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = self._script = None


class PostgresRateLimiter(_ReservingLimiter):
    """Buckets as rows of one table in the state database (created on first use)."""

    def __init__(self, dsn: str, *, table: str = DEFAULT_PG_TABLE, now: NowFn | None = None,
                 sleep: SleepFn | None = None, metrics: Metrics | None = None, max_connections: int = 4) -> None:
        super().__init__(sleep=sleep, metrics=metrics)
        if not table.replace("_", "").isalnum():
            raise ValueError(f"invalid table name {table!r}")
        self.dsn = dsn
        self.table = table
        self.now = now
        self.max_connections = max_connections
        self._pool: Any = None
        self._opening = asyncio.Lock()
        # In ON CONFLICT ... SET every expression sees the old row, so the refilled level and the wait
        # are spelled out where they are needed; last_wait tells the caller what was decided.
        refilled = "LEAST(%(burst)s, b.level + %(rate)s * GREATEST(0, EXCLUDED.at - b.at))"
        wait = f"GREATEST(0, LEAST(%(tokens)s, %(burst)s) - {refilled}) / %(rate)s"
        self._sql = (
            f"INSERT INTO {table} AS b (key, level, at, last_wait)"
            " VALUES (%(key)s, %(burst)s - %(tokens)s,"
            "         COALESCE(%(now)s::double precision, extract(epoch FROM clock_timestamp())::double precision),"
            "         0)"
            " ON CONFLICT (key) DO UPDATE SET"
            f"   level = {refilled} - CASE WHEN {wait} <= %(max_wait)s THEN %(tokens)s ELSE 0 END,"
            "   at = GREATEST(b.at, EXCLUDED.at),"
            f"   last_wait = {wait}"
            " RETURNING last_wait"
        )

    async def _ensure(self) -> Any:
        async with self._opening:
            if self._pool is None:
                from psycopg_pool import AsyncConnectionPool

                pool = AsyncConnectionPool(self.dsn, min_size=1, max_size=self.max_connections, open=False,
                                           kwargs={"autocommit": True}, configure=self._configure)
                await pool.open(wait=True)
                async with pool.connection() as conn:
                    await self._create_table(conn)
                self._pool = pool
        return self._pool

    @staticmethod
    async def _configure(conn: Any) -> None:
        await conn.execute("SET synchronous_commit TO off")

    async def _create_table(self, conn: Any) -> None:
        # UNLOGGED and no synchronous commit: a bucket is worth milliseconds; after a database crash
        # (or a failover to a standby) buckets simply start full again. About 4x the acquires per second.
        ddl = (f"CREATE UNLOGGED TABLE IF NOT EXISTS {self.table} (key text PRIMARY KEY,"
               " level double precision NOT NULL, at double precision NOT NULL,"
               " last_wait double precision NOT NULL DEFAULT 0)")
        # IF NOT EXISTS is not race-free (daemons starting together fail on pg_type): serialize it
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"herald:{self.table}",))
            await conn.execute(ddl)

    async def _reserve(self, key: str, rate: float, burst: int, tokens: int,
                       max_wait: float) -> tuple[float, bool]:
        pool = self._pool or await self._ensure()
        now = None if self.now is None else self.now()
        async with pool.connection() as conn:
            cursor = await conn.execute(self._sql, {"key": key, "rate": float(rate), "burst": float(burst),
                                                    "tokens": float(tokens), "now": now, "max_wait": max_wait})
            row = await cursor.fetchone()
        wait = float(row[0])
        return wait, wait <= max_wait

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


def make_rate_limiter(state_url: str, redis_url: str | None = None, *, metrics: Metrics | None = None,
                      sleep: SleepFn | None = None) -> RateLimiter:
    """The limiter a daemon should use: Redis when HERALD_REDIS_URL is given; else a PostgreSQL bucket
    when the state store is PostgreSQL (several daemons); else in-process (SQLite: one daemon).
    Connections are opened on first use; call aclose() when done."""
    if redis_url:
        return RedisRateLimiter(redis_url, metrics=metrics, sleep=sleep)
    if state_url.startswith(("postgresql://", "postgres://")):
        return PostgresRateLimiter(state_url, metrics=metrics, sleep=sleep)
    return InProcessRateLimiter(metrics=metrics, sleep=sleep)


# ---------------------------------------------------------------- limits of providers and campaigns


@dataclass(frozen=True)
class BucketLimit:
    key: str
    rate: float
    burst: int
    unit: Unit = "message"

    def tokens_for(self, messages: Sequence[OutboundMessage]) -> int:
        if self.unit == "segment":
            return sum(analyze(m.body).segments for m in messages)
        return len(messages)


def provider_limit(provider: Provider | None) -> BucketLimit | None:
    """The provider's bucket. A provider document is one account with one sender (from number or
    Messaging Service), so this is also the per-sender bucket: declare one provider per sender."""
    limit = provider.spec.rateLimit if provider is not None else None
    if limit is None or provider is None:
        return None
    return BucketLimit(f"provider:{provider.name}", limit.messagesPerSecond,
                       limit.burst or default_burst(limit.messagesPerSecond), limit.unit)


def campaign_limit(campaign: Campaign | None) -> BucketLimit | None:
    limit = campaign.spec.rateLimit if campaign is not None else None
    if limit is None or campaign is None:
        return None
    return BucketLimit(f"campaign:{campaign.name}", limit.messagesPerSecond, default_burst(limit.messagesPerSecond))


class SendRateGuard:
    """GroupRouter's `before_send` hook: before each request to a provider, wait for the tokens of the
    campaigns in it (message metadata "campaign") and then of the provider. The provider's tokens are
    taken last so the request goes out as soon as they are granted (a later send than granted could
    bunch up with the next grants). Reads the limits from `state` at call time, so a daemon that
    updates its DesiredState in place applies new limits without a restart.

    With a `deadline` (event-loop time by which the request must have ended, like GroupRouter's send
    deadline) a token that would come too late is not taken and the call returns False at once: the
    caller should not send now. Without that, a worker holding more messages than the rate allows
    before its lease ends would sleep past the lease and keep the bucket reserved for messages it
    then does not send."""

    def __init__(self, limiter: RateLimiter, state: DesiredState) -> None:
        self.limiter = limiter
        self.state = state

    async def __call__(self, provider_name: str, messages: Sequence[OutboundMessage],
                       deadline: float | None = None) -> bool:
        """True when the request may go out now; False (provider tokens untouched) when not before
        the deadline."""
        provider = self.state.providers.get(provider_name)
        request_time = provider.spec.timeoutSeconds if provider is not None else 0.0
        try:
            for name in sorted({m.metadata.get("campaign", "") for m in messages} - {""}):
                limit = campaign_limit(self.state.campaigns.get(name))
                if limit is not None:
                    mine = [m for m in messages if m.metadata.get("campaign") == name]
                    await self.limiter.acquire(limit.key, limit.rate, limit.burst, limit.tokens_for(mine),
                                               max_wait=_time_left(deadline, request_time))
            limit = provider_limit(provider)
            if limit is not None:
                await self.limiter.acquire(limit.key, limit.rate, limit.burst, limit.tokens_for(messages),
                                           max_wait=_time_left(deadline, request_time))
        except RateLimitTimeout:
            return False
        return True


def _time_left(deadline: float | None, request_time: float) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - asyncio.get_running_loop().time() - request_time)
