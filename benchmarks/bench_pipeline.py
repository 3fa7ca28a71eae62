"""Messages per second end to end through the real daemon: scheduled run → audience → outbox →
render → route → provider (the mock) → recorded as sent.

Starts `herald run` (SQLite + DuckDB, or PostgreSQL with --pg; optionally two daemons sharing the
queue with --daemons 2), commits a one-time campaign for N users a few seconds ahead, and times the
run from its scheduled moment to the first accepted message, to the last, and until every outbox row
is recorded. The mock provider runs in this process. Usage:

    .venv/bin/python benchmarks/bench_pipeline.py [--messages 10000] [--workers 4] [--daemons 1]
                                                  [--pg postgresql://postgres@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]

from bench_ingest import fresh_schema  # noqa: E402
from daemon_harness import (  # noqa: E402
    DaemonProcess,
    campaign_yaml,
    exactly_once_report,
    ingest,
    metric_value,
    mock_provider,
    population,
    schedule_soon,
    standard_files,
    wait_for,
    write_repo,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--daemons", type=int, default=1)
    parser.add_argument("--pg", help="PostgreSQL DSN for state and audience (default: SQLite + DuckDB)")
    args = parser.parse_args()
    if args.daemons > 1 and not args.pg:
        parser.error("several daemons need --pg (a DuckDB file belongs to one process)")
    users = population(args.messages)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        mock = stack.enter_context(mock_provider())
        dsn = stack.enter_context(fresh_schema(args.pg)) if args.pg else None
        state_url = dsn or f"sqlite:///{work / 'state.db'}"
        audience_url = dsn or f"duckdb:///{work / 'audience.duckdb'}"
        ingest(audience_url, users)
        repo = write_repo(work / "repo", standard_files())
        daemons = [DaemonProcess(work / f"d{i}", str(repo.working_tree_dir), state_url, audience_url, mock.url,
                                 name=f"d{i}", workers=args.workers, lease_seconds=30, poll_interval=600)
                   for i in range(args.daemons)]
        for daemon in daemons:
            daemon.start()
        try:
            for daemon in daemons:
                daemon.wait_healthy()
                daemon.wait_applied(repo.head.commit.hexsha)
            once = schedule_soon(repo, daemons[0], lambda at: {"campaigns/blast.yaml": campaign_yaml("blast", at)})
            for daemon in daemons[1:]:
                daemon.sync()
            wait_for(lambda: datetime.now(UTC) >= once, 30, "the campaign's moment", poll=0.01)
            start = time.monotonic()
            wait_for(lambda: mock.accepted() > 0, 60, "the first message", poll=0.005)
            first = time.monotonic() - start
            wait_for(lambda: mock.accepted() >= args.messages, 600, "every message", poll=0.01)
            last = time.monotonic() - start
            wait_for(lambda: metric_value(daemons[0].metrics(), "herald_outbox_queue_depth") == 0, 120,
                     "every message recorded", poll=0.02)
            recorded = time.monotonic() - start
        finally:
            for daemon in daemons:
                daemon.terminate()
        report = exactly_once_report(mock, {u["phone"] for u in users})
        print(f"{args.messages} messages, {args.daemons} daemon(s) x {args.workers} workers, "
              f"{'PostgreSQL' if args.pg else 'SQLite + DuckDB'}, mock provider (twilio API) in this process")
        print(f"scheduled moment → first accepted {first:.2f}s, → last accepted {last:.2f}s, → all recorded "
              f"{recorded:.2f}s")
        print(f"end to end: {args.messages / recorded:,.0f} messages/s; sending phase: "
              f"{args.messages / max(last - first, 1e-9):,.0f} messages/s")
        print(f"exactly once: missing {len(report['missing'])}, doubled {len(report['doubled'])}, "
              f"resends absorbed {report['resends_absorbed']}")


if __name__ == "__main__":
    main()
