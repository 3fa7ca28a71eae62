"""Freeze windows hold applies (audited once per commit); an explicit override applies and is audited.

The windows that count are the applied Settings', so a commit cannot lift its own freeze.
Store level on SQLite and PostgreSQL, then the CLI (`herald apply --override-freeze`).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from git import Actor, Repo
from plan_helpers import PROVIDERS, campaign_yaml

from reconciler.apply import FreezeHeld, applied_freeze, reconcile
from reconciler.cli import main
from reconciler.clock import FakeClock
from reconciler.gitsource import CommitSnapshot
from reconciler.loading import SourceFile
from reconciler.store import AuditEntry, AuditQuery, StateStore

pytest_plugins = ["state_fixtures"]
ROOT = Path(__file__).resolve().parent.parent

# Friday 00:00 UTC for 72 h: the weekend freeze. 2026-12-04 is a Friday.
FROZEN_SETTINGS = """\
apiVersion: herald/v1
kind: Settings
metadata: {name: global}
spec:
  freezeWindows:
    - {cron: "0 0 * * 5", duration: 72h}
"""
OPEN_SETTINGS = """\
apiVersion: herald/v1
kind: Settings
metadata: {name: global}
spec: {}
"""
SATURDAY = datetime(2026, 12, 5, 10, tzinfo=UTC)
MONDAY = datetime(2026, 12, 7, 0, 30, tzinfo=UTC)


def snapshot(sha_char: str, settings: str, *names: str, body: str = "Hello {{ user.first_name }}") -> CommitSnapshot:
    files = [SourceFile("providers/acme.yaml", PROVIDERS.encode()), SourceFile("campaigns/settings.yaml", settings.encode())]
    files += [SourceFile(f"campaigns/{n}.yaml", campaign_yaml(n, body=body).encode()) for n in names]
    return CommitSnapshot(sha=sha_char * 40, author="Alice <alice@example.com>", message=f"commit {sha_char}",
                          committed_at=datetime(2026, 11, 30, tzinfo=UTC), files=files)


def entries(store: StateStore, action: str, commit: str | None = None) -> list[AuditEntry]:
    return store.query_audit(AuditQuery(actions=[action], commit=commit))


def test_apply_inside_a_freeze_window_is_held_and_audited_once(store: StateStore, clock: FakeClock) -> None:
    first = reconcile(store, snapshot("a", FROZEN_SETTINGS, "promo"), clock=clock)  # Tuesday: no freeze yet
    assert first.applied and applied_freeze(store.applied_state(), clock.now()) is None

    clock.set(SATURDAY)
    held = snapshot("b", FROZEN_SETTINGS, "promo", "launch")
    for _ in range(2):  # the daemon polls the same commit again: one audit entry
        with pytest.raises(FreezeHeld) as raised:
            reconcile(store, held, clock=clock)
        assert "freeze window in force (cron '0 0 * * 5', until 2026-12-07 00:00Z)" in str(raised.value)
    state = store.applied_state()
    assert state.commit_sha == "a" * 40 and state.get("Campaign", "launch") is None
    [entry] = entries(store, "apply_held", "b" * 40)
    assert entry.details["reason"] == "freeze_window"
    assert entry.details["freeze"]["ends_at"] == "2026-12-07T00:00:00+00:00"
    assert entry.details["freeze"]["deliveries"] == "continue"
    assert entries(store, "apply_refused") == []

    clock.set(MONDAY)  # the window ended: the next poll applies the held commit without an override
    assert reconcile(store, held, clock=clock).applied
    assert store.applied_state().get("Campaign", "launch") is not None
    assert entries(store, "freeze_override") == []


def test_a_commit_cannot_lift_its_own_freeze(store: StateStore, clock: FakeClock) -> None:
    reconcile(store, snapshot("a", FROZEN_SETTINGS, "promo"), clock=clock)
    clock.set(SATURDAY)
    with pytest.raises(FreezeHeld):
        reconcile(store, snapshot("b", OPEN_SETTINGS, "promo"), clock=clock)  # removes the window
    assert store.applied_state().commit_sha == "a" * 40


def test_override_applies_inside_the_window_and_is_audited(store: StateStore, clock: FakeClock) -> None:
    reconcile(store, snapshot("a", FROZEN_SETTINGS, "promo"), clock=clock)
    clock.set(SATURDAY)
    result = reconcile(store, snapshot("c", FROZEN_SETTINGS, "promo", body="Hotfix"), clock=clock, actor="oncall",
                       override_freeze=True)
    assert result.applied and store.applied_state().commit_sha == "c" * 40
    [override] = entries(store, "freeze_override", "c" * 40)
    assert override.actor == "oncall"
    assert override.details["cron"] == "0 0 * * 5" and override.details["changes"]["update"] == 1
    [apply_entry] = entries(store, "apply", "c" * 40)
    assert apply_entry.details["freeze_override"] is True
    assert entries(store, "apply_held") == []


def test_a_commit_without_object_changes_is_not_held(store: StateStore, clock: FakeClock) -> None:
    reconcile(store, snapshot("a", FROZEN_SETTINGS, "promo"), clock=clock)
    clock.set(SATURDAY)
    result = reconcile(store, snapshot("d", FROZEN_SETTINGS, "promo"), clock=clock)  # e.g. a README edit
    assert result.applied and store.applied_state().commit_sha == "d" * 40
    assert entries(store, "apply_held") == [] and entries(store, "freeze_override") == []


# ---------------------------------------------------------------- CLI


def herald(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_apply_is_held_then_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "providers", tmp_path / "providers")
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    settings = tmp_path / "campaigns" / "settings.yaml"
    # A window that opens every minute and lasts an hour: in force whenever the test runs.
    settings.write_text(settings.read_text() + '  freezeWindows:\n    - {cron: "* * * * *", duration: 1h}\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_STATE_URL", f"sqlite:///{tmp_path}/.herald/state.db")
    monkeypatch.setenv("HERALD_ACTOR", "tester")
    repo = Repo.init(tmp_path, initial_branch="main")
    alice = Actor("Alice", "alice@example.com")
    repo.index.add([str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml")])
    repo.index.commit("Initial campaigns", author=alice, committer=alice)
    assert herald("apply", "--repo", str(tmp_path), "--yes").exit_code == 0  # nothing applied yet: no freeze

    flash = tmp_path / "campaigns" / "flash-sale.yaml"
    flash.write_text(flash.read_text().replace("30% off", "40% off"))
    repo.index.add(["campaigns/flash-sale.yaml"])
    sha = repo.index.commit("Deeper discount", author=alice, committer=alice).hexsha
    held = herald("apply", "--repo", str(tmp_path), "--yes")
    assert held.exit_code == 1 and "freeze window in force" in held.stderr and "--override-freeze" in held.stderr
    audit = json.loads(herald("audit", "--commit", sha, "--format", "json").stdout)
    assert [e["action"] for e in audit] == ["apply_held"]

    forced = herald("apply", "--repo", str(tmp_path), "--yes", "--override-freeze")
    assert forced.exit_code == 0, forced.output
    actions = [e["action"] for e in json.loads(herald("audit", "--commit", sha, "--format", "json").stdout)]
    assert actions[:3] == ["apply_held", "apply", "freeze_override"] and "update" in actions
    override = json.loads(herald("audit", "--action", "freeze_override", "--format", "json").stdout)
    assert override[0]["actor"] == "tester" and override[0]["details"]["cron"] == "* * * * *"
