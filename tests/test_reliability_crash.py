"""Crash tests: SIGKILL the real daemon process at random points of a large run, restart it, and
check from the mock provider's records that every intended message was accepted exactly once.

The daemon is `python -m reconciler.cli run` (SQLite + DuckDB, or two daemons on PostgreSQL); the
mock provider runs in the test process and outlives every daemon. Kills land at random accepted-message
counts (so, mid-batch: sent but not yet recorded) and one right after the campaign's start (while the
run is being scheduled and materialized). Resends of in-doubt messages carry the same idempotency key;
the mock absorbs them and counts them as `duplicates` — the number is reported, never a second send.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import (
    DaemonProcess,
    Mock,
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
from daemon_harness import (
    now as harness_now,
)
from git import Repo

from reconciler.store import open_state_store

CAMPAIGN = "blast"


@dataclass
class CrashRun:
    kills: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    report: dict[str, Any] = field(default_factory=dict)


def _logs(daemons: list[DaemonProcess]) -> str:
    return "\n".join(f"== {d.name}\n{d.log_tail(25)}" for d in daemons)


def _queue_drained(daemons: list[DaemonProcess]) -> bool:
    for daemon in daemons:
        if daemon.running():
            try:
                return metric_value(daemon.metrics(), "herald_outbox_queue_depth") == 0
            except Exception:
                continue
    return False


def crash_loop(mock: Mock, daemons: list[DaemonProcess], repo: Repo, total: int, kills: int, rng: random.Random,
               timeout: float) -> CrashRun:
    """Start the daemons, schedule the campaign, kill one at random points `kills` times (restarting
    it at once), wait until every message is recorded, then stop them gracefully."""
    outcome = CrashRun()
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_healthy()
        daemon.wait_applied(repo.head.commit.hexsha)
    once = schedule_soon(repo, daemons[0], lambda at: {f"campaigns/{CAMPAIGN}.yaml": campaign_yaml(CAMPAIGN, at)})
    began = time.monotonic()

    def kill_one(trigger: str) -> None:
        victim = rng.choice(daemons)
        victim.kill()
        outcome.kills.append({"trigger": trigger, "daemon": victim.name, "accepted_at_kill": mock.accepted(),
                              "at_s": round(time.monotonic() - began, 1)})
        victim.start()

    # One kill while the run is being created and materialized (just after the scheduled moment) …
    kill_at = once + timedelta(seconds=rng.uniform(0.0, 0.4))
    wait_for(lambda: harness_now() >= kill_at, timeout=30, what="the campaign start", poll=0.01)
    kill_one("after start")
    # … and the rest at random accepted-message counts: mid-sending, some batches sent but unrecorded.
    for threshold in sorted(rng.sample(range(1, total), kills - 1)):
        wait_for(lambda t=threshold: mock.accepted() >= t, timeout=timeout, what=f"{threshold} accepted messages",
                 poll=0.005, on_timeout=lambda: _logs(daemons))
        kill_one(f"at {threshold} accepted")
    wait_for(lambda: mock.accepted() >= total and _queue_drained(daemons), timeout=timeout,
             what="every message sent and recorded", poll=0.1, on_timeout=lambda: _logs(daemons))
    outcome.seconds = time.monotonic() - began
    for daemon in daemons:
        daemon.wait_healthy()  # a daemon restarted a moment ago may still be starting: let it install its handlers
        assert daemon.terminate() == 0, _logs(daemons)
    return outcome


def assert_exactly_once(mock: Mock, state_url: str, users: list[dict[str, Any]], run: CrashRun) -> None:
    expected = {u["phone"] for u in users}
    report = exactly_once_report(mock, expected)
    run.report = report
    print(f"\ncrash run: {len(users)} messages, {len(run.kills)} kills, {run.seconds:.1f}s; "
          f"resends absorbed by idempotency keys: {report['resends_absorbed']}; kills: {run.kills}")
    assert report["missing"] == [], f"lost messages: {report['missing'][:10]}"
    assert report["doubled"] == [] and report["doubled_keys"] == [], f"double sends: {report['doubled'][:10]}"
    assert report["unexpected"] == []
    assert report["accepted"] == len(users)

    store = open_state_store(state_url)
    try:
        rows = store.list_outbox(campaign=CAMPAIGN, limit=len(users) * 2)
        runs = store.list_runs(campaign=CAMPAIGN)
    finally:
        store.close()
    assert len(runs) == 1 and runs[0].status == "done"
    assert len(rows) == len(users)
    assert {r.status for r in rows} == {"sent"}
    # The store and the provider agree on which provider message each row became.
    by_key = {str(m["idempotency_key"]): str(m["provider_message_id"]) for m in mock.messages()}
    assert {r.idempotency_key: r.provider_message_id for r in rows} == by_key


def _single_daemon_crash_test(tmp_path: Path, total: int, kills: int, seed: int, timeout: float) -> None:
    rng = random.Random(seed)
    users = population(total)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    ingest(audience_url, users)  # before the daemon starts: a DuckDB file belongs to one process
    repo = write_repo(tmp_path / "repo", standard_files())
    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d1", str(tmp_path / "repo"), state_url, audience_url, mock.url)
        run = crash_loop(mock, [daemon], repo, total, kills, rng, timeout)
        assert_exactly_once(mock, state_url, users, run)
        assert daemon.starts == kills + 1


def test_sigkill_during_a_1000_message_run_sends_each_exactly_once(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=1000, kills=3, seed=11, timeout=40)


@pytest.mark.slow
def test_sigkill_20_times_during_a_10000_message_run(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=10_000, kills=20, seed=23, timeout=120)


def _two_daemons_on_postgres(tmp_path: Path, dsn: str, total: int, kills: int, seed: int, timeout: float) -> None:
    rng = random.Random(seed)
    users = population(total)
    ingest(dsn, users)
    repo = write_repo(tmp_path / "repo", standard_files())
    with mock_provider() as mock:
        daemons = [DaemonProcess(tmp_path / name, str(tmp_path / "repo"), dsn, dsn, mock.url, name=name, workers=2)
                   for name in ("pg-a", "pg-b")]
        run = crash_loop(mock, daemons, repo, total, kills, rng, timeout)
        assert_exactly_once(mock, dsn, users, run)
        assert sum(d.starts for d in daemons) == kills + 2


@pytest.mark.postgres
def test_two_daemons_on_postgresql_killing_one(tmp_path: Path, pg_dsn: str) -> None:
    _two_daemons_on_postgres(tmp_path, pg_dsn, total=1000, kills=3, seed=5, timeout=40)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_on_postgresql_20_kills_10000_messages(tmp_path: Path, pg_dsn: str) -> None:
    _two_daemons_on_postgres(tmp_path, pg_dsn, total=10_000, kills=20, seed=29, timeout=150)
