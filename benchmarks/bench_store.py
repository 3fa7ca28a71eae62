"""State-store throughput: enqueue, claim + complete (1 and 2 workers), receipts, on SQLite and PostgreSQL.

Run: .venv/bin/python benchmarks/bench_store.py [--rows N] [--batch B] [--postgres DSN]
The PostgreSQL DSN should point at a scratch schema (e.g. ...?options=-csearch_path%3Dbench).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta

from reconciler.clock import FakeClock
from reconciler.store import OutboxItem, SendResult, StateStore, idempotency_key, open_state_store

LEASE = timedelta(minutes=5)


def items(run: str, count: int, now: datetime) -> list[OutboxItem]:
    return [OutboxItem(idempotency_key(run, u), f"bench-{run}", f"user-{u}", f"+1555{u:07d}", now,
                       context={"first_name": "Ada", "n": u}) for u in range(count)]


def drain(stores: list[StateStore], batch: int, now: datetime) -> int:
    done = [0] * len(stores)

    def work(index: int, store: StateStore) -> None:
        worker = f"w{index}"
        while rows := store.claim(worker, batch, now, LEASE):
            store.complete(worker, [SendResult(r.id, "sent", "mock", f"{worker}-{r.id}") for r in rows])
            done[index] += len(rows)

    threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done)


def bench(url: str, rows: int, batch: int) -> dict[str, float]:
    clock = FakeClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    now = clock.now()
    figures: dict[str, float] = {}
    stores = [open_state_store(url, clock=clock) for _ in range(2)]
    try:
        start = time.perf_counter()
        stores[0].enqueue(items("a", rows, now))
        figures["enqueue rows/s"] = rows / (time.perf_counter() - start)
        start = time.perf_counter()
        assert stores[0].enqueue(items("a", rows, now)) == 0
        figures["re-enqueue (all duplicates) rows/s"] = rows / (time.perf_counter() - start)
        for workers in (1, 2):
            run = f"w{workers}"
            stores[0].enqueue(items(run, rows, now))
            start = time.perf_counter()
            sent = drain(stores[:workers], batch, now)
            figures[f"claim+complete, {workers} worker(s), rows/s"] = sent / (time.perf_counter() - start)
        start = time.perf_counter()
        sample = min(rows, 2000)
        for u in range(sample):
            stores[0].record_receipt("mock", f"w0-{u + 1}", "delivered", None, {"status": "delivered"})
        figures["receipts/s"] = sample / (time.perf_counter() - start)
    finally:
        for s in stores:
            s.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        targets = {"sqlite": f"sqlite:///{tmp}/state.db"}
        if args.postgres:
            targets["postgres"] = args.postgres
        print(f"Store benchmark: {args.rows} outbox rows per phase, claim batch {args.batch}")
        for name, url in targets.items():
            for label, value in bench(url, args.rows, args.batch).items():
                print(f"  {name:<9} {label:<42} {value:10,.0f}")


if __name__ == "__main__":
    main()
