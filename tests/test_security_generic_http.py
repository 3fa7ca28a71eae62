"""Issue 12, outbound URLs of generic HTTP providers at send time.

A generic provider's URL comes from a commit, so each request's host is resolved and EVERY address
checked with the outbound policy (Settings spec.outbound.allowNetworks + HERALD_OUTBOUND_ALLOW) before
a connection is opened, and the connection goes only to a checked address. A refusal fails the
messages for that provider with the reason (never in doubt: nothing was sent). Header secrets are
checked against Settings spec.secrets.allow for the applied state the daemon sends with. Host names
are mapped by a patched getaddrinfo; every server here listens on 127.0.0.1 and counts what arrives.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.clock import FakeClock
from reconciler.config import RuntimeConfig
from reconciler.loading import DesiredState, SourceFile, load_files
from reconciler.outbound import OutboundPolicy, parse_networks
from reconciler.providers import GroupRouter, OutboundMessage
from reconciler.providers.transport import CheckedResolver

HOST = "sms.herald.test"
ENV = {"ACME_KEY": "acme-key-4711"}
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.seen.append({"path": self.path, "headers": headers, "body": json.loads(body or b"{}")})
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = json.dumps({"id": f"acme-{len(self.seen)}"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (Recorder,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """HOST resolves to dns["answers"]; every lookup of it is counted in dns["lookups"]."""
    real = socket.getaddrinfo
    table: dict[str, Any] = {"answers": ["127.0.0.1"], "lookups": 0}

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != HOST:
            return real(host, port, *args, **kwargs)
        table["lookups"] += 1
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, int(port), 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, int(port))) for a in table["answers"]]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return table


def desired(url: str, allow_networks: Sequence[str] = (), secrets_allow: Sequence[str] = ("ACME_KEY",)) -> DesiredState:
    documents = f"""
apiVersion: herald/v1
kind: Provider
metadata: {{name: acme}}
spec:
  type: generic_http
  url: "{url}"
  headers: {{X-Api-Key: {{secretRef: {{env: ACME_KEY}}}}}}
  body: {{to: $$To, text: $$Body}}
  success: {{statusCodes: [200], messageIdPath: id}}
  timeoutSeconds: 5
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {{name: main}}
spec: {{default: true, providers: [acme]}}
---
apiVersion: herald/v1
kind: Settings
metadata: {{name: global}}
spec:
  outbound: {{allowNetworks: {json.dumps(list(allow_networks))}}}
  secrets: {{allow: {json.dumps(list(secrets_allow))}}}
