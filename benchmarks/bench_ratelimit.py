"""Send-rate limiter figures: cost of one acquire per backend, and accuracy against the mock provider.

Run: .venv/bin/python benchmarks/bench_ratelimit.py [--skip-accuracy]
Needs Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 (HERALD_TEST_REDIS / HERALD_TEST_PG)
for those backends; a backend that is not reachable is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.config import RuntimeConfig
from reconciler.loading import SourceFile, load_files
from reconciler.providers import GroupRouter, OutboundMessage
from reconciler.providers.mock_server import running_mock_server
from reconciler.ratelimit import (
    InProcessRateLimiter,
    PostgresRateLimiter,
    RateLimiter,
    RedisRateLimiter,
    SendRateGuard,
)

PG = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("HERALD_TEST_REDIS", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


Factory = Callable[[str], RateLimiter]


@asynccontextmanager
async def backends() -> AsyncIterator[dict[str, Factory]]:
    """name -> factory(prefix) making a limiter; every limiter of one name shares its buckets."""
    found: dict[str, Factory] = {}
    shared = InProcessRateLimiter()
    found["in-process"] = lambda _prefix: shared
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=0.5).ping()
        found["redis"] = lambda prefix: RedisRateLimiter(REDIS, prefix=prefix)
    except Exception as exc:
        print(f"redis: skipped ({type(exc).__name__})")
    try:
        async with pg_schema() as dsn:
            found["postgres"] = lambda _prefix: PostgresRateLimiter(dsn)
            yield found
            return
    except Exception as exc:
        if "postgres" in found:
            raise
        print(f"postgres: skipped ({type(exc).__name__})")
    yield found


async def acquire_cost(name: str, factory: Factory, count: int, concurrency: int) -> None:
    limiter = factory(f"bench:{uuid.uuid4().hex[:8]}:")
    await limiter.acquire("warmup", 1e6, 1_000_000)
    per_task = count // concurrency
    latencies: list[float] = []

    async def task(i: int) -> None:
        for _ in range(per_task):
            start = time.perf_counter()
            await limiter.acquire(f"provider:bench-{i % 4}", 1e6, 1_000_000)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(task(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    p50 = statistics.median(latencies) * 1e6
    p99 = latencies[int(len(latencies) * 0.99)] * 1e6
    print(f"{name:>10}  concurrency {concurrency:>2}: {len(latencies) / elapsed:>9,.0f} acquires/s"
          f"  p50 {p50:>7.0f} us  p99 {p99:>7.0f} us")
    if not isinstance(limiter, InProcessRateLimiter):
        await limiter.aclose()


STATE = """
apiVersion: herald/v1
kind: Provider
metadata: {{name: limited}}
spec:
  type: twilio
  accountSid: AC0123456789abcdef0123456789abcdef
  authToken: {{secretRef: {{env: T_TOKEN}}}}
  from: "+14155550100"
  rateLimit: {{messagesPerSecond: {rate}, burst: {burst}}}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {{name: main}}
spec: {{default: true, providers: [limited]}}
"""


def max_in_window(times: list[float], width: float) -> int:
    best, end = 0, 0
    for start, t in enumerate(times):
        end = max(end, start)
        while end < len(times) and times[end] <= t + width:
            end += 1
        best = max(best, end - start)
    return best


async def accuracy(name: str, factory: Factory, rate: int, burst: int, per_worker: int, workers: int) -> None:
    state = load_files([SourceFile("s.yaml", STATE.format(rate=rate, burst=burst).encode())]).state
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    with running_mock_server() as url:
        limiters = [factory(prefix) for _ in range(workers)]
        routers = [GroupRouter(state, RuntimeConfig(provider_base_url=url), environ={"T_TOKEN": "tok-bench"},
                               before_send=SendRateGuard(limiter, state)) for limiter in limiters]
        batches = [[OutboundMessage(f"w{w}-{i}", f"+1415555{w}{i:03d}", "hi") for i in range(per_worker)]
                   for w in range(workers)]
        start = time.perf_counter()
        await asyncio.gather(*(r.send(b) for r, b in zip(routers, batches, strict=True)))
        elapsed = time.perf_counter() - start
        for r in routers:
            await r.aclose()
        for limiter in {id(x): x for x in limiters}.values():
            await limiter.aclose()
        times = sorted(m["received_at"] for m in httpx.get(f"{url}/_mock/messages").json()["messages"])
    total = len(times)
    steady = (total - burst) / (times[-1] - times[0])
    print(f"{name:>10}  {workers} workers, {total} msgs at {rate}/s burst {burst}: {elapsed:5.2f} s;"
          f" max in any 1 s window {max_in_window(times, 1.0)} (bound {burst + rate});"
          f" steady rate {steady:5.2f}/s")


async def main(skip_accuracy: bool) -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    async with backends() as found:
        print("-- cost of one acquire (no waiting)")
        for name, factory in found.items():
            await acquire_cost(name, factory, 4000, 1)
            await acquire_cost(name, factory, 8000, 16)
        if skip_accuracy:
            return
        print("-- accuracy against the mock provider (receive timestamps)")
        for name, factory in found.items():
            await accuracy(name, factory, rate=20, burst=5, per_worker=40, workers=2)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-accuracy", action="store_true")
    asyncio.run(main(parser.parse_args().skip_accuracy))
