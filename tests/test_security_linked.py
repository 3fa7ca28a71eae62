"""Linked content cannot make the daemon call its own admin endpoints (SSRF with the daemon's own
token from a campaign's secretRef header), unless the policy explicitly allows it. Through the engine
with a real listener standing in for the admin port, and through the daemon process, whose policy
is LinkedUrlPolicy.for_daemon(--port)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from daemon_harness import (
    SETTINGS_YAML,
    DaemonProcess,
    Mock,
    campaign_yaml,
    engine_world,
    free_port,
    ingest,
    mock_provider,
    population,
    providers_yaml,
    schedule_soon,
    wait_for,
    write_repo,
)

from reconciler.demo import DemoWorld
from reconciler.linked import LinkedContentFetcher, LinkedUrlPolicy
from reconciler.models import Settings
from reconciler.store import open_state_store

FIRE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
USERS = 4


class Listener:
    """A real HTTP server on `port` that records every request (the daemon's admin port, or a site
    that redirects to it)."""

    def __init__(self, port: int, redirect_to: str | None = None) -> None:
        self.port = port
        self.hits: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                listener.hits.append(f"{self.command} {self.path}")
                if redirect_to:
                    self.send_response(302)
                    self.send_header("Location", redirect_to)
                    self.end_headers()
                    return
                body = b'{"code": "ADMIN-DATA"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def admin() -> Iterator[Listener]:
    listener = Listener(free_port())
    yield listener
    listener.close()


def opaque(url: str) -> str:
    """`url` with its host written as a Liquid literal: `herald validate` refuses admin URLs it can see
    (tests/hostile/urls.yaml), so these tests hide the host to reach the guard at request time."""
    scheme, _, rest = url.partition("://")
    end = rest.index("]") + 1 if rest.startswith("[") else len(rest.split(":")[0].split("/")[0])
    return f"{scheme}://{{{{ '{rest[:end]}' }}}}{rest[end:]}"


def linked_campaign(name: str, url: str, *, method: str = "GET", token_header: bool = True) -> str:
    """A campaign that fetches `url` per user (with a secret copied from the daemon's admin token)."""
    headers = ("\n      headers:\n        Authorization: {secretRef: {env: PROBE_TOKEN}, format: \"Bearer {value}\"}"
               if token_header else "")
    text = campaign_yaml(name, FIRE, everyone=True)
    return text.replace(
        "  message: {body: \"Hi {{ user.first_name }}, your code is {{ user.id }}\"}",
        "  message:\n    body: \"Code {{ linked.probe.code | default: 'none' }}\"\n    linkedContent:\n"
        f"    - name: probe\n      url: \"{opaque(url)}\"\n      method: {method}\n      timeoutSeconds: 2\n      onError: skip_user"
        + headers)


SETTINGS = SETTINGS_YAML + "  secrets: {allow: [PROBE_TOKEN]}\n"  # HERALD_ADMIN_TOKEN cannot be listed


def world_files(campaigns: dict[str, str]) -> dict[str, str]:
    return {"providers/providers.yaml": providers_yaml(), "campaigns/settings.yaml": SETTINGS,
            **{f"campaigns/{name}.yaml": text for name, text in campaigns.items()}}


def settings_of(world: DemoWorld) -> Callable[[], Settings]:
    return lambda: world.engine.state.settings


def skip_reasons(world: DemoWorld, campaign: str) -> set[str]:
    rows = world.engine.rt.store.list_outbox(campaign=campaign, limit=100)
    return {r.skip_reason or r.status for r in rows}


def attack_urls(port: int) -> dict[str, str]:
    return {
        "loopback": f"http://127.0.0.1:{port}/admin/sync",
        "localhost": f"http://localhost:{port}/v1/events",
        "ipv6": f"http://[::1]:{port}/v1/users",
        "decimal": f"http://2130706433:{port}/healthz",
        "short": f"http://127.1:{port}/metrics",
        "templated": f"http://127.0.0.1:{port}/admin/{{{{ user.id }}}}",
        "admin_path_any_port": "http://127.0.0.1:9/admin/sync",
    }


def test_linked_content_cannot_reach_the_daemons_admin_endpoints(tmp_path: Path, admin: Listener,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROBE_TOKEN", "the-daemons-own-admin-token")  # as if the token were copied there
    urls = attack_urls(admin.port)
    campaigns = {f"via-{kind.replace('_', '-')}": linked_campaign(f"via-{kind.replace('_', '-')}", url)
                 for kind, url in urls.items()}
    with engine_world(tmp_path, world_files(campaigns), population=USERS) as world:
        world.engine.linked = LinkedContentFetcher(clock=world.clock, settings=settings_of(world),
                                                   policy=LinkedUrlPolicy.for_daemon(admin.port))
        world.step()
        world.advance_to(FIRE.replace(minute=5))
        for name in campaigns:
            reasons = skip_reasons(world, name)
            assert len(reasons) == 1, (name, reasons)
            reason = reasons.pop()
            assert reason.startswith("linked_content: probe:") and "admin" in reason, (name, reason)
        assert admin.hits == []
        assert Mock(world.mock_url).messages() == []
        assert "the-daemons-own-admin-token" not in str(skip_reasons(world, "via-loopback"))


def test_redirects_to_the_admin_port_are_not_followed(tmp_path: Path, admin: Listener) -> None:
    bouncer = Listener(free_port(), redirect_to=f"http://127.0.0.1:{admin.port}/admin/sync")
    try:
        campaigns = {"bounce": linked_campaign("bounce", f"http://127.0.0.1:{bouncer.port}/offers", token_header=False)}
        with engine_world(tmp_path, world_files(campaigns), population=USERS) as world:
            world.engine.linked = LinkedContentFetcher(clock=world.clock, settings=settings_of(world),
                                                       policy=LinkedUrlPolicy.for_daemon(admin.port))
            world.step()
            world.advance_to(FIRE.replace(minute=5))
            assert skip_reasons(world, "bounce") == {"linked_content: probe: 127.0.0.1 answered HTTP 302"}
            assert len(bouncer.hits) == USERS and admin.hits == []
    finally:
        bouncer.close()


def test_an_explicit_allowance_lets_linked_content_reach_the_admin_port(tmp_path: Path, admin: Listener) -> None:
    campaigns = {"allowed": linked_campaign("allowed", f"http://127.0.0.1:{admin.port}/admin/offers",
                                            token_header=False)}
    with engine_world(tmp_path, world_files(campaigns), population=USERS) as world:
        policy = LinkedUrlPolicy.for_daemon(admin.port, allow_admin=True)
        world.engine.linked = LinkedContentFetcher(clock=world.clock, settings=settings_of(world), policy=policy)
        world.step()
        world.advance_to(FIRE.replace(minute=5))
        assert skip_reasons(world, "allowed") == {"sent"}
        assert {str(m["body"]) for m in Mock(world.mock_url).messages()} == {"Code ADMIN-DATA"}
        assert admin.hits


def test_the_daemon_process_refuses_linked_content_aimed_at_its_own_port(tmp_path: Path) -> None:
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, population(3))
    port = free_port()
    repo = write_repo(tmp_path / "repo", world_files({}))
    state_url = f"sqlite:///{tmp_path / 'state.db'}"

    def ssrf_campaign(at: datetime) -> dict[str, str]:
        text = linked_campaign("ssrf", f"http://127.0.0.1:{port}/admin/sync", method="POST")
        text = text.replace("{name: first_name, op: exists}", "{name: cohort, op: eq, value: reliability}")
        return {"campaigns/ssrf.yaml": text.replace("2026-12-01T09:00:00Z", at.strftime("%Y-%m-%dT%H:%M:%SZ"))}

    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d", str(repo.working_tree_dir), state_url, audience_url, mock.url,
                               port=port, poll_interval=600)
        daemon.start()
        try:
            daemon.wait_healthy()
            daemon.wait_applied(repo.head.commit.hexsha)
            schedule_soon(repo, daemon, ssrf_campaign, seconds=1.0)
            wait_for(lambda: skipped(state_url) == 3, 30, "the campaign's messages to be decided", poll=0.2,
                     on_timeout=daemon.log_tail)
        finally:
            assert daemon.terminate() == 0
        assert mock.accepted() == 0
    store = open_state_store(state_url)
    try:
        reasons = {r.skip_reason for r in store.list_outbox(campaign="ssrf", limit=10)}
    finally:
        store.close()
    assert reasons == {"linked_content: probe: the URL targets the daemon's own admin port"}


def skipped(state_url: str) -> int:
    store = open_state_store(state_url)
    try:
        return sum(r.status == "skipped" for r in store.list_outbox(campaign="ssrf", limit=10))
    finally:
        store.close()
