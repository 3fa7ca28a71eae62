"""Commit status and notifications against a real local HTTP server (GitHub API and webhook stand-in).

What matters: exactly one status and one notification per commit and result, however often the
daemon polls, across restarts (a new Notifier on the same store) and across two daemons sharing a
PostgreSQL store; failure status for a refused commit; failed deliveries are retried, never raise,
and never leak a secret."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler.alerts import Alert
from reconciler.apply import reconcile
from reconciler.clock import FakeClock
from reconciler.gitsource import CommitSnapshot
from reconciler.loading import SourceFile
from reconciler.models.common import Secret
from reconciler.notify import (
    MAX_DESCRIPTION,
    CommitOutcome,
    Notifier,
    NotifyConfig,
    commit_payload,
    outcome_from_apply,
    repository_from_remote,
    truncate,
)
from reconciler.outbound import OutboundPolicy, parse_networks
from reconciler.store import open_state_store
from reconciler.store.base import StateStore

TOKEN = "ghp_notify-test-token-0123456789"
HOOK_SECRET = "T000/B000/hook-secret-xyz"
ENV = {"HERALD_GITHUB_TOKEN": TOKEN, "HOOK_URL_SECRET": ""}
LOOPBACK = OutboundPolicy(parse_networks(["127.0.0.0/8"]))  # the stand-in servers listen on loopback
SHA = "a" * 40


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Recorder:
    """What the local server received; `fail_next` makes the next N requests answer 500."""

    requests: list[Received] = field(default_factory=list)
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def statuses(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if "/statuses/" in r.path]

    def hooks(self) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith("/hooks/")]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.fail_next = 0


def make_app(recorder: Recorder) -> Starlette:
    async def record(request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        with recorder.lock:
            if recorder.fail_next > 0:
                recorder.fail_next -= 1
                return JSONResponse({"message": "Server Error"}, status_code=500)
            recorder.requests.append(Received(request.url.path, dict(request.headers), body))
        if "/statuses/" in request.url.path:
            return JSONResponse({"id": len(recorder.requests), "state": body.get("state")}, status_code=201)
        return Response("ok")

    return Starlette(routes=[Route("/repos/{owner}/{repo}/statuses/{sha}", record, methods=["POST"]),
                             Route("/hooks/{rest:path}", record, methods=["POST"])])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(make_app(recorder), log_level="error", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert uv.started, "local notification server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", recorder
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


@pytest.fixture
def local(server: tuple[str, Recorder]) -> Iterator[tuple[str, Recorder]]:
    server[1].reset()
    yield server
    server[1].reset()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def store(sqlite_url: str, clock: FakeClock) -> Iterator[StateStore]:
    s = open_state_store(sqlite_url, clock=clock)
    yield s
    s.close()


def config_for(url: str, **overrides: Any) -> NotifyConfig:
    values: dict[str, Any] = {"github_enabled": True, "github_repository": "acme/sms", "github_api_base": url,
                              "webhook_url": f"{url}/hooks/{HOOK_SECRET}", "outbound": LOOPBACK}
    values.update(overrides)
    return NotifyConfig(**values)


def notifier(store: StateStore, url: str, clock: FakeClock, **overrides: Any) -> Notifier:
    return Notifier(store, config_for(url, **overrides), clock=clock, environ=ENV)


def applied(sha: str = SHA, summary: str = "Applied: 2 created") -> CommitOutcome:
    return CommitOutcome(sha, "applied", summary, details={"changes": {"create": 2}},
                         target_url="https://herald.example/audit?commit=" + sha)


def test_one_status_and_one_notification_per_commit_however_often_it_is_polled(
        local: tuple[str, Recorder], store: StateStore, clock: FakeClock) -> None:
    url, recorder = local
    with notifier(store, url, clock) as n:
        first = n.notify_commit(applied())
        polls = [n.notify_commit(applied()) for _ in range(5)]
    assert first.channels == {"github": "sent", "webhook": "sent"}
    assert all(p.channels == {"github": "already_sent", "webhook": "already_sent"} for p in polls)
    [status] = recorder.statuses()
    assert status.path == f"/repos/acme/sms/statuses/{SHA}"
    assert status.body == {"state": "success", "context": "herald/apply", "description": "Applied: 2 created",
                           "target_url": f"https://herald.example/audit?commit={SHA}"}
    assert status.headers["authorization"] == f"Bearer {TOKEN}"
    assert status.headers["accept"] == "application/vnd.github+json"
    [hook] = recorder.hooks()
    assert hook.body["text"].startswith(f"Herald applied commit {SHA[:10]} in acme/sms")
    assert hook.body["herald"]["result"] == "applied" and hook.body["herald"]["details"] == {"changes": {"create": 2}}
    assert hook.body["attachments"][0]["color"] == "good"


def test_a_new_result_for_the_same_commit_is_reported_once_too(
        local: tuple[str, Recorder], store: StateStore, clock: FakeClock) -> None:
    url, recorder = local
    with notifier(store, url, clock) as n:
        for _ in range(3):
            n.notify_commit(CommitOutcome(SHA, "refused", "prune guard: 3 of 4 campaigns would be deleted"))
        for _ in range(3):
            n.notify_commit(applied())  # re-applied later with --allow-prune
    assert [s.body["state"] for s in recorder.statuses()] == ["failure", "success"]
    assert len(recorder.hooks()) == 2


def test_restart_does_not_resend(local: tuple[str, Recorder], sqlite_url: str, clock: FakeClock) -> None:
    url, recorder = local
    for _ in range(3):  # three daemon lifetimes, each with a fresh store connection and notifier
        store = open_state_store(sqlite_url, clock=clock)
        with notifier(store, url, clock) as n:
            n.notify_commit(applied())
            n.notify_commit(applied())
        store.close()
    assert len(recorder.statuses()) == 1 and len(recorder.hooks()) == 1


@pytest.mark.postgres
def test_two_daemons_on_one_postgres_store_report_once(local: tuple[str, Recorder], pg_dsn: str,
                                                       clock: FakeClock) -> None:
    url, recorder = local
    stores = [open_state_store(pg_dsn, clock=clock) for _ in range(2)]
    notifiers = [notifier(s, url, clock) for s in stores]
    barrier = threading.Barrier(2)

    def poll(n: Notifier) -> None:
        barrier.wait()
        for _ in range(5):
            n.notify_commit(applied())

    threads = [threading.Thread(target=poll, args=(n,)) for n in notifiers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for n, s in zip(notifiers, stores, strict=True):
        n.close()
        s.close()
    assert len(recorder.statuses()) == 1 and len(recorder.hooks()) == 1


def test_failures_are_logged_redacted_never_raised_and_retried_with_backoff(
        local: tuple[str, Recorder], store: StateStore, clock: FakeClock,
        caplog: pytest.LogCaptureFixture) -> None:
    url, recorder = local
    recorder.fail_next = 2  # the first GitHub call and the first webhook call answer 500
    with notifier(store, url, clock) as n, caplog.at_level(logging.ERROR, logger="herald.notify"):
        failed = n.notify_commit(applied())
        waiting = n.notify_commit(applied())  # the next poll comes before the backoff ends
        clock.advance(timedelta(seconds=31))
        retried = n.notify_commit(applied())
        done = n.notify_commit(applied())
    assert failed.channels == {"github": "failed", "webhook": "failed"}
    assert waiting.channels == {"github": "waiting", "webhook": "waiting"}
    assert retried.channels == {"github": "sent", "webhook": "sent"}
    assert done.channels == {"github": "already_sent", "webhook": "already_sent"}
    assert len(recorder.statuses()) == 1 and len(recorder.hooks()) == 1
    logged = caplog.text
    assert "HTTP 500" in logged
    assert TOKEN not in logged and HOOK_SECRET not in logged
    assert TOKEN not in json.dumps(store.kv_get(f"notify:commit:{SHA}:applied"))
    assert HOOK_SECRET not in json.dumps(store.kv_get(f"notify:commit:{SHA}:applied"))


def test_gives_up_after_max_attempts(store: StateStore, clock: FakeClock) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: connection refused
    try:
        with Notifier(store, config_for(url), clock=clock, environ=ENV, max_attempts=3) as n:
            reports = []
            for _ in range(5):
                reports.append(n.notify_commit(applied()))
                clock.advance(timedelta(hours=1))
    finally:
        closed.close()
    assert [r.channels["github"] for r in reports] == ["failed", "failed", "failed", "gave_up", "gave_up"]
    assert "ConnectError" in reports[0].errors["github"]


def test_a_broken_store_does_not_break_the_caller(local: tuple[str, Recorder], store: StateStore,
                                                  clock: FakeClock) -> None:
    url, _ = local
    store.close()
    report = notifier(store, url, clock).notify_commit(applied())
    assert "notifier" in report.errors


def test_channels_without_configuration_are_skipped(local: tuple[str, Recorder], store: StateStore,
                                                    clock: FakeClock) -> None:
    url, recorder = local
    no_token = Notifier(store, config_for(url, webhook_url=None), clock=clock, environ={})
    assert no_token.notify_commit(applied()).channels == {"github": "skipped"}
    no_repo = notifier(store, url, clock, github_repository=None, webhook_url=None)
    assert no_repo.notify_commit(applied()).channels == {"github": "skipped"}
    from_outcome = no_repo.notify_commit(CommitOutcome(SHA, "applied", "ok", repository="acme/other"))
    assert from_outcome.channels == {"github": "sent"}
    assert recorder.statuses()[0].path == f"/repos/acme/other/statuses/{SHA}"
    assert Notifier(store, NotifyConfig(), clock=clock).notify_commit(applied()).channels == {}


def test_secret_refs_for_token_and_webhook(local: tuple[str, Recorder], store: StateStore, clock: FakeClock) -> None:
    url, recorder = local
    env = {"GH_TOKEN_REF": "ghp_from-secret-ref-42", "HOOK_REF": f"{url}/hooks/from-ref"}
    config = config_for(url, github_token=Secret.model_validate({"secretRef": {"env": "GH_TOKEN_REF"}}),
                        webhook_url=Secret.model_validate({"secretRef": {"env": "HOOK_REF"}}))
    report = Notifier(store, config, clock=clock, environ=env).notify_commit(applied())
    assert report.channels == {"github": "sent", "webhook": "sent"}
    assert recorder.statuses()[0].headers["authorization"] == "Bearer ghp_from-secret-ref-42"
    assert recorder.hooks()[0].path == "/hooks/from-ref"


def test_description_is_at_most_140_characters_and_redacted() -> None:
    long = "Applied: " + "x" * 300
    assert len(truncate(long)) == MAX_DESCRIPTION and truncate(long).endswith("…")
    assert truncate("short\n  text") == "short text"


# ---------------------------------------------------------------- from a real reconcile

PROVIDERS = """\
apiVersion: herald/v1
kind: Provider
metadata: {name: acme}
spec:
  type: generic_http
  url: "https://sms.example.com/send"
  body: {to: "$$To", text: "$$Body"}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec: {providers: [acme], default: true}
