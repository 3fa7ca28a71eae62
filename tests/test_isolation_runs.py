"""Bulkheads around runs: a run whose materialization raises is retried a bounded number of times and
then ends `failed` with its reason (audited, counted, owner alerted, its queued messages cancelled),
while a healthy campaign scheduled at the same moment is delivered on time; /healthz names the failure."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from example_repo import example_sources, settings_yaml

from reconciler import runs as runs_module
from reconciler.demo import DemoWorld, demo_world
from reconciler.health import STUCK_AFTER, health_report
from reconciler.report import build_report, report_table
from reconciler.runs import MAX_RUN_ATTEMPTS
from reconciler.store.base import AuditQuery

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MOMENT = datetime(2026, 12, 1, 13, 0, tzinfo=UTC)
SETTINGS = settings_yaml("catchUp: {policy: latest, maxAge: 6h}")


def campaign(name: str) -> str:
    return f"""apiVersion: herald/v1
kind: Campaign
metadata: {{name: {name}}}
spec:
  type: past_behavior
  owner: {name}-owner@example.com
  schedule: {{once: "{MOMENT:%Y-%m-%dT%H:%M:%SZ}"}}
  message: {{body: "Hello {{{{ user.first_name }}}} from {name}"}}
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DemoWorld]:
    sources = example_sources(tmp_path / "source", {"settings": SETTINGS, "healthy": campaign("healthy"),
                                                    "poisoned": campaign("poisoned")})
    with demo_world(tmp_path / "world", population=12, start=START, sources=sources) as w:
        w.step()
        yield w


