"""End to end through the engine: commit → plan → apply → scheduled run → mock provider → audit,
then edit and delete by new commits. Real git, SQLite, DuckDB and the mock provider; a FakeClock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.apply import desired_from_applied
from reconciler.demo import DEMO_SECRETS, DemoWorld, commit_all, demo_world
from reconciler.gitsource import read_commit
from reconciler.plan import compute_plan, render_plan
from reconciler.report import build_report
from reconciler.store.base import AuditQuery

ROOT = Path(__file__).resolve().parent.parent
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)

PROMO = """apiVersion: herald/v1
kind: Campaign
metadata:
  name: promo
spec:
  type: past_behavior
  owner: growth@example.com
  schedule:
    once: "2026-12-01T17:00:00Z"
  timezone: {mode: fixed, zone: UTC}
  audience:
    rules:
      property: {name: country, op: in, value: [US, DE]}
  message:
    body: "{BODY} {{ user.first_name }}"
  providerGroup: global
"""


def write_promo(repo_dir: Path, body: str, when: str = "2026-12-01T17:00:00Z") -> None:
    text = PROMO.replace("{BODY}", body).replace("2026-12-01T17:00:00Z", when)
    (repo_dir / "campaigns" / "promo.yaml").write_text(text)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DemoWorld]:
    source = tmp_path / "source"
    (source / "campaigns").mkdir(parents=True)
    shutil.copytree(ROOT / "providers", source / "providers")
    shutil.copy(ROOT / "campaigns" / "settings.yaml", source / "campaigns" / "settings.yaml")
    write_promo(source, "Hello")
    with demo_world(tmp_path / "world", population=40, start=START,
                    sources=[source / "providers", source / "campaigns"]) as w:
        yield w


def mock_messages(world: DemoWorld) -> list[dict[str, object]]:
    return httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"]


def mock_stats(world: DemoWorld) -> dict[str, object]:
    return httpx.get(f"{world.mock_url}/_mock/stats").json()


def test_commit_plan_apply_run_deliver_audit(world: DemoWorld) -> None:
    store = world.engine.rt.store
    head = read_commit(world.repo.working_tree_dir or "", "HEAD")
    plan = compute_plan(head.load().state, store.applied_state(), commit=head.info, clock=world.clock)
    text = render_plan(plan, "text")
    assert "+ Campaign/promo (create)" in text

    world.step()  # sync: apply the commit
    applied = store.applied_state()
    assert applied.commit_sha == head.sha
    assert applied.get("Campaign", "promo") is not None

    world.advance_to(datetime(2026, 12, 1, 17, 5, tzinfo=UTC), every=timedelta(minutes=30))
    runs = store.list_runs(campaign="promo")
    assert [r.status for r in runs] == ["done"]
    audience = world.engine.rt.audience
    from reconciler.models.segment import PropertyRule

    rules = PropertyRule.model_validate({"property": {"name": "country", "op": "in", "value": ["US", "DE"]}})
    expected = {m.phone for batch in audience.iter_members(rules, world.clock.now()) for m in batch}
    received = mock_messages(world)
    assert {m["to"] for m in received} == expected
    assert len(received) == len(expected)  # exactly once each
    assert all(str(m["body"]).startswith("Hello ") for m in received)

    entries = store.query_audit(AuditQuery(campaign="promo"))
    actions = [e.action for e in entries]
    assert actions[0] == "create" and "run_started" in actions and "send" in actions
    assert {e.commit_sha for e in entries} == {head.sha}

    reports = build_report(store, audience, desired_from_applied(store.applied_state()), campaign="promo",
                           now=world.clock.now())
    assert reports[0].tally.sent == len(expected) and reports[0].tally.targeted == len(expected)


def test_edit_and_delete_by_new_commits(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()
    repo_dir = Path(world.repo.working_tree_dir or "")
    write_promo(repo_dir, "Updated", when="2026-12-01T18:00:00Z")
    edit_sha = commit_all(world.repo, "Move promo to 18:00 with a new text")
    world.step()
    obj = store.applied_state().get("Campaign", "promo")
    assert obj is not None and obj.commit_sha == edit_sha
    update = store.query_audit(AuditQuery(campaign="promo", actions=["update"]))
    assert update and update[0].commit_sha == edit_sha
    assert any(d["path"].endswith("message.body") for d in update[0].details["diff"])

    world.advance_to(datetime(2026, 12, 1, 18, 5, tzinfo=UTC), every=timedelta(minutes=30))
    bodies = {str(m["body"]).split(" ")[0] for m in mock_messages(world)}
    assert bodies == {"Updated"}  # the 17:00 run never happened; the edited one did

    (repo_dir / "campaigns" / "promo.yaml").unlink()
    delete_sha = commit_all(world.repo, "Remove promo")
    world.step()  # deleting every active campaign trips the prune guard
    assert store.applied_state().get("Campaign", "promo") is not None
    refused = store.query_audit(AuditQuery(commit=delete_sha, actions=["apply_refused"]))
    assert len(refused) == 1 and "prune guard" in refused[0].details["message"]

    world.engine.allow_prune = True  # the operator's explicit override
    world.step()
    assert store.applied_state().get("Campaign", "promo") is None
    deleted = store.query_audit(AuditQuery(campaign="promo", actions=["delete"]))
    assert deleted and deleted[0].commit_sha == delete_sha


def test_invalid_commit_keeps_last_applied_state(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()
    good = store.applied_state().commit_sha
    repo_dir = Path(world.repo.working_tree_dir or "")
    (repo_dir / "campaigns" / "promo.yaml").write_text("apiVersion: herald/v1\nkind: Campaign\nmetadata: {name: promo}\n")
    bad_sha = commit_all(world.repo, "Break promo")
    world.step()
    world.step()  # polled again: refused once, audited once
    assert store.applied_state().commit_sha == good
    refused = store.query_audit(AuditQuery(commit=bad_sha, actions=["apply_refused"]))
    assert len(refused) == 1
    assert "validation error" in str(refused[0].details)
    assert world.engine.last_sync_error is not None

    write_promo(repo_dir, "Fixed")
    fixed_sha = commit_all(world.repo, "Fix promo")
    world.step()
    assert store.applied_state().commit_sha == fixed_sha
    assert world.engine.last_sync_error is None


def test_pause_override_stops_delivery_and_shows_as_drift(world: DemoWorld) -> None:
    from reconciler.apply import set_campaign_paused

    store = world.engine.rt.store
    world.step()
    set_campaign_paused(store, "promo", True, clock=world.clock, actor="ops")
    world.advance_to(datetime(2026, 12, 1, 17, 30, tzinfo=UTC), every=timedelta(minutes=30))
    assert mock_messages(world) == []
    head = read_commit(world.repo.working_tree_dir or "", "HEAD")
    plan = compute_plan(head.load().state, store.applied_state(), commit=head.info, clock=world.clock)
    assert plan.drift and plan.drift[0].name == "promo"


def test_secrets_never_reach_outputs(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()
    world.advance_to(datetime(2026, 12, 1, 17, 5, tzinfo=UTC), every=timedelta(minutes=30))
    audit_text = str([e.details for e in store.query_audit(AuditQuery())])
    metrics = world.engine.rt.metrics.render().decode()
    for secret in DEMO_SECRETS.values():
        assert secret not in audit_text
        assert secret not in metrics


def test_catch_up_after_downtime_sends_a_recent_missed_run(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()
    world.clock.set(datetime(2026, 12, 1, 19, 0, tzinfo=UTC))  # the daemon was down from 08:00 to 19:00
    world.step(sync=False)
    [run] = store.list_runs(campaign="promo")
    assert run.status in ("sending", "done") and run.enqueued > 0
    assert len(mock_messages(world)) == run.enqueued  # policy latest, 2 h late < maxAge 6 h


def test_catch_up_drops_a_run_missed_by_more_than_max_age(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()
    world.clock.set(datetime(2026, 12, 2, 0, 30, tzinfo=UTC))  # 7.5 h late > maxAge 6 h
    world.step(sync=False)
    runs = store.list_runs(campaign="promo")
    assert [r.status for r in runs] == ["skipped"]
    assert mock_messages(world) == []


def test_reconcile_lag_grows_until_the_next_successful_reconcile(world: DemoWorld) -> None:
    assert world.engine.reconcile_lag() is None
    world.step()
    world.clock.advance(timedelta(seconds=42))
    assert world.engine.reconcile_lag() == 42
    world.step()
    assert world.engine.reconcile_lag() == 0
