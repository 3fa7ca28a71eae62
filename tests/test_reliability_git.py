"""Git faults: an unreachable remote, a force-push that rewrites history, an invalid commit on the
branch. The engine keeps running the last applied state, reports the error (metric, audit entry,
/healthz) and recovers when the branch is fixed. In-process with a FakeClock, then once through the
real daemon process over HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from daemon_harness import (
    ADMIN_TOKEN,
    SETTINGS_YAML,
    DaemonProcess,
    Mock,
    campaign_yaml,
    commit_files,
    engine_world,
    ingest,
    metric_value,
    mock_provider,
    population,
    providers_yaml,
    soon,
    standard_files,
    wait_for,
    write_repo,
)
from git import Repo

from reconciler.demo import DemoWorld
from reconciler.engine import LAST_ERROR_KEY
from reconciler.gitsource import GitSource
from reconciler.store.base import AuditQuery

FIRE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
USERS = 12
BROKEN_YAML = "apiVersion: herald/v1\nkind: Campaign\nmetadata: {name: promo\nspec: [unclosed\n"


def desired(body: str = "Hi") -> dict[str, str]:
    return {
        "providers/providers.yaml": providers_yaml(),
        "campaigns/settings.yaml": SETTINGS_YAML,
        "campaigns/promo.yaml": campaign_yaml("promo", FIRE, everyone=True).replace("Hi {{", body + " {{"),
        "campaigns/later.yaml": campaign_yaml("later", FIRE + timedelta(hours=3), everyone=True),
    }


@dataclass
class Remote:
    """A bare 'origin' repository the engine fetches from (file://), and a clone to push from."""

    bare: Path
    work: Repo

    @property
    def url(self) -> str:
        return f"file://{self.bare}"

    def push(self, *, force: bool = False) -> None:
        if not (self.bare / "HEAD").exists():
            Repo.init(self.bare, bare=True, initial_branch="main")
        self.work.git.push("--force" if force else "--no-force", "origin", "main")

    def commit(self, files: dict[str, str], message: str, *, push: bool = True) -> str:
        sha = commit_files(self.work, files, message)
        if push:
            self.push()
        return sha

    def vanish(self) -> None:
        shutil.rmtree(self.bare)


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    work = write_repo(tmp_path / "work", desired(), "initial desired state")
    found = Remote(tmp_path / "origin.git", work)
    work.create_remote("origin", str(found.bare))
    found.push()
    return found


@pytest.fixture
def world(tmp_path: Path, remote: Remote) -> Iterator[DemoWorld]:
    with engine_world(tmp_path, desired(), population=USERS) as w:
        w.engine.source = GitSource(remote.url, "main", cache_dir=tmp_path / "git-cache")
        w.step()
        yield w


def applied_commit(world: DemoWorld) -> str | None:
    return world.engine.rt.store.applied_state().commit_sha


def errors_metric(world: DemoWorld, stage: str) -> float:
    return metric_value(world.engine.rt.metrics.render().decode(), "herald_reconcile_errors_total", {"stage": stage})


def audit(world: DemoWorld, *actions: str, commit: str | None = None) -> list[dict[str, object]]:
    entries = world.engine.rt.store.query_audit(AuditQuery(actions=list(actions), commit=commit))
    return [dict(e.details) for e in entries]


def still_delivers(world: DemoWorld, campaign: str, at: datetime, body: str) -> None:
    """The last applied state keeps running: the campaign fires on time with its applied text."""
    while world.clock.now() < at + timedelta(minutes=5):
        world.clock.set(min(at + timedelta(minutes=5), world.clock.now() + timedelta(minutes=30)))
        world.step()  # syncing every step, as the daemon does: the git fault is still there
    sent = world.engine.rt.store.list_outbox(campaign=campaign, statuses=["sent"], limit=1000)
    assert len(sent) == USERS
    bodies = {str(m["body"]).split(" ")[0] for m in Mock(world.mock_url).messages()
              if m["idempotency_key"] in {r.idempotency_key for r in sent}}
    assert bodies == {body}


def test_unreachable_remote_keeps_the_applied_state_running_and_recovers(world: DemoWorld, remote: Remote) -> None:
    good = applied_commit(world)
    assert good == remote.work.head.commit.hexsha
    remote.vanish()
    world.step()
    world.step()  # still unreachable: counted again, audited once
    assert applied_commit(world) == good
    assert errors_metric(world, "git") == 2
    errors = audit(world, "error")
    assert len(errors) == 1 and errors[0]["stage"] == "git" and "cannot fetch" in str(errors[0]["message"])
    last_error = world.engine.rt.store.kv_get(LAST_ERROR_KEY)
    assert last_error and last_error["stage"] == "git"

    still_delivers(world, "promo", FIRE, "Hi")
    assert len(audit(world, "error")) == 1 and errors_metric(world, "git") > 2

    remote.push()  # the remote is back (same history)
    fixed = remote.commit(desired("Hello"), "new text")
    world.step()
    assert applied_commit(world) == fixed
    assert world.engine.rt.store.kv_get(LAST_ERROR_KEY) is None
    still_delivers(world, "later", FIRE + timedelta(hours=3), "Hi")


def test_force_push_that_rewrites_history_is_followed(world: DemoWorld, remote: Remote) -> None:
    first = applied_commit(world)
    second = remote.commit(desired("Second"), "second")
    world.step()
    assert applied_commit(world) == second
    remote.work.git.reset("--hard", first)  # rewrite: drop 'second', commit something else instead
    rewritten = commit_files(remote.work, desired("Rewritten"), "rewritten history")
    remote.push(force=True)
    world.step()
    assert applied_commit(world) == rewritten
    assert errors_metric(world, "git") == 0
    updates = world.engine.rt.store.query_audit(AuditQuery(campaign="promo", actions=["update"]))
    assert [u.commit_sha for u in updates] == [second, rewritten]
    still_delivers(world, "promo", FIRE, "Rewritten")


def test_invalid_yaml_on_the_branch_is_refused_once_and_the_fix_is_applied(world: DemoWorld, remote: Remote) -> None:
    good = applied_commit(world)
    broken = remote.commit({"campaigns/promo.yaml": BROKEN_YAML}, "break promo")
    world.step()
    world.step()
    assert applied_commit(world) == good
    assert errors_metric(world, "apply") == 2
    refused = audit(world, "apply_refused", commit=broken)
    assert len(refused) == 1 and "promo.yaml" in str(refused[0])
    last_error = world.engine.rt.store.kv_get(LAST_ERROR_KEY)
    assert last_error and last_error["stage"] == "apply"

    still_delivers(world, "promo", FIRE, "Hi")  # the applied (valid) version keeps running

    fixed = remote.commit(desired("Fixed"), "fix promo")
    world.step()
    assert applied_commit(world) == fixed
    assert world.engine.rt.store.kv_get(LAST_ERROR_KEY) is None
    assert world.engine.last_sync_error is None


def test_the_daemon_process_reports_git_errors_over_http_and_recovers(tmp_path: Path) -> None:
    users = population(5)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, users)
    work = write_repo(tmp_path / "work", standard_files(soon(3600)), "initial")
    remote = Remote(tmp_path / "origin.git", work)
    work.create_remote("origin", str(remote.bare))
    remote.push()
    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d", remote.url, f"sqlite:///{tmp_path / 'state.db'}", audience_url,
                               mock.url, poll_interval=30)
        daemon.start()
        try:
            health = daemon.wait_healthy()
            wait_for(lambda: daemon.healthz()["last_applied_commit"] == work.head.commit.hexsha, 20,
                     "the first apply", on_timeout=daemon.log_tail)
            sync = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            remote.vanish()
            assert httpx.post(f"{daemon.base_url}/admin/sync", headers=sync).status_code == 202
            wait_for(lambda: (daemon.healthz()["last_error"] or {}).get("stage") == "git", 20, "the git error",
                     on_timeout=daemon.log_tail)
            assert metric_value(daemon.metrics(), "herald_reconcile_errors_total", {"stage": "git"}) >= 1
            assert daemon.running()

            remote.push()
            broken = remote.commit({"campaigns/blast.yaml": BROKEN_YAML}, "break it")
            httpx.post(f"{daemon.base_url}/admin/sync", headers=sync)
            wait_for(lambda: (daemon.healthz()["last_error"] or {}).get("stage") == "apply", 20,
                     "the apply error", on_timeout=daemon.log_tail)
            assert metric_value(daemon.metrics(), "herald_reconcile_errors_total", {"stage": "apply"}) >= 1
            health = daemon.healthz()
            assert health["last_applied_commit"] != broken and health["status"] == "degraded"
            [problem] = health["problems"]
            assert problem["unit"] == "commit" and problem["reason"].startswith("apply: ")

            fixed = remote.commit(standard_files(soon(3600)), "fix it")
            httpx.post(f"{daemon.base_url}/admin/sync", headers=sync)
            wait_for(lambda: daemon.healthz()["last_applied_commit"] == fixed, 20, "the fix to apply",
                     on_timeout=daemon.log_tail)
            assert daemon.healthz()["last_error"] is None
            assert daemon.healthz()["status"] == "ok"
        finally:
            assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log_text()
