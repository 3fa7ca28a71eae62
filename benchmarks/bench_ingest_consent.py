"""Bulk `herald ingest users` with and without the consent ledger: seconds for N users, in process.

Two passes per store: a first load of N new users (1 in 10 opted out: N/10 ledger entries), then a
reload of the same users with 1 in 20 flipped (N/20 entries). Each pass runs without consent
recording (`on_consent=None`, Herald before the ledger) and with it (IngestLedger on a fresh state
store: SQLite beside DuckDB, PostgreSQL beside PostgreSQL), alternating, best of --repeat. Usage:

    .venv/bin/python benchmarks/bench_ingest_consent.py [--users 100000] [--repeat 2]
                                                        [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from bench_ingest import fresh_schema  # noqa: E402

from reconciler.audience import open_audience_store  # noqa: E402
from reconciler.audience.ingest import ingest_file  # noqa: E402
from reconciler.clock import SystemClock  # noqa: E402
from reconciler.consent import IngestLedger  # noqa: E402
from reconciler.store import open_state_store  # noqa: E402

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def write_files(folder: Path, users: int) -> tuple[Path, Path]:
    first, second = folder / "users.jsonl", folder / "users-again.jsonl"
    with first.open("w") as one, second.open("w") as two:
        for i in range(users):
            row = {"id": f"u{i}", "phone": f"+1415555{i % 10_000:04d}", "timezone": "UTC", "plan": "pro"}
            one.write(json.dumps({**row, "opted_out": i % 10 == 0}) + "\n")
            two.write(json.dumps({**row, "opted_out": (i % 10 == 0) != (i % 20 == 1)}) + "\n")
    return first, second


@contextlib.contextmanager
def stores(kind: str, folder: Path, tag: str, pg: str | None) -> Iterator[tuple[str, str]]:
    if kind == "duckdb":
        yield f"duckdb:///{folder}/{tag}.duckdb", f"sqlite:///{folder}/{tag}-state.db"
        return
    assert pg is not None
    with fresh_schema(pg) as audience, fresh_schema(pg) as state:
        yield audience, state


def one_run(kind: str, folder: Path, tag: str, files: tuple[Path, Path], pg: str | None,
            ledger_on: bool) -> tuple[list[float], int]:
    seconds, recorded = [], 0
    with stores(kind, folder, tag, pg) as (audience_url, state_url):
        audience = open_audience_store(audience_url)
        try:
            for path in files:
                ledger = IngestLedger(lambda: open_state_store(state_url), SystemClock(), "bench", path.name) \
                    if ledger_on else None
                started = time.perf_counter()
                report = ingest_file(audience, path, "users", now=NOW, on_consent=ledger)
                if ledger is not None:
                    ledger.close()
                    recorded += ledger.recorded
                    assert ledger.error is None, ledger.error
                seconds.append(time.perf_counter() - started)
                assert report.accepted == report.rows
        finally:
            audience.close()
    return seconds, recorded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pg", default=None, help="PostgreSQL DSN: also measure PostgreSQL stores")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = write_files(folder, args.users)
        for kind in ("duckdb", "postgresql") if args.pg else ("duckdb",):
            best: dict[bool, list[float]] = {}
            recorded = 0
            for attempt in range(args.repeat):
                for ledger_on in (False, True):
                    times, count = one_run(kind, folder, f"{kind}-{attempt}-{ledger_on}", files, args.pg, ledger_on)
                    recorded = count or recorded
                    best[ledger_on] = [min(a, b) for a, b in zip(best.get(ledger_on, times), times, strict=True)]
            print(f"{kind}: {args.users:,} users, first load {best[False][0]:.2f} s without the ledger, "
                  f"{best[True][0]:.2f} s with; reload (1 in 20 flipped) {best[False][1]:.2f} s / "
                  f"{best[True][1]:.2f} s; {recorded:,} ledger entries")


if __name__ == "__main__":
    main()
