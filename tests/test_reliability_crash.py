"""Crash tests: SIGKILL the real daemon process at random points of a large run, restart it, and
check from the mock provider's records that every intended message was accepted exactly once.

The daemon is `python -m reconciler.cli run` (SQLite + DuckDB, or two daemons on PostgreSQL); the
mock provider runs in the test process and outlives every daemon. Kills land at random accepted-message
counts (so, mid-batch: sent but not yet recorded) and one right after the campaign's start (while the
run is being scheduled and materialized). The mock is realistic: it does not deduplicate, so a blind
resend would be a second message to a real person. Two CPU-hog processes run beside the daemons. The
rows a kill leaves claimed are in doubt: the next claim asks Twilio's Message list (found → recorded
sent; not found → resent), or, at a provider without lookup, applies the group's `inDoubt` policy.
Each run prints how many rows each kill left in doubt and how they were settled.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
from reconciler.store.base import StateStore

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
               timeout: float, state_url: str | None = None, progress: Callable[[], int] | None = None) -> CrashRun:
    """Start the daemons, schedule the campaign, kill one at random points `kills` times (restarting
    it at once), wait until every message is recorded, then stop them gracefully. With `state_url`,
    each kill also notes how many rows the victim held claimed (those it had marked attempted are in
    doubt, the rest are simply sent by the next claim). `progress`
    counts settled messages (default: what the mock accepted)."""
    outcome = CrashRun()
    done = progress or mock.accepted
    for daemon in daemons:
        daemon.start()
    for daemon in daemons:
        daemon.wait_healthy()
        daemon.wait_applied(repo.head.commit.hexsha)
    once = schedule_soon(repo, daemons[0], lambda at: {f"campaigns/{CAMPAIGN}.yaml": campaign_yaml(CAMPAIGN, at)})
    began = time.monotonic()

    def kill_one(trigger: str) -> None:
        victim = rng.choice(daemons)
        pid = victim.process.pid if victim.process else None
        victim.kill()
        outcome.kills.append({"trigger": trigger, "daemon": victim.name, "accepted_at_kill": mock.accepted(),
                              "at_s": round(time.monotonic() - began, 1),
                              "claimed_at_kill": claimed_by_pid(state_url, pid) if state_url and pid else None})
        victim.start()

    # One kill while the run is being created and materialized (just after the scheduled moment) …
    kill_at = once + timedelta(seconds=rng.uniform(0.0, 0.4))
    wait_for(lambda: harness_now() >= kill_at, timeout=30, what="the campaign start", poll=0.01)
    kill_one("after start")
    # … and the rest at random accepted-message counts: mid-sending, some batches sent but unrecorded.
    for threshold in sorted(rng.sample(range(1, total), kills - 1)):
        wait_for(lambda t=threshold: done() >= t, timeout=timeout, what=f"{threshold} settled messages",
                 poll=0.005 if progress is None else 0.05, on_timeout=lambda: _logs(daemons))
        kill_one(f"at {threshold} accepted")
    wait_for(lambda: done() >= total and _queue_drained(daemons), timeout=timeout,
             what="every message sent and recorded", poll=0.1, on_timeout=lambda: _logs(daemons))
    outcome.seconds = time.monotonic() - began
    for daemon in daemons:
        daemon.wait_healthy()  # a daemon restarted a moment ago may still be starting: let it install its handlers
        assert daemon.terminate() == 0, _logs(daemons)
    return outcome


def claimed_by_pid(state_url: str, pid: int) -> int:
    """Rows the (just killed) daemon with this pid held claimed (in doubt if it had marked them attempted)."""
    store = open_state_store(state_url)
    try:
        claimed = store.list_outbox(campaign=CAMPAIGN, statuses=["claimed"], limit=100_000)
    finally:
        store.close()
    return sum(1 for r in claimed if f":{pid}:" in (r.claimed_by or ""))


def settlement(state_url: str) -> dict[str, int]:
    store = open_state_store(state_url)
    try:
        return store.in_doubt_counts(campaign=CAMPAIGN)
    finally:
        store.close()


def report_run(mock: Mock, state_url: str, users: list[dict[str, Any]], run: CrashRun) -> dict[str, Any]:
    report = exactly_once_report(mock, {u["phone"] for u in users})
    report["settled"] = settlement(state_url)
    run.report = report
    left = [k["claimed_at_kill"] for k in run.kills]
    print(f"\ncrash run: {len(users)} messages, {len(run.kills)} kills, {run.seconds:.1f}s; "
          f"resends absorbed by an idempotent provider: {report['resends_absorbed']}; "
          f"rows claimed by the victim at each kill: {left}; in doubt, settled: {report['settled']}; "
          f"received twice: {len(report['doubled'])}; never received: {len(report['missing'])}; kills: {run.kills}")
    return report


def assert_exactly_once(mock: Mock, state_url: str, users: list[dict[str, Any]], run: CrashRun) -> None:
    report = report_run(mock, state_url, users, run)
    assert report["missing"] == [], f"lost messages: {report['missing'][:10]}"
    assert report["doubled"] == [] and report["doubled_keys"] == [], f"double sends: {report['doubled'][:10]}"
    assert report["unexpected"] == []
    assert report["accepted"] == len(users)
    assert set(report["settled"]) <= {"found", "resent"}, report["settled"]

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


def assert_never_twice(mock: Mock, state_url: str, users: list[dict[str, Any]], run: CrashRun) -> None:
    """A provider without lookup, `inDoubt: skip`: nobody receives a message twice; every message
    not received is recorded skipped as in doubt (none silently lost); the rest are recorded sent."""
    report = report_run(mock, state_url, users, run)
    assert report["doubled"] == [] and report["doubled_keys"] == [], f"double sends: {report['doubled'][:10]}"
    store = open_state_store(state_url)
    try:
        rows = store.list_outbox(campaign=CAMPAIGN, limit=len(users) * 2)
    finally:
        store.close()
    by_phone = {r.phone: r for r in rows}
    assert len(rows) == len(users) and {r.status for r in rows} <= {"sent", "skipped"}
    for phone in report["missing"]:
        assert by_phone[phone].status == "skipped" and by_phone[phone].doubt_settled == "skipped"
    skipped = [r for r in rows if r.status == "skipped"]
    assert all((r.skip_reason or "").startswith("in_doubt: may have been sent by vn") for r in skipped)
    assert report["settled"].get("skipped", 0) == len(skipped)
    print(f"inDoubt: skip — {len(skipped)} recorded skipped in doubt, of which {len(report['missing'])} "
          f"had in fact not been received and {len(skipped) - len(report['missing'])} had")


# Two Twilio accounts: a Twilio-shaped group with failover, both with the Message-list lookup. The
# short lookup delay suits the mock (visible at once); the real default is 30 s (docs/providers.md).
TWILIO_GROUP = """apiVersion: herald/v1
kind: Provider
metadata: {name: tw}
spec:
  type: twilio
  accountSid: AC00000000000000000000000000000001
  authToken: {secretRef: {env: TWILIO_AUTH_TOKEN}}
  from: "+14155550100"
  timeoutSeconds: 0.5
  lookupDelaySeconds: 2
