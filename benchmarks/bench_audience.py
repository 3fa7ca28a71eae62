"""Audience benchmark: 1M users and 10M events, reach estimates, streamed materialization, renders/s.

Data is generated inside the engine with SQL (no row-by-row Python). Materialization runs in a fresh
child process so its peak RSS measures only the streaming consumer, not the data generation.

    .venv/bin/python benchmarks/bench_audience.py [--users 1000000] [--events 10000000]
        [--compare sqlite,postgres] [--pg DSN] [--keep DIR]

Targets: reach estimate < 1 s, 1M-recipient audience streamed with peak RSS < 500 MB,
>= 50,000 renders/s with cached templates.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reconciler.audience import open_audience_store, select_audience  # noqa: E402
from reconciler.audience.duckdb_store import DuckDBAudienceStore  # noqa: E402
from reconciler.audience.store import AudienceStore  # noqa: E402
from reconciler.loading import load_paths  # noqa: E402
from reconciler.render import Rendered, render_message  # noqa: E402

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
REACH_CAMPAIGNS = ("flash-sale", "weekly-winback", "monthly-statement", "holiday-coupons")
RENDER_CAMPAIGNS = ("flash-sale", "weekly-winback", "holiday-coupons", "monthly-statement")
PG_DEFAULT = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")

# One SQL text per engine family; {users} / {events} / {now} are filled in before running.
DUCKDB_USERS = """
INSERT INTO users
SELECT 'u' || lpad(i::VARCHAR, 7, '0'),
       '+1415' || lpad((1000000 + i)::VARCHAR, 7, '0'),
       i % 97 <> 0,
       (['America/New_York', 'Europe/London', 'Asia/Kolkata', 'America/Los_Angeles'])[1 + i % 4],
       (['US', 'GB', 'IN', 'CA', 'US'])[1 + i % 5],
       TIMESTAMPTZ '{now}' - INTERVAL 1 DAY * (i % 400),
       i % 50 = 0,
       json_object('first_name', 'User' || i, 'plan', (['free', 'pro', 'enterprise', 'free'])[1 + i % 4],
                   'promo_opt_in', i % 3 = 0, 'age', 18 + i % 60, 'balance', round((i % 10000) / 7.0, 2)),
       TIMESTAMPTZ '{now}'
FROM range({users}) t(i)
"""
DUCKDB_EVENTS = """
INSERT INTO events
SELECT * FROM (
SELECT 'u' || lpad((hash(i) % {users})::VARCHAR, 7, '0') AS user_id,
       CASE WHEN i % 10 < 2 THEN 'purchase' WHEN i % 10 < 4 THEN 'added_to_cart' ELSE 'app_launched' END,
       TIMESTAMPTZ '{now}' - INTERVAL 1 SECOND * (hash(i * 7) % 5184000) AS ts,
       CASE WHEN i % 10 < 4 THEN json_object('amount', i % 200, 'sku', 'sku-' || (i % 500)) ELSE '{{}}' END
FROM range({events}) t(i)
) ORDER BY {order}
"""
PG_USERS = """
INSERT INTO users
SELECT 'u' || lpad(i::text, 7, '0'), '+1415' || lpad((1000000 + i)::text, 7, '0'), i % 97 <> 0,
       (ARRAY['America/New_York', 'Europe/London', 'Asia/Kolkata', 'America/Los_Angeles'])[1 + i % 4],
       (ARRAY['US', 'GB', 'IN', 'CA', 'US'])[1 + i % 5],
       TIMESTAMPTZ '{now}' - INTERVAL '1 day' * (i % 400), i % 50 = 0,
       jsonb_build_object('first_name', 'User' || i, 'plan', (ARRAY['free', 'pro', 'enterprise', 'free'])[1 + i % 4],
                          'promo_opt_in', i % 3 = 0, 'age', 18 + i % 60, 'balance', round((i % 10000) / 7.0, 2)),
       TIMESTAMPTZ '{now}'
FROM generate_series(0, {users} - 1) AS t(i)
"""
PG_EVENTS = """
INSERT INTO events
SELECT 'u' || lpad((abs(hashint8(i)) % {users})::text, 7, '0'),
       CASE WHEN i % 10 < 2 THEN 'purchase' WHEN i % 10 < 4 THEN 'added_to_cart' ELSE 'app_launched' END,
       TIMESTAMPTZ '{now}' - INTERVAL '1 second' * (abs(hashint8(i * 7)) % 5184000),
       CASE WHEN i % 10 < 4 THEN jsonb_build_object('amount', i % 200, 'sku', 'sku-' || (i % 500)) ELSE '{{}}' END
