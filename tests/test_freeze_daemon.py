"""The daemon inside a freeze window: new commits are held (audited once) while the applied campaigns
deliver or pause as the window declares; the held commit applies after the window or with the
daemon's override. Real git, SQLite, DuckDB and the mock provider; a FakeClock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from reconciler.demo import DemoWorld, commit_all, demo_world
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
    body: "BODY {{ user.first_name }}"
  providerGroup: global
"""


def make_world(tmp_path: Path, deliveries: str) -> Iterator[DemoWorld]:
    source = tmp_path / "source"
    (source / "campaigns").mkdir(parents=True)
    shutil.copytree(ROOT / "providers", source / "providers")
    settings = (ROOT / "campaigns" / "settings.yaml").read_text()
    # Dec 1, 16:00-18:00 UTC: the promo's 17:00 run falls inside.
    settings += f'  freezeWindows:\n    - {{cron: "0 16 1 12 *", duration: 2h, deliveries: {deliveries}}}\n'
    (source / "campaigns" / "settings.yaml").write_text(settings)
    (source / "campaigns" / "promo.yaml").write_text(PROMO.replace("BODY", "Hello"))
    with demo_world(tmp_path / "world", population=30, start=START,
                    sources=[source / "providers", source / "campaigns"]) as world:
        yield world


@pytest.fixture(params=["pause", "continue"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DemoWorld]:
    yield from make_world(tmp_path, request.param)


def bodies(world: DemoWorld) -> list[str]:
    messages = httpx.get(f"{world.mock_url}/_mock/messages").json()["messages"]
    return [str(m["body"]).split(" ")[0] for m in messages]


def test_commit_held_during_the_window_deliveries_as_declared(world: DemoWorld) -> None:
    store = world.engine.rt.store
    world.step()  # 08:00, before the window: applied
    first = store.applied_state().commit_sha
    mode = world.engine.state.settings.spec.freezeWindows[0].deliveries
    assert first is not None

    world.advance_to(datetime(2026, 12, 1, 17, 5, tzinfo=UTC), every=timedelta(minutes=30))
    sent_in_window = bodies(world)
    if mode == "pause":
        assert sent_in_window == []  # the run is queued; nothing goes out while the window pauses deliveries
    else:
        assert sent_in_window and set(sent_in_window) == {"Hello"}

    repo_dir = Path(world.repo.working_tree_dir or "")
    (repo_dir / "campaigns" / "promo.yaml").write_text(PROMO.replace("BODY", "Changed").replace("17:00", "19:00"))
    held_sha = commit_all(world.repo, "Change promo during the freeze")
    world.step()
    world.step()  # polled again: still held, audited once
    assert store.applied_state().commit_sha == first
    held = store.query_audit(AuditQuery(commit=held_sha, actions=["apply_held"]))
    assert len(held) == 1 and held[0].details["freeze"]["ends_at"] == "2026-12-01T18:00:00+00:00"
    assert world.engine.last_sync_error is not None and "freeze window" in world.engine.last_sync_error

    world.advance_to(datetime(2026, 12, 1, 18, 5, tzinfo=UTC), every=timedelta(minutes=30))
    assert set(bodies(world)) == {"Hello"} and bodies(world)  # queued messages went out after the window
    world.step()  # the first poll after the window applies the held commit
    assert store.applied_state().commit_sha == held_sha
    assert store.query_audit(AuditQuery(actions=["freeze_override"])) == []


def test_daemon_override_applies_inside_the_window(tmp_path: Path) -> None:
    for world in make_world(tmp_path, "continue"):
        store = world.engine.rt.store
        world.step()
        world.clock.set(datetime(2026, 12, 1, 16, 30, tzinfo=UTC))
        repo_dir = Path(world.repo.working_tree_dir or "")
        (repo_dir / "campaigns" / "promo.yaml").write_text(PROMO.replace("BODY", "Urgent"))
        sha = commit_all(world.repo, "Urgent fix")
        world.engine.override_freeze = True  # `herald run --override-freeze`
        world.step()
        assert store.applied_state().commit_sha == sha
        [entry] = store.query_audit(AuditQuery(commit=sha, actions=["freeze_override"]))
        assert entry.actor == "demo" and entry.details["ends_at"] == "2026-12-01T18:00:00+00:00"
        assert store.query_audit(AuditQuery(commit=sha, actions=["apply_held"])) == []