def poison(monkeypatch: pytest.MonkeyPatch, campaign_name: str) -> list[str]:
    """Make materializing `campaign_name` raise, as a value the audience store cannot bind once did."""
    calls: list[str] = []
    real = runs_module.select_audience

    def select(audience: Any, campaign: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(campaign.name)
        if campaign.name == campaign_name:
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return real(audience, campaign, *args, **kwargs)

    monkeypatch.setattr(runs_module, "select_audience", select)
    return calls


def received(world: DemoWorld) -> list[dict[str, Any]]:
    return list(httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"])


def test_a_failing_run_fails_alone_and_the_healthy_one_is_delivered_on_time(
        world: DemoWorld, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    calls = poison(monkeypatch, "poisoned")
    store = world.engine.rt.store
    with caplog.at_level("WARNING"):
        world.advance_to(MOMENT + timedelta(seconds=1), every=timedelta(minutes=30))
        for _ in range(MAX_RUN_ATTEMPTS + 2):
            world.clock.advance(timedelta(seconds=2))
            world.step(sync=False)

    [healthy] = store.list_runs(campaign="healthy")
    assert healthy.status in ("sending", "done") and healthy.enqueued == 12
    messages = received(world)
    assert len(messages) == 12 and not [m for m in messages if "poisoned" in str(m)], messages

    [failed] = store.list_runs(campaign="poisoned")
    assert failed.status == "failed" and failed.counts["attempts"] == MAX_RUN_ATTEMPTS
    assert failed.reason is not None and failed.reason.startswith("OverflowError: Python int too large")
    assert calls.count("poisoned") == MAX_RUN_ATTEMPTS  # bounded: not retried after it failed
    [entry] = store.query_audit(AuditQuery(campaign="poisoned", actions=["run_failed"]))
    assert entry.details["attempts"] == MAX_RUN_ATTEMPTS and entry.commit_sha == store.applied_state().commit_sha
    assert "run_failed" in caplog.text and "poisoned-owner@example.com" in caplog.text
    assert b'herald_runs_total{outcome="failed"} 1.0' in world.engine.rt.metrics.render()

    table = report_table(build_report(store, world.engine.rt.audience, world.engine.state, campaign="poisoned",
                                      now=world.clock.now()))
    assert f"run {failed.id} failed" in table and f"failed: {failed.reason}" in table

    report = health_report(world.engine.rt, None)
    assert report["status"] == "degraded"
    assert report["problems"] == [{"unit": "run", "name": f"poisoned run {failed.id}",
                                   "reason": f"failed: {failed.reason}"}]


def test_a_run_that_recovers_before_its_last_attempt_is_sent(
        world: DemoWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = poison(monkeypatch, "poisoned")
    world.advance_to(MOMENT + timedelta(seconds=1), every=timedelta(minutes=30))
    world.step(sync=False)
    assert 1 < calls.count("poisoned") < MAX_RUN_ATTEMPTS
    monkeypatch.undo()  # the audience store answers again
    world.clock.advance(timedelta(seconds=2))
    world.step(sync=False)
    [run] = world.engine.rt.store.list_runs(campaign="poisoned")
    assert run.status in ("sending", "done") and run.enqueued == 12
    assert health_report(world.engine.rt, None)["status"] == "ok"


def test_health_names_claims_that_nobody_took_over(world: DemoWorld) -> None:
    rt = world.engine.rt
    world.advance_to(MOMENT - timedelta(minutes=1), every=timedelta(minutes=30))
    assert health_report(rt, None) == {"status": "ok", "problems": [], "clock_skew_seconds": None}
    world.clock.set(MOMENT + timedelta(seconds=1))
    world.engine.tick()  # runs materialized, messages queued, nothing sent
    claimed = rt.store.claim("dead-worker", 5, rt.clock.now(), timedelta(seconds=30))
    assert len(claimed) == 5
    world.clock.advance(timedelta(seconds=30) + STUCK_AFTER + timedelta(seconds=1))
    report = health_report(rt, {"stage": "apply", "message": "campaigns/x.yaml:3:1: bad"})
    assert report["status"] == "degraded"
    units = {(p["unit"], p["name"]) for p in report["problems"]}
    assert units == {("commit", "branch head"), ("outbox", "5 claimed")}


def test_a_campaign_applied_behind_the_schedulers_watermark_still_runs(world: DemoWorld) -> None:
    """One daemon ticked (and set its watermark) at 13:10 on a fast clock; another, on a correct clock,
    applies at 13:00 a campaign for 13:05. It used to be skipped for good and unrecorded; now it is
    planned from its own creation and caught up (catch-up policy `latest`)."""
    rt = world.engine.rt
    world.clock.set(MOMENT + timedelta(minutes=10))
    world.step(sync=False)  # the fast daemon's tick: every campaign it knows is marked at 13:10
    world.clock.set(MOMENT)
    late = (world.repo.working_tree_dir or "") + "/campaigns/late.yaml"
    Path(late).write_text(campaign("late").replace(f"{MOMENT:%H:%M:%S}", "13:05:00"))
    world.repo.git.add(A=True)
    world.repo.index.commit("a campaign for 13:05")
    world.engine.sync()  # applied at 13:00 (its creation) by the other daemon, which does not hold the
    # scheduler lease: only the fast daemon ticks
    before = len(received(world))
    world.clock.set(MOMENT + timedelta(minutes=10, seconds=1))
    world.step(sync=False)
    [run] = rt.store.list_runs(campaign="late")
    assert run.scheduled_for == MOMENT + timedelta(minutes=5) and run.status in ("sending", "done")
    assert run.enqueued == 12 and len(received(world)) - before == 12


def test_a_sync_request_to_any_daemon_applies_at_once(world: DemoWorld) -> None:
    """The git lease is held only while syncing: right after daemon A synced, a push webhook reaching
    daemon B is applied by B at once (B used to do nothing for the 30 s A kept the lease), and while A is
    syncing B says so (the daemon loop then asks again at its next step)."""
    from dataclasses import replace

    from reconciler.engine import GIT_LEASE, Engine
    from reconciler.gitsource import GitSource

    rt = world.engine.rt
    other = Engine(replace(rt, worker_id="daemon-b"), GitSource(world.repo.working_tree_dir, "main"))
    try:
        world.engine.sync()  # daemon A syncs (nothing new) and releases the lease
        late = Path(world.repo.working_tree_dir or "") / "campaigns" / "late.yaml"
        late.write_text(campaign("late"))
        world.repo.git.add(A=True)
        sha = world.repo.index.commit("pushed").hexsha
        result = other.sync()
        assert result is not None and result.commit_sha == sha and not other.sync_busy
        assert rt.store.applied_state().commit_sha == sha

        assert rt.store.try_lease(GIT_LEASE, "daemon-a-mid-sync", rt.clock.now(), rt.leases.coordination)
        assert other.sync() is None and other.sync_busy
    finally:
        world.run(other.aclose)