FROM generate_series(0, {events} - 1) AS t(i)
"""


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = action()
    return time.perf_counter() - start, result


def peak_rss_mb() -> float:
    """This process's own high-water RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the
    parent across fork+exec, which would charge the generator's memory to the streaming child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reach_figures(store: AudienceStore, repeats: int = 3) -> dict[str, dict[str, Any]]:
    state = load_paths([ROOT / "providers", ROOT / "campaigns"]).state
    figures: dict[str, dict[str, Any]] = {}
    for name in REACH_CAMPAIGNS:
        campaign = state.campaigns[name]
        times, selection = [], None
        for _ in range(repeats):
            elapsed, selection = timed(lambda c=campaign: select_audience(store, c, state, NOW, seed=1))
            times.append(elapsed)
        assert selection is not None
        figures[name] = {"qualified": selection.qualified, "target": selection.target,
                         "blocked": selection.blocked, "first_s": round(times[0], 3),
                         "median_s": round(statistics.median(times), 3)}
    return figures


def generate_duckdb(path: Path, users: int, events: int, shuffled: bool = False) -> dict[str, float]:
    """Events are stored in arrival (time) order, as a live stream and time-ordered files produce them;
    `shuffled` stores them in random order instead (the worst case for time-window pruning)."""
    with DuckDBAudienceStore(str(path)) as store:
        fill = {"users": users, "events": events, "now": NOW.isoformat(), "order": "hash(user_id || ts)"
                if shuffled else "ts"}
        users_s, _ = timed(lambda: store.execute_script(DUCKDB_USERS.format(**fill)))
        events_s, _ = timed(lambda: store.execute_script(DUCKDB_EVENTS.format(**fill)))
        stats = store.stats()
    size_mb = path.stat().st_size / 1e6
    order = "random order" if shuffled else "time order"
    print(f"generated {stats.users:,} users in {users_s:.1f}s and {stats.events:,} events ({order}) in "
          f"{events_s:.1f}s (file {size_mb:.0f} MB)")
    return {"users_s": users_s, "events_s": events_s, "file_mb": size_mb}


def materialize_child(url: str, batch_size: int) -> None:
    """Runs in a fresh process: stream every qualifying member, print figures as JSON."""
    with open_audience_store(url) as store:
        start = time.perf_counter()
        count = batches = 0
        for batch in store.iter_members(None, NOW, batch_size=batch_size):
            count += len(batch)
            batches += 1
        elapsed = time.perf_counter() - start
    print(json.dumps({"members": count, "batches": batches, "seconds": elapsed, "peak_rss_mb": peak_rss_mb()}))


