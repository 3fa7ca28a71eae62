"""Apply: atomic, idempotent, stale plans and the prune guard refused (and audited), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from git import Actor, Repo
from plan_helpers import PROVIDERS, SETTINGS, campaign_yaml, campaigns, desired

from reconciler.apply import (
    InvalidDesiredState,
    PruneGuardError,
    StalePlanError,
    apply_plan,
    desired_from_applied,
    reconcile,
    set_campaign_paused,
)
from reconciler.clock import FakeClock
from reconciler.gitsource import CommitInfo, read_commit
from reconciler.loading import DesiredState
from reconciler.plan import Plan, compute_plan
from reconciler.store import AuditQuery, OutboxItem, StateStore, StoreError

pytest_plugins = ["state_fixtures"]
LEASE = timedelta(minutes=5)


def commit_info(sha_char: str, subject: str = "change") -> CommitInfo:
    return CommitInfo(sha_char * 40, "Alice <alice@example.com>", subject, datetime(2026, 11, 30, tzinfo=UTC))


def plan_for(store: StateStore, state: DesiredState, clock: FakeClock, commit: CommitInfo | None = None) -> Plan:
    return compute_plan(state, store.applied_state(), commit=commit, clock=clock)


def audit_actions(store: StateStore, **query: object) -> list[str]:
    return [e.action for e in store.query_audit(AuditQuery(**query))]  # type: ignore[arg-type]


def test_apply_records_specs_at_commit_and_is_idempotent(store: StateStore, clock: FakeClock) -> None:
    state = desired(campaigns("a", "b"))
    first = commit_info("a")
    result = apply_plan(store, plan_for(store, state, clock, first), clock=clock, actor="ci")
    assert result.applied and result.version == 1 and result.counts["create"] == 5
    applied = store.applied_state()
    assert applied.commit_sha == first.sha and applied.version == 1
    obj = applied.get("Campaign", "a")
    assert obj is not None and obj.commit_sha == first.sha and obj.created_at == clock.now()
    assert store.spec_by_hash(obj.spec_hash) == obj.spec
    assert audit_actions(store, commit=first.sha[:8]) == ["apply"] + ["create"] * 5
    apply_entry = store.query_audit(AuditQuery(actions=["apply"]))[0]
    assert apply_entry.actor == "ci" and apply_entry.details["author"] == "Alice <alice@example.com>"

    audit_before = len(store.query_audit(AuditQuery()))
    again = apply_plan(store, plan_for(store, state, clock, first), clock=clock, actor="ci")
    assert not again.applied and again.version == 1
    assert len(store.query_audit(AuditQuery())) == audit_before
    assert store.applied_state() == applied


def test_update_keeps_created_at_and_a_new_commit_without_changes_moves_the_commit(
        store: StateStore, clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a")), clock, commit_info("a")), clock=clock, actor="ci")
    created = store.applied_state().get("Campaign", "a")
    clock.advance(timedelta(days=2))
    second = commit_info("b")
    result = apply_plan(store, plan_for(store, desired(campaigns("a", a=campaign_yaml("a", body="v2"))), clock,
                                        second), clock=clock, actor="ci")
    assert result.counts["update"] == 1
    updated = store.applied_state().get("Campaign", "a")
    assert created is not None and updated is not None
    assert updated.created_at == created.created_at and updated.applied_at == clock.now()
    assert updated.spec_hash != created.spec_hash and store.spec_by_hash(created.spec_hash) == created.spec
    [update] = store.query_audit(AuditQuery(actions=["update"]))
    assert update.details["diff"] == [{"path": "spec.message.body", "old": "Hello {{ user.first_name }}",
                                       "new": "v2"}]
    readme_only = apply_plan(store, plan_for(store, desired(campaigns("a", a=campaign_yaml("a", body="v2"))),
                                             clock, commit_info("c")), clock=clock, actor="ci")
    assert readme_only.applied and readme_only.version == 3
    assert store.applied_state().commit_sha == "c" * 40


def test_stale_plan_is_refused_and_audited_once(store: StateStore, clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a")), clock, commit_info("a")), clock=clock, actor="ci")
    saved = Plan.from_json(plan_for(store, desired(campaigns("a", "b")), clock, commit_info("b")).to_json())
    set_campaign_paused(store, "a", True, clock=clock, actor="oncall")  # the state moves on
    before = store.applied_state()
    for _ in range(2):
        with pytest.raises(StalePlanError, match=r"computed against applied-state version 1.*now at version 2"):
            apply_plan(store, saved, clock=clock, actor="ci")
    assert store.applied_state() == before
    [refusal] = store.query_audit(AuditQuery(actions=["apply_refused"]))
    assert refusal.commit_sha == "b" * 40 and refusal.details["reason"] == "stale_plan"
    assert refusal.details["plan_version"] == 1 and refusal.details["current_version"] == 2


def test_prune_guard_refuses_without_override(store: StateStore, clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a", "b", "c")), clock, commit_info("a")), clock=clock,
               actor="ci")
    store.enqueue([OutboxItem("k1", "a", "u1", "+15550001", clock.now())])
    mass_delete = plan_for(store, desired(campaigns("c")), clock, commit_info("d", "remove old campaigns"))
    with pytest.raises(PruneGuardError, match="deletes or pauses 2 of 3 active campaigns"):
        apply_plan(store, mass_delete, clock=clock, actor="daemon")
    assert store.applied_state().get("Campaign", "a") is not None
    [refusal] = store.query_audit(AuditQuery(actions=["apply_refused"]))
    assert refusal.details["reason"] == "prune_guard" and refusal.details["prune_guard"]["removed"] == ["a", "b"]

    result = apply_plan(store, mass_delete, clock=clock, actor="alice", allow_prune=True)
    assert result.counts["delete"] == 2 and result.cancelled_outbox == 1
    assert store.applied_state().get("Campaign", "a") is None
    assert store.list_outbox(campaign="a")[0].status == "cancelled"
    apply_entry = store.query_audit(AuditQuery(actions=["apply"], newest_first=True, limit=1))[0]
    assert apply_entry.details["allow_prune"] is True and apply_entry.actor == "alice"


def test_a_failing_apply_changes_nothing(store: StateStore, clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a")), clock, commit_info("a")), clock=clock, actor="ci")
    before = store.applied_state()
    audit_before = store.query_audit(AuditQuery())
    data = json.loads(plan_for(store, desired(campaigns("a", "b")), clock, commit_info("b")).to_json())
    broken = dict(data["changes"][-1], kind=None, name=None)  # e.g. a hand-edited plan file
    data["changes"].append(broken)
    with pytest.raises(StoreError):
        apply_plan(store, Plan.from_dict(data), clock=clock, actor="ci")
    assert store.applied_state() == before
    assert store.query_audit(AuditQuery()) == audit_before


def test_git_pause_stops_claims_and_resume_restarts_them(store: StateStore, clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a")), clock), clock=clock, actor="ci")
    store.enqueue([OutboxItem("k1", "a", "u1", "+15550001", clock.now())])
    paused = plan_for(store, desired(campaigns("a", a=campaign_yaml("a", paused=True))), clock)
    apply_plan(store, paused, clock=clock, actor="ci", allow_prune=True)
    assert store.claim("w", 10, clock.now(), LEASE) == []
    apply_plan(store, plan_for(store, desired(campaigns("a")), clock), clock=clock, actor="ci")
    assert [r.idempotency_key for r in store.claim("w", 10, clock.now(), LEASE)] == ["k1"]


def test_override_survives_unrelated_applies_and_clears_when_git_agrees(store: StateStore,
                                                                        clock: FakeClock) -> None:
    apply_plan(store, plan_for(store, desired(campaigns("a", "b", "c")), clock), clock=clock, actor="ci")
    set_campaign_paused(store, "a", True, clock=clock, actor="oncall", reason="complaints")
    apply_plan(store, plan_for(store, desired(campaigns("a", "b", "c", a=campaign_yaml("a", body="v2"))), clock),
               clock=clock, actor="ci")
    state = store.applied_state()
    assert state.get("Campaign", "a").paused and ("Campaign", "a") in state.overrides  # type: ignore[union-attr]
    agree = plan_for(store, desired(campaigns("a", "b", "c", a=campaign_yaml("a", body="v2", paused=True))), clock)
    assert agree.drift[0].resolution == "resolved"
    assert not agree.prune.tripped  # already paused: not counted as an active campaign removed
    apply_plan(store, agree, clock=clock, actor="ci")
    state = store.applied_state()
    assert state.overrides == {} and state.get("Campaign", "a").paused  # type: ignore[union-attr]
    assert "pause" in audit_actions(store, campaign="a")


def test_desired_from_applied_rebuilds_models_with_effective_pause(store: StateStore, clock: FakeClock) -> None:
    state = desired(campaigns("a", "b"))
    apply_plan(store, plan_for(store, state, clock), clock=clock, actor="ci")
    set_campaign_paused(store, "b", True, clock=clock, actor="oncall")
    rebuilt = desired_from_applied(store.applied_state())
    assert rebuilt.campaigns["a"] == state.campaigns["a"]
    assert rebuilt.providers == state.providers and rebuilt.groups == state.groups
    assert rebuilt.settings == state.settings
    assert rebuilt.campaigns["b"].spec.paused and not state.campaigns["b"].spec.paused


def _git_commit(repo: Repo, files: dict[str, str], message: str) -> str:
    root = Path(repo.working_tree_dir or ".")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
        repo.index.add([rel])
    alice = Actor("Alice", "alice@example.com")
    return repo.index.commit(message, author=alice, committer=alice).hexsha


def test_reconcile_commits_end_to_end(store: StateStore, clock: FakeClock, tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "repo", initial_branch="main")
    first = _git_commit(repo, {"providers/acme.yaml": PROVIDERS, "campaigns/settings.yaml": SETTINGS,
                               "campaigns/promo.yaml": campaign_yaml("promo")}, "Add promo")
    result = reconcile(store, read_commit(repo), clock=clock)
    assert result.applied and store.applied_state().commit_sha == first
    assert not reconcile(store, read_commit(repo), clock=clock).applied
    assert audit_actions(store, campaign="promo") == ["create"]
    [entry] = store.query_audit(AuditQuery(campaign="promo"))
    assert entry.commit_sha == first

    second = _git_commit(repo, {"campaigns/promo.yaml": campaign_yaml("promo", body="Edited")}, "Edit promo")
    reconcile(store, read_commit(repo), clock=clock)
    assert audit_actions(store, commit=second) == ["apply", "update"]

    bad = _git_commit(repo, {"campaigns/promo.yaml": "apiVersion: herald/v1\nkind: Campaign\n"}, "Break it")
    for _ in range(2):  # a polling daemon retries; the refusal is audited once
        with pytest.raises(InvalidDesiredState):
            reconcile(store, read_commit(repo), clock=clock)
    assert audit_actions(store, commit=bad) == ["apply_refused"]
    assert store.applied_state().commit_sha == second


def test_reconcile_loses_a_race_gracefully(store: StateStore, store_url: str, clock: FakeClock,
                                           tmp_path: Path) -> None:
    """Two daemons reconcile one commit at once: one applies, the other re-plans and finds it done."""
    from reconciler.store import open_state_store

    repo = Repo.init(tmp_path / "repo", initial_branch="main")
    _git_commit(repo, {"providers/acme.yaml": PROVIDERS, "campaigns/promo.yaml": campaign_yaml("promo")}, "Add")
    snapshot = read_commit(repo)
    other_daemon = open_state_store(store_url, clock=clock)
    raced = []

    def reach_while_the_other_daemon_applies(campaign: object, state: object) -> int:
        if not raced:  # called while planning, after the state was read: the other daemon wins now
            raced.append(reconcile(other_daemon, snapshot, clock=clock, actor="daemon-2"))
        return 1

    try:
        result = reconcile(store, snapshot, clock=clock, actor="daemon-1", reach=reach_while_the_other_daemon_applies)
    finally:
        other_daemon.close()
    assert raced[0].applied and not result.applied
    assert audit_actions(store, actions=["apply", "apply_refused"]) == ["apply"]
    assert store.query_audit(AuditQuery(actions=["apply"]))[0].actor == "daemon-2"
