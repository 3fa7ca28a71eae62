"""Linked content against a real local HTTP server: success, timeout, fallbacks, cache, URL policy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from test_audience_support import make_campaign

from reconciler.audience import Member
from reconciler.clock import FakeClock
from reconciler.linked import LinkedContentFetcher, LinkedUrlPolicy, check_linked_url
from reconciler.outbound import parse_networks
from reconciler.render import Rendered, render_message

ADMIN_PORT = 9  # the daemon's (pretend) admin port in these tests
LOOPBACK = parse_networks(["127.0.0.0/8", "::1/128"])  # the stand-in server listens on loopback: opt in


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: list[str]
    release: threading.Event


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self.server.hits.append(self.path)
        query = parse_qs(url.query)
        if url.path == "/offer":
            user = query.get("user", ["?"])[0]
            self._send(200, json.dumps({"code": f"SAVE-{user}", "pct": 10}).encode())
        elif url.path == "/hang":
            self.server.release.wait(timeout=30)  # never answers within the client's timeout
            self._send(200, b"{}")
        elif url.path == "/down":
            self._send(503, b"down")
        elif url.path == "/text":
            self._send(200, "sunny ☀".encode(), "text/plain; charset=utf-8")
        elif url.path == "/auth":
            ok = self.headers.get("Authorization") == "Bearer s3cret-token"
            self._send(200 if ok else 401, json.dumps({"ok": ok}).encode())
        elif url.path == "/big":
            self._send(200, b"x" * 300_000, "text/plain")
        elif url.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{ADMIN_PORT}/admin")
            self.end_headers()
        else:
            self._send(404, b"{}")


@pytest.fixture
def server() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.hits = []
    httpd.release = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fetcher(clock: FakeClock) -> Iterator[LinkedContentFetcher]:
    created = LinkedContentFetcher(clock=clock, policy=LinkedUrlPolicy(admin_ports=frozenset({ADMIN_PORT}),
                                                                       allow_networks=LOOPBACK),
                                   environ={"OFFERS_TOKEN": "s3cret-token"})
    yield created
    created.close()


def base(server: _Server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def member(user_id: str = "u1") -> Member:
    return Member(user_id=user_id, phone="+14155550101", timezone=None, country="US", properties={"first_name": "Ann"})


def linked_campaign(*sources: dict[str, Any], body: str = "Hi {{ user.first_name }}: {{ linked.offer.code }}") -> Any:
    return make_campaign("promo", message={"body": body, "linkedContent": list(sources)})


def test_success_renders_linked_values(server: _Server, fetcher: LinkedContentFetcher) -> None:
    c = linked_campaign({"name": "offer", "url": base(server) + "/offer?user={{ user.id }}"},
                        {"name": "weather", "url": base(server) + "/text"},
                        body="{{ linked.offer.code }} ({{ linked.offer.pct }}%), {{ linked.weather }}")
    outcome = fetcher.fetch(c, member("u42"))
    assert outcome.action == "send" and outcome.errors == ()
    rendered = render_message(c, member("u42"), linked=outcome.values)
    assert isinstance(rendered, Rendered)
    assert rendered.body == "SAVE-u42 (10%), sunny ☀"
    assert server.hits == ["/offer?user=u42", "/text"]


def test_headers_come_from_secret_refs(server: _Server, fetcher: LinkedContentFetcher) -> None:
    c = linked_campaign({"name": "offer", "url": base(server) + "/auth",
                         "headers": {"Authorization": {"secretRef": {"env": "OFFERS_TOKEN"}, "format": "Bearer {value}"},
                                     "X-Client": "herald"}})
    assert fetcher.fetch(c, member()).values == {"offer": {"ok": True}}
    missing = linked_campaign({"name": "offer", "url": base(server) + "/auth",
                               "headers": {"Authorization": {"secretRef": {"env": "NOT_SET_ANYWHERE"}}}})
    outcome = fetcher.fetch(missing, member())
    assert outcome.action == "skip_user" and "NOT_SET_ANYWHERE" in outcome.errors[0]
    assert "s3cret-token" not in " ".join(outcome.errors)


def test_timeout_follows_on_error(server: _Server, fetcher: LinkedContentFetcher) -> None:
    url = base(server) + "/hang"
    skip = fetcher.fetch(linked_campaign({"name": "offer", "url": url, "timeoutSeconds": 0.2}), member())
    assert skip.action == "skip_user" and "did not answer within 0.2s" in skip.errors[0]
    without = fetcher.fetch(linked_campaign({"name": "offer", "url": url, "timeoutSeconds": 0.2,
                                             "onError": "send_without"}), member())
    assert without.action == "send" and without.values == {} and without.errors
    c = linked_campaign({"name": "offer", "url": url, "timeoutSeconds": 0.2, "onError": "send_without"},
                        body="Hi {{ user.first_name }}{{ linked.offer.code }}!")
    assert render_message(c, member(), linked=without.values).body == "Hi Ann!"  # type: ignore[union-attr]


@pytest.mark.parametrize(("on_error", "action"), [("skip_user", "skip_user"), ("send_without", "send"),
                                                  ("abort_run", "abort_run")])
def test_http_errors_follow_on_error(server: _Server, fetcher: LinkedContentFetcher, on_error: str, action: str) -> None:
    outcome = fetcher.fetch(linked_campaign({"name": "offer", "url": base(server) + "/down", "onError": on_error}),
                            member())
    assert outcome.action == action
    assert "HTTP 503" in outcome.errors[0]


def test_most_severe_failure_wins_and_abort_stops_early(server: _Server, fetcher: LinkedContentFetcher) -> None:
    c = linked_campaign({"name": "a", "url": base(server) + "/down", "onError": "send_without"},
                        {"name": "b", "url": base(server) + "/down", "onError": "abort_run"},
                        {"name": "c", "url": base(server) + "/offer?user=x"})
    outcome = fetcher.fetch(c, member())
    assert outcome.action == "abort_run" and len(outcome.errors) == 2
    assert "/offer?user=x" not in server.hits


def test_cache_respects_ttl_on_the_injected_clock(server: _Server, fetcher: LinkedContentFetcher,
                                                  clock: FakeClock) -> None:
    c = linked_campaign({"name": "offer", "url": base(server) + "/offer?user={{ user.id }}", "cacheTtl": "10m"})
    for _ in range(3):
        assert fetcher.fetch(c, member("u1")).values["offer"]["code"] == "SAVE-u1"
    fetcher.fetch(c, member("u2"))
    assert server.hits == ["/offer?user=u1", "/offer?user=u2"]
    clock.advance(timedelta(minutes=9))
    fetcher.fetch(c, member("u1"))
    assert len(server.hits) == 2
    clock.advance(timedelta(minutes=2))
    fetcher.fetch(c, member("u1"))
    assert server.hits[-1] == "/offer?user=u1" and len(server.hits) == 3


def test_no_cache_without_ttl_and_failures_are_not_cached(server: _Server, fetcher: LinkedContentFetcher) -> None:
    c = linked_campaign({"name": "offer", "url": base(server) + "/offer?user=1"})
    fetcher.fetch(c, member())
    fetcher.fetch(c, member())
    assert len(server.hits) == 2
    down = linked_campaign({"name": "offer", "url": base(server) + "/down", "cacheTtl": "1h"})
    fetcher.fetch(down, member())
    fetcher.fetch(down, member())
    assert server.hits.count("/down") == 2


def test_oversized_and_redirected_responses_fail(server: _Server, fetcher: LinkedContentFetcher) -> None:
    big = fetcher.fetch(linked_campaign({"name": "offer", "url": base(server) + "/big"}), member())
    assert "more than" in big.errors[0]
    moved = fetcher.fetch(linked_campaign({"name": "offer", "url": base(server) + "/redirect"}), member())
    assert "HTTP 302" in moved.errors[0]


def test_admin_endpoints_are_refused_before_any_request(fetcher: LinkedContentFetcher) -> None:
    c = linked_campaign({"name": "offer", "url": f"http://127.0.0.1:{ADMIN_PORT}/v1/users", "onError": "abort_run"})
    outcome = fetcher.fetch(c, member())
    assert outcome.action == "abort_run" and "admin port" in outcome.errors[0]
    assert fetcher.requests_made == 0


def test_allowing_admin_explicitly(server: _Server, clock: FakeClock) -> None:
    port = server.server_address[1]
    denied = LinkedUrlPolicy(admin_ports=frozenset({port}), allow_networks=LOOPBACK)
    allowed = LinkedUrlPolicy(admin_ports=frozenset({port}), allow_admin=True)
    assert check_linked_url(f"http://127.0.0.1:{port}/offer", denied) is not None
    assert check_linked_url(f"http://127.0.0.1:{port}/offer", allowed) is None
    with _fetcher(clock, allowed) as f:
        assert f.fetch(linked_campaign({"name": "offer", "url": base(server) + "/offer?user=a"}), member()).action == "send"


class _fetcher:  # a tiny context manager so the fetcher is always closed
    def __init__(self, clock: FakeClock, policy: LinkedUrlPolicy) -> None:
        self.fetcher = LinkedContentFetcher(clock=clock, policy=policy)

    def __enter__(self) -> LinkedContentFetcher:
        return self.fetcher

    def __exit__(self, *exc: object) -> None:
        self.fetcher.close()


POLICY = LinkedUrlPolicy(admin_ports=frozenset({8080}), admin_hosts=frozenset({"herald.internal"}),
                         resolve_hostnames=False, allow_networks=LOOPBACK)


@pytest.mark.parametrize(("url", "refused"), [
    ("https://offers.example/api?u=1", False),
    ("http://127.0.0.1:5000/offer", False),
    ("http://127.0.0.1:8080/offer", True),
    ("http://localhost:8080/", True),
    ("http://[::1]:8080/", True),
    ("http://[::ffff:127.0.0.1]:8080/", True),
    ("http://127.1:8080/", True),
    ("http://2130706433:8080/", True),
    ("http://0x7f000001:8080/", True),
    ("http://0.0.0.0:8080/", True),
    ("http://sub.localhost:8080/", True),
    ("http://herald.internal:8080/x", True),
    ("http://herald.internal:443/x", False),
    ("http://127.0.0.1:5000/admin/campaigns", True),
    ("http://127.0.0.1:5000/metrics", True),
    ("http://10.0.0.5:8080/v1/events", True),  # private: not in allow_networks
    ("http://127.0.0.1:5000/%61dmin/sync", True),
    ("http://127.0.0.1:5000//admin/sync", True),
    ("http://127.0.0.1:5000/x/../admin", True),
    ("http://127.0.0.1:5000/x/%2e%2e/admin", True),
    ("http://127.0.0.1:5000/%2561dmin", True),
    ("http://169.254.169.254/latest/meta-data/", True),
    ("http://[fe80::1]/", True),
    ("http://[::ffff:169.254.169.254]/", True),
    ("http://192.168.1.1/", True),
    ("file:///etc/passwd", True),
    ("gopher://127.0.0.1:70/", True),
    ("http://:80/", True),
    ("http://[::1/", True),
])
def test_check_linked_url(url: str, refused: bool) -> None:
    assert (check_linked_url(url, POLICY) is not None) == refused


def test_hostnames_resolving_to_loopback_are_refused() -> None:
    policy = LinkedUrlPolicy(admin_ports=frozenset({8080}))
    assert check_linked_url("http://localhost.:8080/", policy) is not None  # resolves to 127.0.0.1