---
apiVersion: herald/v1
kind: Provider
metadata: {name: tw2}
spec:
  type: twilio
  accountSid: AC00000000000000000000000000000002
  authToken: {secretRef: {env: TWILIO_AUTH_TOKEN}}
  from: "+14155550101"
  timeoutSeconds: 0.5
  lookupDelaySeconds: 2
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec:
  default: true
  providers: [tw, tw2]
  circuitBreaker: {failureThreshold: 3, cooldownSeconds: 2}
"""

# A provider without lookup (Vonage here: its Reports API is a separate paid product Herald does not
# call), with the default policy.
NO_LOOKUP_GROUP = """apiVersion: herald/v1
kind: Provider
metadata: {name: vn}
spec:
  type: vonage
  apiKey: a1b2c3d4
  apiSecret: {secretRef: {env: VONAGE_API_SECRET}}
  from: Herald
  timeoutSeconds: 0.5
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec:
  default: true
  providers: [vn]
"""


# An idempotent provider (the mock deduplicating on Idempotency-Key, as a generic vendor that honours
# it would): resending an in-doubt message is safe there, so the group says `inDoubt: resend`.
IDEMPOTENT_GROUP = NO_LOOKUP_GROUP.replace("  providers: [vn]\n", "  providers: [vn]\n  inDoubt: resend\n")


@contextlib.contextmanager
def cpu_hogs(count: int = 2) -> Iterator[None]:
    """Busy-loop processes beside the daemons for the whole run (a loaded machine), killed at the end."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