"""


def campaign(name: str) -> str:
    return (f"apiVersion: herald/v1\nkind: Campaign\nmetadata: {{name: {name}}}\nspec:\n  type: past_behavior\n"
            f"  owner: team@example.com\n  schedule: {{cron: '0 10 * * *'}}\n  message: {{body: 'Hi'}}\n")


def snapshot(sha: str, *names: str, broken: bool = False) -> CommitSnapshot:
    files = [SourceFile("providers/acme.yaml", PROVIDERS.encode())]
    files += [SourceFile(f"campaigns/{n}.yaml", campaign(n).encode()) for n in names]
    if broken:
        files.append(SourceFile("campaigns/broken.yaml", b"kind: Campaign\nspec: [not, a, mapping]\n"))
    return CommitSnapshot(sha, "Dev <dev@example.com>", "change", datetime(2026, 12, 1, tzinfo=UTC), files)


def reconcile_and_notify(store: StateStore, n: Notifier, snap: CommitSnapshot, clock: FakeClock) -> None:
    try:
        result: Any = reconcile(store, snap, clock=clock)
    except Exception as exc:
        result = exc
    n.notify_commit(outcome_from_apply(snap.sha, result, repository="acme/sms"))


def test_daemon_polls_report_applied_invalid_and_refused_commits_once_each(
        local: tuple[str, Recorder], store: StateStore, clock: FakeClock) -> None:
    url, recorder = local
    commits = [snapshot("1" * 40, "a", "b", "c", "d"), snapshot("2" * 40, "a", "b", "c", "d", broken=True),
               snapshot("3" * 40)]  # the last one deletes every campaign: the prune guard refuses it
    with Notifier(store, config_for(url, github_repository=None), clock=clock, environ=ENV) as n:
        for snap in commits:
            for _ in range(3):  # three polls of the same head
                reconcile_and_notify(store, n, snap, clock)
    states = [(s.path.rsplit("/", 1)[1][:1], s.body["state"]) for s in recorder.statuses()]
    assert states == [("1", "success"), ("2", "failure"), ("3", "failure")]
    assert [h.body["herald"]["result"] for h in recorder.hooks()] == ["applied", "invalid", "refused"]
    assert "prune guard" in recorder.statuses()[2].body["description"]
    assert all(len(s.body["description"]) <= MAX_DESCRIPTION for s in recorder.statuses())


def test_outcome_mapping_and_payload_for_errors() -> None:
    outcome = outcome_from_apply(SHA, RuntimeError("database is locked"))
    assert outcome.result == "error"
    payload = commit_payload(outcome, NotifyConfig(), datetime(2026, 12, 1, tzinfo=UTC))
    assert payload["herald"]["state"] == "error" and payload["attachments"][0]["color"] == "warning"
    assert payload["text"].startswith(f"Herald failed to apply commit {SHA[:10]}")


def test_repository_from_git_remotes() -> None:
    assert repository_from_remote("https://github.com/acme/sms-campaigns.git") == "acme/sms-campaigns"
    assert repository_from_remote("git@github.com:acme/sms.campaigns.git") == "acme/sms.campaigns"
    assert repository_from_remote("https://x-token:abc@github.com/acme/sms") == "acme/sms"
    assert repository_from_remote("https://gitlab.com/acme/sms.git") is None


# ---------------------------------------------------------------- owner alerts


def alert(run: str, kind: str = "safety_block") -> Alert:
    return Alert(kind=kind, campaign="flash-sale", owner="growth@example.com",
                 text=f"blocked run {run}: 90000 users qualify", details={"run_id": run})


def test_owner_alerts_once_per_campaign_and_run(local: tuple[str, Recorder], store: StateStore,
                                                clock: FakeClock) -> None:
    url, recorder = local
    config = NotifyConfig(owner_webhook_url=f"{url}/hooks/owners", outbound=LOOPBACK)
    with Notifier(store, config, clock=clock) as n:
        assert all(n.send(alert("7")) for _ in range(4))  # AlertSink protocol, called on every tick
        assert n.notify_owner(alert("8"))
        assert n.notify_owner(alert("8", kind="budget_breach"))
    with Notifier(store, config, clock=clock) as restarted:
        assert restarted.notify_owner(alert("7"))
    hooks = recorder.hooks()
    assert [(h.body["herald"]["kind"], h.body["herald"]["details"]["run_id"]) for h in hooks] == [
        ("safety_block", "7"), ("safety_block", "8"), ("budget_breach", "8")]
    assert hooks[0].body["text"].startswith("Herald: campaign 'flash-sale' (owner growth@example.com)")


def test_owner_alert_failure_returns_false_and_is_retried_later(local: tuple[str, Recorder], store: StateStore,
                                                                clock: FakeClock) -> None:
    url, recorder = local
    recorder.fail_next = 1
    with Notifier(store, NotifyConfig(owner_webhook_url=f"{url}/hooks/owners", outbound=LOOPBACK), clock=clock) as n:
        assert n.notify_owner(alert("9")) is False
        clock.advance(timedelta(minutes=1))
        assert n.notify_owner(alert("9")) is True
        assert n.notify_owner(alert("9")) is True
    assert len(recorder.hooks()) == 1


def test_a_commit_held_by_a_freeze_window_reports_pending() -> None:
    from reconciler.apply import FreezeHeld
    from reconciler.notify import GITHUB_STATES, outcome_from_apply

    outcome = outcome_from_apply("a" * 40, FreezeHeld("held until the freeze window ends"))
    assert outcome.result == "held" and GITHUB_STATES[outcome.result] == "pending"