def materialize(url: str, batch_size: int) -> dict[str, Any]:
    output = subprocess.run([sys.executable, __file__, "--materialize-child", url, "--batch-size", str(batch_size)],
                            check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def render_figures(store: AudienceStore, members_wanted: int = 100_000) -> dict[str, dict[str, float]]:
    state = load_paths([ROOT / "providers", ROOT / "campaigns"]).state
    members = []
    for batch in store.iter_members(None, NOW, batch_size=10_000):
        members.extend(batch)
        if len(members) >= members_wanted:
            break
    figures: dict[str, dict[str, float]] = {}
    for name in RENDER_CAMPAIGNS:
        campaign = state.campaigns[name]
        render_message(campaign, members[0])  # compile once
        elapsed, results = timed(lambda c=campaign: [render_message(c, m) for m in members])
        failures = sum(1 for r in results if not isinstance(r, Rendered))
        with_encoding, _ = timed(lambda c=campaign: [getattr(render_message(c, m), "segments", 0) for m in members])
        figures[name] = {"renders_per_s": round(len(members) / elapsed),
                         "with_encoding_per_s": round(len(members) / with_encoding), "failures": failures}
    return figures


# -- other engines, for the engine choice --------------------------------------------------------


def compare_sqlite(directory: Path, users: int, events: int) -> dict[str, Any]:
    """The active-buyers and lapsed-users segments as SQLite (JSON1) queries on the same data shape."""
    path = directory / "compare.sqlite"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE users (id TEXT PRIMARY KEY, phone TEXT, phone_valid INT, created_at TEXT, opted_out INT,
                            properties TEXT);
        CREATE TABLE events (user_id TEXT, name TEXT, ts TEXT, properties TEXT);
    """)
    now = NOW.strftime("%Y-%m-%d %H:%M:%S")
    gen_users = f"""
        WITH RECURSIVE t(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM t WHERE i < {users - 1})
        INSERT INTO users SELECT printf('u%07d', i), printf('+1415%07d', 1000000 + i), i % 97 <> 0,
               datetime('{now}', printf('-%d days', i % 400)), i % 50 = 0,
               json_object('plan', CASE i % 4 WHEN 1 THEN 'pro' WHEN 2 THEN 'enterprise' ELSE 'free' END,
                           'promo_opt_in', json(CASE WHEN i % 3 = 0 THEN 'true' ELSE 'false' END))
        FROM t"""
    gen_events = f"""
        WITH RECURSIVE t(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM t WHERE i < {events - 1})
        INSERT INTO events SELECT printf('u%07d', abs(random()) % {users}),
               CASE WHEN i % 10 < 2 THEN 'purchase' WHEN i % 10 < 4 THEN 'added_to_cart' ELSE 'app_launched' END,
               datetime('{now}', printf('-%d seconds', abs(random()) % 5184000)), '{{}}'
        FROM t"""
    load_s, _ = timed(lambda: (db.execute(gen_users), db.execute(gen_events), db.commit()))
    index_s, _ = timed(lambda: (db.execute("CREATE INDEX ev ON events (name, ts, user_id)"), db.commit()))
    since30 = (NOW - timedelta(days=30)).strftime("%Y-%m-%d %H:%M:%S")
    since14 = (NOW - timedelta(days=14)).strftime("%Y-%m-%d %H:%M:%S")
    active = """SELECT count(*) FROM users u WHERE opted_out = 0 AND phone_valid = 1
        AND u.id IN (SELECT user_id FROM events WHERE name = 'purchase' AND ts >= ? AND ts <= ?
                     GROUP BY user_id HAVING count(*) >= 2)
        AND json_extract(u.properties, '$.promo_opt_in') = 1"""
    lapsed = """SELECT count(*) FROM users u WHERE opted_out = 0 AND phone_valid = 1
        AND u.id NOT IN (SELECT user_id FROM events WHERE name = 'app_launched' AND ts >= ? AND ts <= ?)
        AND u.created_at < ? AND json_extract(u.properties, '$.plan') <> 'enterprise'"""
    active_s, _ = timed(lambda: db.execute(active, (since30, now)).fetchone())
    lapsed_s, _ = timed(lambda: db.execute(lapsed, (since14, now, since30)).fetchone())
    db.close()
    return {"load_s": round(load_s, 1), "index_s": round(index_s, 1), "active-buyers_s": round(active_s, 3),
            "lapsed-users_s": round(lapsed_s, 3)}


def compare_postgres(dsn: str, users: int, events: int) -> dict[str, Any]:
    import psycopg

    schema = f"bench_audience_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in dsn else "?"
    url = f"{dsn}{sep}options=-csearch_path%3D{schema}"
    try:
        with open_audience_store(url) as store, psycopg.connect(url, autocommit=True) as conn:
            fill = {"users": users, "events": events, "now": NOW.isoformat()}
            load_s, _ = timed(lambda: (conn.execute(PG_USERS.format(**fill)), conn.execute(PG_EVENTS.format(**fill)),
                                       conn.execute("ANALYZE users"), conn.execute("ANALYZE events")))
            figures = reach_figures(store, repeats=2)
        return {"load_and_index_s": round(load_s, 1), "reach": figures}
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--compare", default="", help="comma list of sqlite,postgres to run the same shape on")
    parser.add_argument("--pg", default=PG_DEFAULT)
    parser.add_argument("--shuffled-events", action="store_true",
                        help="store events in random order (worst case) instead of time order")
    parser.add_argument("--keep", type=Path, default=None, help="keep the generated DuckDB file in this directory")
    parser.add_argument("--materialize-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.materialize_child:
        materialize_child(args.materialize_child, args.batch_size)
        return

    with tempfile.TemporaryDirectory(prefix="herald-bench-") as tmp:
        directory = args.keep or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "audience.duckdb"
        path.unlink(missing_ok=True)
        print(f"DuckDB {__import__('duckdb').__version__}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        generate_duckdb(path, args.users, args.events, args.shuffled_events)
        url = f"duckdb:///{path}"
        with open_audience_store(url) as store:
            print("\nreach estimate (select_audience: segment count + reach sample + limits + safety)")
            for name, fig in reach_figures(store).items():
                print(f"  {name:18} qualified {fig['qualified']:>9,}  target {fig['target']:>9,}  "
                      f"first {fig['first_s']:.3f}s  median {fig['median_s']:.3f}s")
        result = materialize(url, args.batch_size)
        print(f"\nmaterialize all reachable users (fresh process, batches of {args.batch_size}): "
              f"{result['members']:,} members in {result['seconds']:.1f}s "
              f"({result['members'] / result['seconds']:,.0f}/s), peak RSS {result['peak_rss_mb']:.0f} MB")
        with open_audience_store(url) as store:
            print("\nrenders with cached templates (100k members from the store)")
            for name, fig in render_figures(store).items():
                print(f"  {name:18} {fig['renders_per_s']:>9,}/s render   "
                      f"{fig['with_encoding_per_s']:>9,}/s incl. GSM-7/UCS-2 analysis   failures {fig['failures']}")
        engines = {e.strip() for e in args.compare.split(",") if e.strip()}
        if "sqlite" in engines:
            print("\nSQLite (same shape, JSON1, index on events(name, ts, user_id)):",
                  compare_sqlite(directory, args.users, args.events))
        if "postgres" in engines:
            pg = compare_postgres(args.pg, args.users, args.events)
            print(f"\nPostgreSQL 15 (generate + ANALYZE {pg['load_and_index_s']}s):")
            for name, fig in pg["reach"].items():
                print(f"  {name:18} qualified {fig['qualified']:>9,}  first {fig['first_s']:.3f}s  "
                      f"median {fig['median_s']:.3f}s")


if __name__ == "__main__":
    main()