@contextlib.contextmanager
def settled_counter(mock: Mock, state_url: str, providers: str) -> Iterator[Callable[[], int] | None]:
    """Progress of a run whose policy skips in-doubt messages: accepted + skipped (None: accepted)."""
    if providers is not NO_LOOKUP_GROUP:
        yield None
        return
    store: list[StateStore] = []

    def settled() -> int:
        if not store:
            store.append(open_state_store(state_url))
        return mock.accepted() + store[0].outbox_status_counts().get("skipped", 0)

    try:
        yield settled
    finally:
        for opened in store:
            opened.close()


def _files(providers: str) -> dict[str, str]:
    return {**standard_files(), "providers/providers.yaml": providers}


def _single_daemon_crash_test(tmp_path: Path, total: int, kills: int, seed: int, timeout: float,
                              providers: str = TWILIO_GROUP) -> None:
    rng = random.Random(seed)
    users = population(total)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    ingest(audience_url, users)  # before the daemon starts: a DuckDB file belongs to one process
    repo = write_repo(tmp_path / "repo", _files(providers))
    with mock_provider() as mock, cpu_hogs(), settled_counter(mock, state_url, providers) as progress:
        if providers is IDEMPOTENT_GROUP and mock.state is not None:
            mock.state.dedupe, mock.state.finish_abandoned = True, False
        daemon = DaemonProcess(tmp_path / "d1", str(tmp_path / "repo"), state_url, audience_url, mock.url)
        run = crash_loop(mock, [daemon], repo, total, kills, rng, timeout, state_url, progress)
        if providers is not NO_LOOKUP_GROUP:
            assert_exactly_once(mock, state_url, users, run)
        else:
            assert_never_twice(mock, state_url, users, run)
        assert daemon.starts == kills + 1


def test_sigkill_during_a_1000_message_run_sends_each_exactly_once(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=1000, kills=3, seed=11, timeout=60)


def test_sigkill_at_an_idempotent_provider_resends_in_doubt_messages_and_it_absorbs_them(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=1000, kills=3, seed=17, timeout=60, providers=IDEMPOTENT_GROUP)


def test_sigkill_at_a_provider_without_lookup_never_sends_twice(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=1000, kills=3, seed=13, timeout=60, providers=NO_LOOKUP_GROUP)


@pytest.mark.slow
def test_sigkill_20_times_during_a_10000_message_run(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=10_000, kills=20, seed=23, timeout=240)


@pytest.mark.slow
def test_sigkill_20_times_at_a_provider_without_lookup(tmp_path: Path) -> None:
    _single_daemon_crash_test(tmp_path, total=10_000, kills=20, seed=31, timeout=240, providers=NO_LOOKUP_GROUP)


def _two_daemons_on_postgres(tmp_path: Path, dsn: str, total: int, kills: int, seed: int, timeout: float,
                             providers: str = TWILIO_GROUP) -> None:
    rng = random.Random(seed)
    users = population(total)
    ingest(dsn, users)
    repo = write_repo(tmp_path / "repo", _files(providers))
    with mock_provider() as mock, cpu_hogs(), settled_counter(mock, dsn, providers) as progress:
        daemons = [DaemonProcess(tmp_path / name, str(tmp_path / "repo"), dsn, dsn, mock.url, name=name, workers=2)
                   for name in ("pg-a", "pg-b")]
        run = crash_loop(mock, daemons, repo, total, kills, rng, timeout, dsn, progress)
        if providers is TWILIO_GROUP:
            assert_exactly_once(mock, dsn, users, run)
        else:
            assert_never_twice(mock, dsn, users, run)
        assert sum(d.starts for d in daemons) == kills + 2


@pytest.mark.postgres
def test_two_daemons_on_postgresql_killing_one(tmp_path: Path, pg_dsn: str) -> None:
    _two_daemons_on_postgres(tmp_path, pg_dsn, total=1000, kills=3, seed=5, timeout=60)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_on_postgresql_20_kills_10000_messages(tmp_path: Path, pg_dsn: str) -> None:
    _two_daemons_on_postgres(tmp_path, pg_dsn, total=10_000, kills=20, seed=29, timeout=300)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_daemons_on_postgresql_20_kills_at_a_provider_without_lookup(tmp_path: Path, pg_dsn: str) -> None:
    _two_daemons_on_postgres(tmp_path, pg_dsn, total=10_000, kills=20, seed=37, timeout=300,
                             providers=NO_LOOKUP_GROUP)