"""
    return load_files([SourceFile("state.yaml", documents.encode())]).state


async def send(state: DesiredState, count: int = 1, config: RuntimeConfig | None = None) -> list[Any]:
    async def no_sleep(_seconds: float) -> None:
        return None

    batch = [OutboundMessage(f"m-{i}", f"+1415555{i + 100:04d}", f"Hello {i}") for i in range(count)]
    async with GroupRouter(state, config or RuntimeConfig(), FakeClock(NOW), environ=ENV, sleep=no_sleep) as router:
        return await router.send(batch)


REFUSED = [
    pytest.param(["127.0.0.1"], [], "loopback", id="name-to-loopback"),
    pytest.param(["169.254.169.254"], ["127.0.0.0/8"], "link-local", id="name-to-metadata"),
    pytest.param(["10.0.0.1"], ["127.0.0.0/8"], "private", id="name-to-private"),
    pytest.param(["127.0.0.1", "169.254.169.254"], ["127.0.0.0/8"], "link-local", id="one-bad-answer-of-two"),
    pytest.param(["::ffff:10.0.0.1"], ["127.0.0.0/8"], "private", id="ipv4-mapped-ipv6"),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("answers", "allow", "kind"), REFUSED)
async def test_a_host_resolving_to_a_refused_address_is_refused_before_connecting(
        server, dns, answers: list[str], allow: list[str], kind: str) -> None:
    port, seen = server
    dns["answers"] = answers
    results = await send(desired(f"http://{HOST}:{port}/v1/send", allow), count=2)
    assert [r.status for r in results] == ["failed", "failed"]
    assert all(not r.retryable and r.attempts == 1 for r in results)
    assert f"{HOST} resolves to" in results[0].error and f"a {kind} address" in results[0].error
    assert "outbound URL policy" in results[0].error and "nothing was sent" in results[0].error
    assert seen == [] and dns["lookups"] >= 1  # checked after resolution; not a byte reached the server


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["127.0.0.1", "[::ffff:127.0.0.1]", "localhost"])
async def test_literal_and_local_hosts_are_refused_at_send_time(server, host: str) -> None:
    port, seen = server
    (result,) = await send(desired(f"http://{host}:{port}/v1/send"))
    assert result.status == "failed" and not result.retryable
    assert "loopback address" in result.error and seen == []


@pytest.mark.anyio
async def test_allowed_networks_reach_the_checked_address_with_one_lookup(server, dns) -> None:
    port, seen = server
    dns["answers"] = ["127.0.0.1"]
    results = await send(desired(f"http://{HOST}:{port}/v1/send", ["127.0.0.0/8"]), count=20)
    assert [r.status for r in results] == ["sent"] * 20
    assert len(seen) == 20 and seen[0]["headers"]["host"] == f"{HOST}:{port}"
    assert seen[0]["headers"]["x-api-key"] == ENV["ACME_KEY"]
    assert dns["lookups"] == 1  # answers reused for 30 s: the hot path does no lookup per request


@pytest.mark.anyio
async def test_the_checked_answer_is_the_one_connected_to(server, dns) -> None:
    """DNS rebinding: once checked, a later answer (private here) is never asked for or used."""
    port, seen = server
    dns["answers"] = ["127.0.0.1"]
    state = desired(f"http://{HOST}:{port}/v1/send", ["127.0.0.0/8"])
    async with GroupRouter(state, RuntimeConfig(), FakeClock(NOW), environ=ENV) as router:
        first = await router.send([OutboundMessage("a", "+14155550100", "one")])
        dns["answers"] = ["10.0.0.1"]
        second = await router.send([OutboundMessage("b", "+14155550101", "two")])
    assert [first[0].status, second[0].status] == ["sent", "sent"] and len(seen) == 2
    assert dns["lookups"] == 1


@pytest.mark.anyio
@pytest.mark.parametrize(("answer", "allow"), [("169.254.169.254", "169.254.0.0/16"), ("10.0.0.1", "10.0.0.0/8"),
                                                ("127.0.0.1", "127.0.0.0/8"), ("fe80::1", "fe80::/10")])
async def test_the_resolver_passes_what_allow_networks_lists(dns, answer: str, allow: str) -> None:
    """The allowed non-loopback variants are checked at the resolver (no connection: loopback only here)."""
    dns["answers"] = [answer]
    refused = CheckedResolver(OutboundPolicy())
    with pytest.raises(OSError, match="address; allow it in Settings"):
        await refused.resolve(HOST, 443, socket.AF_UNSPEC)
    allowed = await CheckedResolver(OutboundPolicy(parse_networks([allow]))).resolve(HOST, 443, socket.AF_UNSPEC)
    assert [(r["host"], r["port"]) for r in allowed] == [(answer, 443)]


@pytest.mark.anyio
async def test_redirects_are_not_followed(server, dns) -> None:
    port, seen = server
    (result,) = await send(desired(f"http://{HOST}:{port}/moved", ["127.0.0.0/8"]))
    assert result.status == "failed" and "HTTP 302" in result.error
    assert len(seen) == 1  # the Location (an instance-metadata address) was never requested


@pytest.mark.anyio
async def test_the_mock_base_url_from_the_environment_is_exempt(server) -> None:
    """HERALD_PROVIDER_BASE_URL is the operator's (not a commit's): a loopback mock needs no allowNetworks."""
    port, seen = server
    (result,) = await send(desired("https://api.acme.example/v1/send"),
                           config=RuntimeConfig(provider_base_url=f"http://127.0.0.1:{port}"))
    assert result.status == "sent" and seen[0]["path"] == "/generic_http/acme/v1/send"


@pytest.mark.anyio
async def test_a_header_secret_removed_from_the_allow_list_after_apply_is_refused(server, dns) -> None:
    port, seen = server
    state = desired(f"http://{HOST}:{port}/v1/send", ["127.0.0.0/8"])
    (sent,) = await send(state)
    assert sent.status == "sent" and seen[0]["headers"]["x-api-key"] == ENV["ACME_KEY"]
    # the applied Settings change (the daemon rebuilds its router for every applied-state version)
    secrets = state.settings.spec.secrets.model_copy(update={"allow": []})
    state.settings = state.settings.model_copy(
        update={"spec": state.settings.spec.model_copy(update={"secrets": secrets})})
    (refused,) = await send(state)
    assert refused.status == "failed" and not refused.retryable
    assert "spec.secrets.allow" in refused.error and ENV["ACME_KEY"] not in refused.error
    assert len(seen) == 1


@pytest.mark.anyio
async def test_a_name_that_does_not_resolve_is_a_retryable_connect_failure_not_a_policy_refusal(server, dns) -> None:
    port, seen = server
    dns["answers"] = []
    (result,) = await send(desired(f"http://{HOST}:{port}/v1/send", ["127.0.0.0/8"]))
    assert result.status == "failed" and result.retryable  # a DNS outage may pass; nothing was sent
    assert "not connected" in result.error and "outbound URL policy" not in result.error
    assert seen == [] and dns["lookups"] >= 2  # tried again (not cached)
