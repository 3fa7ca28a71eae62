"""Token-bucket reservations: the rule, its window bound, and the same answers from every backend.

Time is injected (a fake `now` and a `sleep` that records), so nothing here waits in wall time,
except the checks that Redis and PostgreSQL use their own server clock when no `now` is given."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.metrics import Metrics
from reconciler.ratelimit import (
    InProcessRateLimiter,
    PostgresRateLimiter,
    RateLimiter,
    RateLimitTimeout,
    RedisRateLimiter,
    default_burst,
    make_rate_limiter,
    reserve,
)


class FakeTime:
    """`now` for the bucket; `sleep` records and, when `advance`, moves time (one waiter at a time)."""

    def __init__(self, start: float = 1000.0, advance: bool = True) -> None:
        self.t = start
        self.advance = advance
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.advance:
            self.t += seconds


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_new_bucket_starts_full_and_refills_at_rate() -> None:
    first = reserve(None, None, now=10.0, rate=2.0, burst=4, tokens=4)
    assert (first.level, first.wait) == (0.0, 0.0)
    second = reserve(first.level, first.at, now=10.0, rate=2.0, burst=4, tokens=1)
    assert second.wait == pytest.approx(0.5)  # one token at 2/s
    later = reserve(second.level, second.at, now=100.0, rate=2.0, burst=4, tokens=1)
    assert later.wait == 0.0 and later.level == 3.0  # refill is capped at burst


def test_request_larger_than_the_bucket_waits_for_a_full_bucket_then_leaves_debt() -> None:
    empty = reserve(None, None, now=0.0, rate=1.0, burst=2, tokens=2)
    big = reserve(empty.level, empty.at, now=0.0, rate=1.0, burst=2, tokens=5)
    assert big.wait == pytest.approx(2.0)  # until full (2 tokens), not until 5 tokens exist
    after = reserve(big.level, big.at, now=0.0, rate=1.0, burst=2, tokens=1)
    assert after.wait == pytest.approx(6.0)  # the debt of the batch (3) plus its own token


def test_a_wait_longer_than_max_wait_takes_nothing() -> None:
    empty = reserve(None, None, now=0.0, rate=2.0, burst=1, tokens=1)
    refused = reserve(empty.level, empty.at, now=0.1, rate=2.0, burst=1, tokens=1, max_wait=0.3)
    assert (refused.taken, refused.wait) == (False, pytest.approx(0.4))
    assert refused.level == pytest.approx(0.2)  # refilled to now, nothing subtracted
    taken = reserve(refused.level, refused.at, now=0.1, rate=2.0, burst=1, tokens=1, max_wait=0.4)
    assert taken.taken and taken.level == pytest.approx(-0.8)


def test_clock_going_backwards_never_adds_tokens() -> None:
    taken = reserve(None, None, now=50.0, rate=1.0, burst=1, tokens=1)
    back = reserve(taken.level, taken.at, now=40.0, rate=1.0, burst=1, tokens=1)
    assert back.wait == pytest.approx(1.0) and back.at == 50.0


def test_default_burst_is_one_seconds_worth() -> None:
    assert [default_burst(r) for r in (0.2, 1, 2.5, 100)] == [1, 1, 3, 100]


@pytest.mark.anyio
async def test_in_process_waits_through_the_injected_sleep_and_counts_metrics() -> None:
    fake = FakeTime()
    metrics = Metrics()
    limiter = InProcessRateLimiter(now=fake.now, sleep=fake.sleep, metrics=metrics)
    waits = [await limiter.acquire("provider:p", rate=4, burst=2) for _ in range(5)]
    assert waits == pytest.approx([0, 0, 0.25, 0.25, 0.25])
    assert fake.slept == pytest.approx([0.25, 0.25, 0.25])
    assert metrics.registry.get_sample_value(
        "herald_rate_limit_wait_seconds_total", {"bucket": "provider:p"}) == pytest.approx(0.75)
    assert await limiter.acquire("provider:other", rate=4, burst=2) == 0  # buckets are per key


@pytest.mark.anyio
async def test_in_process_concurrent_waiters_are_served_in_arrival_order() -> None:
    fake = FakeTime(advance=False)
    limiter = InProcessRateLimiter(now=fake.now, sleep=fake.sleep)
    waits = await asyncio.gather(*(limiter.acquire("k", rate=10, burst=1) for _ in range(6)))
    assert list(waits) == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5])


@pytest.mark.anyio
async def test_invalid_parameters_are_refused() -> None:
    limiter = InProcessRateLimiter()
    with pytest.raises(ValueError):
        await limiter.acquire("k", rate=0, burst=1)
    with pytest.raises(ValueError):
        await limiter.acquire("k", rate=1, burst=0)
    assert await limiter.acquire("k", rate=1, burst=1, tokens=0) == 0


Arrivals = list[tuple[float, int]]


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 50), burst=st.integers(1, 8),
       arrivals=st.lists(st.tuples(st.floats(0, 0.5), st.integers(1, 8)), min_size=1, max_size=60))
def test_grants_never_exceed_burst_plus_rate_times_window(rate: float, burst: int, arrivals: Arrivals) -> None:
    """For requests no larger than the bucket: in every window [g_i, g_j] of grant times at most
    burst + rate * (g_j - g_i) tokens are granted, and grants keep arrival order."""
    level: float | None = None
    at: float | None = None
    now = 0.0
    grants: list[tuple[float, int]] = []
    for gap, tokens in arrivals:
        now += gap
        tokens = min(tokens, burst)
        granted = reserve(level, at, now, rate, burst, tokens)
        level, at = granted.level, granted.at
        grants.append((now + granted.wait, tokens))
    times = [g for g, _ in grants]
    assert times == sorted(times)
    for i in range(len(grants)):
        total = 0
        for j in range(i, len(grants)):
            total += grants[j][1]
            assert total <= burst + rate * (grants[j][0] - grants[i][0]) + 1e-6


# ---------------------------------------------------------------- the shared backends


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    import redis

    prefix = f"herald-test:{uuid.uuid4().hex[:10]}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


LimiterFactory = Callable[[FakeTime], RateLimiter]


@pytest.fixture(params=["in-process", pytest.param("redis", marks=pytest.mark.redis),
                        pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[LimiterFactory]:
    made: list[RateLimiter] = []

    def factory(fake: FakeTime) -> RateLimiter:
        limiter: RateLimiter
        if request.param == "redis":
            url = request.getfixturevalue("redis_url")
            limiter = RedisRateLimiter(url, prefix=request.getfixturevalue("redis_prefix"), now=fake.now,
                                       sleep=fake.sleep)
        elif request.param == "postgres":
            limiter = PostgresRateLimiter(request.getfixturevalue("pg_dsn"), now=fake.now, sleep=fake.sleep)
        else:
            limiter = InProcessRateLimiter(now=fake.now, sleep=fake.sleep)
        made.append(limiter)
        return limiter

    yield factory
    for limiter in made:
        await limiter.aclose()


SCRIPT = [  # (seconds since the previous request, tokens, max_wait)
    (0.0, 1, None), (0.0, 1, None), (0.0, 1, None), (0.05, 2, None), (0.5, 1, 0.1), (0.5, 1, 0.1),
    (2.0, 1, None), (0.0, 3, None), (0.0, 9, 1.0), (0.0, 9, None), (0.1, 1, 0.0), (10.0, 2, 0.0),
]


@pytest.mark.anyio
async def test_every_backend_answers_the_same_waits(backend: LimiterFactory) -> None:
    fake = FakeTime(start=5000.0, advance=False)
    limiter = backend(fake)
    expected_level: float | None = None
    expected_at: float | None = None
    outcomes = []
    for gap, tokens, max_wait in SCRIPT:
        fake.t += gap
        expected = reserve(expected_level, expected_at, fake.t, 4.0, 3, tokens,
                           math.inf if max_wait is None else max_wait)
        expected_level, expected_at = expected.level, expected.at
        try:
            waited = await limiter.acquire("provider:p", 4.0, 3, tokens, max_wait=max_wait)
        except RateLimitTimeout as exc:
            assert not expected.taken
            assert exc.wait == pytest.approx(expected.wait, abs=1e-6)
            outcomes.append("refused")
        else:
            assert expected.taken
            assert waited == pytest.approx(expected.wait, abs=1e-6)
            outcomes.append("taken")
    assert outcomes.count("refused") == 2  # the script exercises both branches


@pytest.mark.anyio
async def test_limiters_share_buckets_through_their_store_only(backend: LimiterFactory,
                                                             request: pytest.FixtureRequest) -> None:
    """Two Redis or PostgreSQL limiters (two daemons) share a bucket; two in-process ones do not."""
    fake = FakeTime(advance=False)
    first, second = backend(fake), backend(fake)
    waits = [await limiter.acquire("provider:shared", rate=2, burst=2) for limiter in (first, second) * 2]
    shared = "in-process" not in request.node.callspec.id
    assert waits == pytest.approx([0, 0, 0.5, 1.0] if shared else [0, 0, 0, 0])


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_uses_server_time_and_expires_idle_buckets(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio as aioredis

    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    limiter = RedisRateLimiter(redis_url, prefix=redis_prefix, sleep=record)
    try:
        for _ in range(3):
            await limiter.acquire("provider:p", rate=5, burst=2)
        client = aioredis.Redis.from_url(redis_url)
        ttl_ms = await client.pttl(f"{redis_prefix}provider:p")
        await client.aclose()
    finally:
        await limiter.aclose()
    assert len(slept) == 1 and 0.15 < slept[0] <= 0.2  # 1/5 s, less whatever real time passed
    assert 0 < ttl_ms <= 1000 + 1000 * (2 + 1) / 5  # gone once it would be full again


@pytest.mark.postgres
@pytest.mark.anyio
async def test_postgres_uses_database_time_and_one_row_per_bucket(pg_dsn: str) -> None:
    import psycopg

    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    limiters = [PostgresRateLimiter(pg_dsn, sleep=record) for _ in range(2)]
    try:
        for limiter in limiters:  # open the pools first: the takes below must be close together in time
            await limiter.acquire("warm-up", rate=100, burst=2)
        assert slept == []
        await asyncio.gather(*(limiter.acquire("provider:p", rate=5, burst=2) for limiter in limiters * 2))
        await limiters[0].acquire("campaign:c", rate=1, burst=1)
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert len(slept) == 2 and sorted(slept)[1] > 0.3  # the 3rd and 4th tokens: ~0.2 s and ~0.4 s
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT key FROM herald_rate_buckets ORDER BY key").fetchall()
    assert [r[0] for r in rows] == ["campaign:c", "provider:p", "warm-up"]


def test_make_rate_limiter_picks_the_backend_from_the_stores() -> None:
    assert isinstance(make_rate_limiter("sqlite:///.herald/state.db"), InProcessRateLimiter)
    assert isinstance(make_rate_limiter("postgresql://db/herald"), PostgresRateLimiter)
    assert isinstance(make_rate_limiter("postgresql://db/herald", "redis://cache:6379/0"), RedisRateLimiter)
    assert isinstance(make_rate_limiter("sqlite:///x.db", "redis://cache:6379/0"), RedisRateLimiter)


@pytest.mark.postgres
@pytest.mark.anyio
async def test_postgres_daemons_starting_together_create_the_table_once(pg_dsn: str) -> None:
    """CREATE TABLE IF NOT EXISTS is not race-free in PostgreSQL; the loser's error is absorbed."""
    limiters = [PostgresRateLimiter(pg_dsn, sleep=FakeTime().sleep) for _ in range(6)]
    try:
        waits = await asyncio.gather(*(limiter.acquire(f"provider:{i}", 1, 1) for i, limiter in enumerate(limiters)))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    assert list(waits) == [0.0] * 6
