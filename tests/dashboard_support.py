"""A populated state store for the dashboard tests: the demo story, then a second commit (with a
hostile description and commit message) that edits one campaign and deletes another, and an
operator pause. Also a real HTTP server for the browser tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import uvicorn
from git import Repo
from starlette.applications import Starlette

from reconciler.apply import reconcile, set_campaign_paused
from reconciler.audience.store import AudienceStore, open_audience_store
from reconciler.clock import FakeClock
from reconciler.demo import commit_all, run_demo
from reconciler.gitsource import read_commit
from reconciler.http.dashboard import dashboard_app
from reconciler.store import open_state_store
from reconciler.store.base import StateStore

ADMIN_TOKEN = "dashboard-test-admin-token-4b9e1f"
HOSTILE_DESCRIPTION = '<script>alert("desc")</script><img src=x onerror="alert(1)"> & more'
HOSTILE_SUBJECT = 'Tweak win-back "><svg onload=alert(2)><script>alert(3)</script>'
EDITED = "weekly-winback"
DELETED = "travel-reminder"
PAUSED = "holiday-coupons"
AFTER_DEMO = datetime(2026, 12, 5, 13, 0, tzinfo=UTC)  # the demo story ends at 12:00 on its fake clock


@dataclass
class DashboardWorld:
    store: StateStore
    audience: AudienceStore
    clock: FakeClock
    first_commit: str
    second_commit: str

    def app(self, token: str | None = ADMIN_TOKEN) -> Starlette:
        return dashboard_app(self.store, self.audience, self.clock, token)


def _edit_repo(repo_dir: Path) -> None:
    statement = repo_dir / "campaigns" / "monthly-statement.yaml"
    text = statement.read_text()
    anchor = f"metadata:\n  name: {EDITED}\n"
    assert anchor in text
    statement.write_text(text.replace(anchor, f"{anchor}  description: {json.dumps(HOSTILE_DESCRIPTION)}\n"))
    live = repo_dir / "campaigns" / "live.yaml"
    documents = live.read_text().split("\n---\n")
    kept = [d for d in documents if f"name: {DELETED}\n" not in d]
    assert len(kept) == len(documents) - 1
    live.write_text("\n---\n".join(kept))


@contextmanager
def dashboard_world(workdir: Path, population: int = 120) -> Iterator[DashboardWorld]:
    run_demo(workdir, population=population, echo=lambda _line: None)
    repo = Repo(workdir / "repo")
    first = repo.head.commit.hexsha
    _edit_repo(workdir / "repo")
    second = commit_all(repo, f"{HOSTILE_SUBJECT}\n\nand a body")
    store = open_state_store(f"sqlite:///{workdir / 'state.db'}", create=False)
    clock = FakeClock(AFTER_DEMO)
    reconcile(store, read_commit(repo, "HEAD"), clock=clock, actor="test")
    clock.advance(timedelta(minutes=5))
    set_campaign_paused(store, PAUSED, True, clock=clock, actor="operator", reason="holiday freeze <b>now</b>")
    audience = open_audience_store(f"duckdb:///{workdir / 'audience.duckdb'}")
    try:
        yield DashboardWorld(store, audience, clock, first, second)
    finally:
        store.close()
        audience.close()


@contextmanager
def serve(app: Starlette) -> Iterator[str]:
    """Serve `app` on a free loopback port in a thread; yields the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="dashboard-test")
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:  # bounded wait for the server thread to bind, not a wait for time
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("dashboard test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass(frozen=True)
class Element:
    tag: str
    attrs: dict[str, str]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append(Element(tag, {k: v or "" for k, v in attrs}))


def elements(html: str, tag: str | None = None, cls: str | None = None) -> list[Element]:
    """Start tags of a page (parsed with the standard library), optionally by tag and class."""
    collector = _Collector()
    collector.feed(html)
    return [e for e in collector.found if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)]
