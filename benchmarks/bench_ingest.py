"""Sustained event ingest through the real daemon on loopback: events/s and latency percentiles.

Starts `herald run` (SQLite state, DuckDB audience; or PostgreSQL for both with --pg DSN) on a
repository without live campaigns, then POSTs /v1/events from N connections for D seconds with an
httpx async client (bounded: one request in flight per connection), single events and batches.
Client and daemon share this machine's cores. Usage:

    .venv/bin/python benchmarks/bench_ingest.py [--seconds 10] [--concurrency 16] [--batch 1 --batch 100]
                                                [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from daemon_harness import (  # noqa: E402
    DaemonProcess,
    ingest,
    ingest_load,
    mock_provider,
    population,
    standard_files,
    write_repo,
)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def fresh_schema(base_dsn: str) -> Iterator[str]:
    """A DSN whose search_path is a new schema, dropped afterwards."""
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{base_dsn}{'&' if '?' in base_dsn else '?'}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base_dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch", type=int, action="append", help="events per request (repeatable)")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--pg", help="PostgreSQL DSN for state and audience (default: SQLite + DuckDB)")
    args = parser.parse_args()
    batches = args.batch or [1, 100]
    users = population(args.users)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        mock = stack.enter_context(mock_provider())
        dsn = stack.enter_context(fresh_schema(args.pg)) if args.pg else None
        state_url = dsn or f"sqlite:///{work / 'state.db'}"
        audience_url = dsn or f"duckdb:///{work / 'audience.duckdb'}"
        ingest(audience_url, users)
        repo = write_repo(work / "repo", standard_files())
        daemon = DaemonProcess(work / "daemon", str(repo.working_tree_dir), state_url, audience_url, mock.url,
                               poll_interval=600)
        daemon.start()
        try:
            daemon.wait_healthy()
            assert daemon.process is not None
            print(f"herald run on {'PostgreSQL' if args.pg else 'SQLite + DuckDB'}; {args.users} users; "
                  f"{args.concurrency} connections; {os.cpu_count()} CPUs shared by client and daemon")
            for batch in batches:
                cpu_before, client_before = _cpu_seconds(daemon.process.pid), time.process_time()
                result = asyncio.run(ingest_load(daemon.base_url, [u["id"] for u in users], seconds=args.seconds,
                                                 concurrency=args.concurrency, batch=batch))
                cpu = _cpu_seconds(daemon.process.pid) - cpu_before
                client = time.process_time() - client_before
                print(f"batch {batch:>4}: {result.summary()}")
                print(f"            CPU per request: daemon {cpu / max(result.requests, 1) * 1000:.2f} ms, "
                      f"load client {client / max(result.requests, 1) * 1000:.2f} ms")
        finally:
            daemon.terminate()


if __name__ == "__main__":
    main()
