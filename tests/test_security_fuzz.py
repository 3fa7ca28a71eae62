"""Every HTTP endpoint of the daemon under hostile requests: never a 5xx, bounded memory.

The daemon's own Starlette app (the one `herald run` serves, dashboard mounted) on the in-process
engine, driven at the ASGI level the way uvicorn drives it: raw header bytes (non-ASCII signatures,
cookies, tokens, Content-Length values), raw paths (`/%61dmin/sync`, `//admin/sync`, dot segments),
bodies streamed in chunks (huge ones, and ones the client abandons half-way). A seeded generator
makes the requests — deep nesting, 5,000-digit numbers, lone surrogates, NUL and control characters,
wrong content types, truncated and random bytes, valid events with hostile fields — so a failure
replays exactly. The app must answer every request with a status below 500 (503 only while a store
is down, which never happens here), and the process must not grow without bound.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from example_repo import example_sources, settings_yaml

from reconciler.daemon import Daemon, DaemonOptions
from reconciler.demo import DemoWorld, demo_world
from reconciler.providers.registry import receipt_token

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOKEN = "fuzz-admin-token-2c7e"
WEBHOOK_SECRET = "fuzz-webhook-secret-81d0"
SETTINGS = settings_yaml()
WELCOME = """apiVersion: herald/v1
kind: Campaign
metadata: {name: welcome}
spec:
  type: live
  owner: owner@example.com
  trigger: {event: {name: signed_up}}
  message: {body: "Welcome {{ user.first_name }}"}
"""
MAX_RSS_GROWTH_KIB = 64 * 1024  # generous (measured: ~5 MB); a leak of 7 KiB per request exceeds it
MAX_TRACED_PEAK_BYTES = 16 * 1024 * 1024  # Python heap (measured: ~2 MiB); a 4 MB body buffered exceeds it


@dataclasses.dataclass(frozen=True)
class Req:
    family: str
    method: str
    raw_path: bytes
    headers: list[tuple[bytes, bytes]]
    chunks: list[bytes] | Callable[[], Iterator[bytes]]
    cut: bool = False  # the client disconnects after the chunks instead of finishing the body


@dataclasses.dataclass
class Answer:
    status: int
    error: str | None = None


async def call(app: Any, req: Req) -> Answer:
    """One request through the ASGI app, as a server would deliver it; a raised exception is a 500."""
    path_bytes, _, query = req.raw_path.partition(b"?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
             "scheme": "http", "path": unquote(path_bytes.decode("latin-1")), "raw_path": path_bytes,
             "query_string": query, "root_path": "", "headers": req.headers,
             "client": ("127.0.0.1", 40000), "server": ("testserver", 80)}
    chunks = iter(req.chunks() if callable(req.chunks) else req.chunks)
    pending = next(chunks, None)
    finished = asyncio.Event()
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal pending
        if pending is None:
            if not req.cut:
                await finished.wait()
            return {"type": "http.disconnect"}
        chunk, pending = pending, next(chunks, None)
        return {"type": "http.request", "body": chunk, "more_body": pending is not None or req.cut}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            finished.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:
        return Answer(500, f"{type(exc).__name__}: {str(exc)[:200]}")
    return Answer(status[0] if status else 599, None if status else "no response")


# ---------------------------------------------------------------- the hostile request generator


class Hostile:
    """Seeded hostile requests for every endpoint of the daemon."""

    def __init__(self, seed: int, receipt_tokens: dict[str, str]) -> None:
        self.r = random.Random(seed)
        self.tokens = receipt_tokens
        self.families: list[tuple[str, int, Callable[[], Req]]] = [
            ("events", 24, self.events), ("users", 11, self.users), ("receipts", 18, self.receipts),
            ("webhook", 9, self.webhook), ("admin_sync", 5, self.admin_sync), ("healthz", 3, self.probe("/healthz")),
            ("metrics", 2, self.probe("/metrics")), ("dashboard", 10, self.dashboard), ("login", 8, self.login),
            ("paths", 10, self.paths),
        ]

    def next(self) -> Req:
        _, _, make = self.r.choices(self.families, weights=[w for _, w, _ in self.families])[0]
        return make()

    # -- pieces

    def text(self) -> str:
        """A JSON string literal's content: plain, unicode, escapes of surrogates, NUL, controls."""
        return self.r.choice([
            "u1", "signed_up", "purchase", "ünïcødé", "\\ud800", "\\udfff", "a\\ud83d", "\\u0000", "x\\u0000y",
            "\\u001f\\u0007", "\\n\\r\\t", "%00", "../../etc/passwd", "x" * self.r.choice([1, 300, 70_000]),
            "<script>alert(1)</script>", "{{ user.phone }}", "\\ud83d\\ude00", "",
        ])

    def number(self) -> str:
        return self.r.choice([
            "1" + "0" * self.r.choice([20, 400, 4299, 4301, 5000, 20_000]), "-" + "9" * 5000, "1e999", "-1e999",
            "1e-999", "0.1", "123", "-0", "NaN", "Infinity", "1" + "0" * 30 + ".5e-3", "0x10", "01",
        ])

    def timestamp(self) -> str:
        return self.r.choice([
            '"0001-01-01T00:00:00Z"', '"9999-12-31T23:59Z"', '"2026-12-01T12:00:00Z"', '"1969-12-31T23:59:59Z"',
            '"2199-12-31T23:59:59+00:00"', '"2200-01-01T00:00:00Z"', '"0001-01-01T00:00:00+01:00"', "253402300800",
            "-62135596800", "1e20", '"2026-13-45T99:99:99Z"', '"\\ud800"', "null", self.number(),
        ])

    def deep(self) -> str:
        depth = self.r.choice([33, 200, 999, 1001, 5000, 50_000])
        if self.r.random() < 0.5:
            return "[" * depth + "]" * depth
        return '{"a":' * depth + "1" + "}" * depth

    def value(self) -> str:
        kind = self.r.randrange(6)
        if kind == 0:
            return f'"{self.text()}"'
        if kind == 1:
            return self.number()
        if kind == 2:
            return self.deep()
        if kind == 3:
            return f'{{"{self.text()}": "{self.text()}"}}'
        return self.r.choice(["true", "null", "[]", "{}", '[1, "a", null]', '"\x01raw control"'])

    def event(self) -> str:
        fields = {"user_id": f'"{self.r.choice(["u00001", "u00002", "nobody"])}"', "name": '"signed_up"'}
        for _ in range(self.r.randrange(4)):
            key = self.r.choice(["user_id", "name", "ts", "id", "properties", "amount", self.text()])
            fields[key] = self.timestamp() if key == "ts" else self.value()
        if self.r.random() < 0.4:
            fields["id"] = f'"evt-{self.r.randrange(50)}"'
        return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"

    def user(self) -> str:
        fields = {"id": f'"{self.text()}"' if self.r.random() < 0.5 else '"fuzz-user"',
                  "phone": self.r.choice(['"+14155550123"', '"0044"', '"+999"', f'"{self.text()}"', self.number()])}
        for _ in range(self.r.randrange(3)):
            key = self.r.choice(["timezone", "created_at", "country", "opted_out", "first_name", self.text()])
            fields[key] = self.timestamp() if key == "created_at" else self.value()
        return "{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}"

    def json_body(self, item: Callable[[], str]) -> bytes:
        shape = self.r.randrange(10)
        if shape < 4:
            text = item()
        elif shape < 6:
            text = "[" + ", ".join(item() for _ in range(self.r.randrange(1, 5))) + "]"
        elif shape == 6:
            text = self.deep()
        elif shape == 7:
            text = item()[: self.r.randrange(1, 40)]  # truncated
        elif shape == 8:
            text = self.value()
        else:
            return self.r.randbytes(self.r.randrange(1, 300))
        body = text.encode("utf-8", "surrogatepass")
        if self.r.random() < 0.05:
            body = body.replace(b"u1", b"u\x00")  # a raw NUL byte inside the JSON text
        return body

    def content_type(self) -> list[tuple[bytes, bytes]]:
        if self.r.random() < 0.7:  # mostly a valid one, so the fuzzing reaches the parsers behind the gate
            return [(b"content-type", self.r.choice([b"application/json", b"application/json; charset=utf-8"]))]
        value = self.r.choice([b"APPLICATION/JSON", b"text/plain", b"application/x-www-form-urlencoded",
                               b"multipart/form-data; boundary=x", b"application/json\xff", b"\xe9", b"a" * 5000, None])
        return [] if value is None else [(b"content-type", value)]

    def auth(self) -> list[tuple[bytes, bytes]]:
        if self.r.random() < 0.8:
            return [(b"authorization", f"Bearer {TOKEN}".encode())]
        value = self.r.choice([b"Bearer \xe9\xff", b"Bearer " + TOKEN.encode() + b"\xe9", b"Basic x", b"",
                               b"Bearer", b"bearer " + TOKEN.encode()[:-1], "Bearer ü".encode()])
        return [(b"authorization", value)]

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        extra: list[tuple[bytes, bytes]] = []
        if self.r.random() < 0.15:
            extra.append((b"content-length", self.r.choice([b"\xc2\xb2", b"-1", b"9" * 40, b"abc", b"", b"3"])))
        if self.r.random() < 0.15:
            extra.append((b"idempotency-key", self.r.choice([b"k1", b"\xe9\xff", b"a" * 500, b"", b" ", b"k\x00",
                                                             b"key-" + str(self.r.randrange(20)).encode()])))
        if self.r.random() < 0.1:
            extra.append((b"cookie", b"herald_session=" + self.r.choice([b"\xe9.\xff.\x00", b"1.2.3", b"9" * 5000])))
        return extra

    def streamed(self, megabytes: int) -> Callable[[], Iterator[bytes]]:
        def chunks() -> Iterator[bytes]:
            piece = b"[" + b" " * 65_535
            for _ in range(megabytes * 16):
                yield piece
        return chunks

    def body(self, make: Callable[[], bytes]) -> tuple[list[bytes] | Callable[[], Iterator[bytes]], bool]:
        """Chunks of a body (sometimes huge and streamed), and whether the client cuts it short."""
        if self.r.random() < 0.02:
            return self.streamed(self.r.choice([2, 4])), self.r.random() < 0.3
        data = make()
        cut = self.r.random() < 0.05
        if len(data) > 1 and self.r.random() < 0.3:
            at = self.r.randrange(1, len(data))
            return [data[:at], data[at:]], cut
        return [data], cut

    # -- endpoint families

    def events(self) -> Req:
        chunks, cut = self.body(lambda: self.json_body(self.event))
        return Req("events", self.r.choice(["POST"] * 9 + ["GET", "PUT"]), b"/v1/events",
                   self.auth() + self.content_type() + self.extra_headers(), chunks, cut)

    def users(self) -> Req:
        chunks, cut = self.body(lambda: self.json_body(self.user))
        return Req("users", "POST", b"/v1/users", self.auth() + self.content_type() + self.extra_headers(), chunks, cut)

    def receipts(self) -> Req:
        provider = self.r.choice([*self.tokens, "twilio-us", "vonage-global", "nobody", "..%2fadmin", "tw%00", "%ff"])
        token = b"token=" + self.tokens.get(provider, "x").encode()
        query = self.r.choice([b"", token, token, token + b"&data=%5B%5D", b"token=\xe9",
                               b"MessageSid=SM1&MessageStatus=delivered", b"%ff%fe=%00", b"data=" + b"%5B" * 3000])
        form = self.r.choice([b"MessageSid=SM1&MessageStatus=delivered", b"messageId=1&status=delivered&sig=\xe9",
                              b"SmsSid=1&Status=delivered", b"tid=1&status=DELIVRD", b"%ff=%fe", b"a=\x00"])
        if self.r.random() < 0.5:  # a form, as the providers send it
            chunks, cut = self.body(lambda: form)
            headers = [(b"content-type", b"application/x-www-form-urlencoded")]
        else:
            make = self.r.choice([lambda: self.json_body(self.event), self.deep().encode,
                                  lambda: b'{"data": "' + self.deep().replace('"', '\\"').encode() + b'"}'])
            chunks, cut = self.body(make)
            headers = self.content_type()
        headers += self.extra_headers()
        if self.r.random() < 0.3:
            headers.append((b"x-twilio-signature", self.r.choice([b"\xe9\xff", b"abc=", b"\x00", "ü".encode()])))
        return Req("receipts", self.r.choice(["POST", "POST", "GET"]),
                   f"/receipts/{provider}".encode() + (b"?" + query if query else b""), headers, chunks, cut)

    def webhook(self) -> Req:
        signature = self.r.choice([b"sha256=\xe9\xff", "sha256=é".encode(), b"sha256=" + b"0" * 64, b"", b"sha256=",
                                   b"sha1=abc", b"sha256=\x00", "sha256=ü".encode("latin-1")])
        chunks, cut = self.body(lambda: self.json_body(self.event))
        return Req("webhook", "POST", b"/webhook/git", [(b"x-hub-signature-256", signature), *self.extra_headers()],
                   chunks, cut)

    def admin_sync(self) -> Req:
        return Req("admin_sync", self.r.choice(["POST", "GET"]), b"/admin/sync", self.auth() + self.extra_headers(),
                   [self.r.randbytes(self.r.randrange(50))])

    def probe(self, path: str) -> Callable[[], Req]:
        def make() -> Req:
            return Req(path.strip("/"), self.r.choice(["GET", "GET", "POST", "HEAD"]), path.encode(),
                       self.extra_headers() + self.content_type(), [b""])
        return make

    def dashboard(self) -> Req:
        path = self.r.choice([b"/dashboard/", b"/dashboard/audit", b"/dashboard/campaigns/welcome",
                              b"/dashboard/campaigns/%00", b"/dashboard/campaigns/%ed%a0%80",
                              b"/dashboard/campaigns/" + b"x" * 3000, b"/dashboard/static/app.css",
                              b"/dashboard/static/..%2f..%2fdashboard.py", b"/dashboard/static/%2e%2e/%2e%2e/x",
                              b"/dashboard/audit?campaign=%00&action=%ff&commit=\xe9&page=99999999999999999999",
                              b"/dashboard/audit?since=0001-01-01&until=9999-99-99&limit=-1",
                              b"/dashboard/audit?campaign=" + b"a" * 5000, b"/dashboard/logout"])
        headers = self.extra_headers()
        if self.r.random() < 0.25:
            headers += self.auth()
        return Req("dashboard", self.r.choice(["GET", "GET", "GET", "POST"]), path, headers, [b""])

    def login(self) -> Req:
        form = self.r.choice([b"token=" + TOKEN.encode() + b"&next=/dashboard/", b"token=\xff\xfe&next=%ff",
                              b"token=x&next=//evil.example", b"next=/dashboard/%00", b"token=" + b"a" * 5000,
                              b"\x00\x01\x02", b"token=" + TOKEN.encode() + b"&next=/dashboard/\r\nSet-Cookie:x"])
        chunks, cut = self.body(lambda: form)
        path = self.r.choice([b"/dashboard/login", b"/dashboard/login?next=%ff%00", b"/dashboard/login?next=" + b"/" * 99])
        form_type = [(b"content-type", b"application/x-www-form-urlencoded")]
        return Req("login", self.r.choice(["POST", "POST", "GET"]), path,
                   (form_type if self.r.random() < 0.6 else self.content_type()) + self.extra_headers(), chunks, cut)

    def paths(self) -> Req:
        path = self.r.choice([b"/%61dmin/sync", b"//admin/sync", b"/x/../admin/sync", b"/admin/sync/", b"/admin//sync",
                              b"/ADMIN/SYNC", b"/admin/sync%00", b"/%2e%2e/admin/sync", b"/v1/events/", b"//v1/events",
                              b"/v1/%65vents", b"/receipts/", b"/receipts", b"/\xff\xfe", b"/%ff%fe", b"/" + b"a" * 8000,
                              b"/dashboard", b"/dashboard/../healthz", b"*", b"/?" + b"&" * 5000, b"/%"])
        method = self.r.choice(["GET", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "X" * 50])
        return Req("paths", method, path, self.auth() + self.content_type() + self.extra_headers(),
                   [self.json_body(self.event)])


# ---------------------------------------------------------------- the daemon under test


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DemoWorld, Daemon]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    sources = example_sources(tmp / "source", {"settings": SETTINGS, "welcome": WELCOME})
    with demo_world(tmp / "world", population=20, start=START, sources=sources) as world:
        world.step()
        rt = world.engine.rt
        rt.config = dataclasses.replace(rt.config, admin_token=TOKEN)
        yield world, Daemon(world.engine, DaemonOptions(webhook_secret=WEBHOOK_SECRET))


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fuzz(world: DemoWorld, daemon: Daemon, *, requests: int, seed: int) -> dict[str, Any]:
    tokens = {name: token for name, provider in world.engine.state.providers.items()
              if (token := receipt_token(provider))}
    hostile = Hostile(seed, tokens)
    statuses: dict[str, Counter[int]] = {}
    failures: list[tuple[Req, Answer]] = []

    async def run(count: int) -> None:
        for _ in range(count):
            req = hostile.next()
            answer = await call(daemon.app, req)
            statuses.setdefault(req.family, Counter())[answer.status] += 1
            if answer.status >= 500 and len(failures) < 10:
                failures.append((req, answer))

    warmup = min(500, requests // 10)
    asyncio.run(run(warmup))
    rss_before, started = _rss_kib(), time.monotonic()
    tracemalloc.start()
    try:
        asyncio.run(run(requests - warmup))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {"statuses": statuses, "failures": failures, "seconds": time.monotonic() - started,
            "rss_growth_kib": _rss_kib() - rss_before, "traced_peak": peak}


def _describe(failures: list[tuple[Req, Answer]]) -> str:
    return "\n".join(f"{req.method} {req.raw_path[:120]!r} {req.headers[:4]!r} -> {answer.status} {answer.error}"
                     for req, answer in failures)


def test_10000_hostile_requests_across_every_endpoint_get_no_5xx(daemon: tuple[DemoWorld, Daemon]) -> None:
    world, app = daemon
    result = fuzz(world, app, requests=10_000, seed=20261201)
    statuses: dict[str, Counter[int]] = result["statuses"]
    print(f"\n10,000 hostile requests in {result['seconds']:.1f} s, RSS growth {result['rss_growth_kib']} KiB, "
          f"Python heap peak {result['traced_peak'] / 2**20:.1f} MiB")
    for family, counts in sorted(statuses.items()):
        print(f"  {family:11} {dict(sorted(counts.items()))}")
    assert not result["failures"], _describe(result["failures"])
    assert sum(sum(c.values()) for c in statuses.values()) == 10_000
    every = {"events", "users", "receipts", "webhook", "admin_sync", "healthz", "metrics", "dashboard", "login",
             "paths"}
    assert set(statuses) == every and all(sum(statuses[f].values()) >= 100 for f in every)
    # the fuzzing reached acceptance and every kind of refusal, not just one gate
    assert {202, 400, 401, 413, 415, 422} <= set(statuses["events"])
    assert {202, 400, 422} <= set(statuses["users"])
    assert {400, 403, 404} <= set(statuses["receipts"]) and {200, 204} & set(statuses["receipts"])
    assert {403, 413} <= set(statuses["webhook"])
    assert {200, 303, 401, 404} <= set(statuses["dashboard"])
    assert {303, 401, 413, 415} <= set(statuses["login"])
    assert result["rss_growth_kib"] < MAX_RSS_GROWTH_KIB
    assert result["traced_peak"] < MAX_TRACED_PEAK_BYTES


@pytest.mark.slow
def test_50000_hostile_requests_get_no_5xx(daemon: tuple[DemoWorld, Daemon]) -> None:
    world, app = daemon
    result = fuzz(world, app, requests=50_000, seed=7)
    print(f"\n50,000 hostile requests in {result['seconds']:.1f} s, RSS growth {result['rss_growth_kib']} KiB")
    assert not result["failures"], _describe(result["failures"])
    assert result["rss_growth_kib"] < MAX_RSS_GROWTH_KIB


# ---------------------------------------------------------------- the inputs that used to fail, one by one


def one(world_daemon: tuple[DemoWorld, Daemon], method: str, path: bytes, headers: list[tuple[bytes, bytes]],
        body: bytes = b"") -> Answer:
    return asyncio.run(call(world_daemon[1].app, Req("one", method, path, headers, [body])))


AUTH_JSON = [(b"authorization", f"Bearer {TOKEN}".encode()), (b"content-type", b"application/json")]
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(("method", "path", "headers", "body", "status"), [
    ("POST", b"/receipts/vonage-global", [(b"content-type", b"application/json")], DEEP, 400),
    ("POST", b"/receipts/twilio-us", [(b"content-type", b"application/json")], DEEP, 400),
    ("POST", b"/receipts/msg91-in", [(b"content-type", b"application/json")], DEEP, 400),
    ("POST", b"/webhook/git", [(b"x-hub-signature-256", "sha256=é".encode())], b"{}", 403),
    ("POST", b"/webhook/git", [(b"x-hub-signature-256", b"sha256=\xff\xfe")], b"{}", 403),
    ("GET", b"/dashboard/", [(b"cookie", "herald_session=é.a.b".encode())], b"", 303),
    ("GET", b"/dashboard/", [(b"cookie", b"herald_session=\xc2\xb2.a.b")], b"", 303),
    ("POST", b"/v1/events", AUTH_JSON, b'{"user_id": "u1", "name": "e", "v": 1' + b"0" * 5000 + b"}", 400),
    ("POST", b"/v1/users", AUTH_JSON, b'{"id": "u1", "v": ' + b"9" * 5000 + b"}", 400),
    ("POST", b"/v1/events", AUTH_JSON, b'{"user_id": "u1", "name": "e", "v": "\\ud800"}', 422),
    ("POST", b"/v1/events", AUTH_JSON, b'{"user_id": "u1", "name": "e", "v": 1' + b"0" * 30 + b"}", 422),
    ("POST", b"/v1/events", AUTH_JSON, b'{"user_id": "u\\u0000", "name": "e"}', 422),
    ("POST", b"/v1/users", AUTH_JSON, b'{"id": "u1", "phone": "\\udfff"}', 422),
    ("POST", b"/v1/events", AUTH_JSON, b'{"user_id": "u1", "name": "e", "p": ' + b"[" * 40 + b"]" * 40 + b"}", 422),
    ("POST", b"/v1/events", [*AUTH_JSON, (b"content-length", b"\xc2\xb2")], b'{"user_id": "u1", "name": "e"}', 202),
    ("POST", b"/v1/events", [*AUTH_JSON, (b"idempotency-key", b"\xe9")], b'{"user_id": "u1", "name": "e"}', 400),
    ("POST", b"/dashboard/login", [(b"content-type", b"application/json")], b'{"token": "x"}', 415),
])
def test_each_input_that_used_to_fail_gets_a_specific_4xx(daemon: tuple[DemoWorld, Daemon], method: str,
                                                          path: bytes, headers: list[tuple[bytes, bytes]],
                                                          body: bytes, status: int) -> None:
    answer = one(daemon, method, path, headers, body)
    assert (answer.status, answer.error) == (status, None)


def test_a_body_cut_short_is_400_not_an_exception(daemon: tuple[DemoWorld, Daemon]) -> None:
    _, app = daemon
    for path, headers in ((b"/v1/events", AUTH_JSON), (b"/webhook/git", [(b"x-hub-signature-256", b"sha256=00")]),
                          (b"/receipts/vonage-global", [(b"content-type", b"application/json")])):
        answer = asyncio.run(call(app.app, Req("cut", "POST", path, headers, [b'{"user_id": '], cut=True)))
        assert (answer.status, answer.error) == (400, None), path


def test_metrics_answers_503_while_the_state_store_is_down(daemon: tuple[DemoWorld, Daemon],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = daemon

    def down() -> int:
        raise ConnectionError("state store unreachable")

    monkeypatch.setattr(world.engine.rt.store, "queue_depth", down)
    assert one(daemon, "GET", b"/metrics", []).status == 503
    monkeypatch.undo()
    assert one(daemon, "GET", b"/metrics", []).status == 200


def test_fuzzing_leaves_the_daemon_working(daemon: tuple[DemoWorld, Daemon]) -> None:
    """After the hostile requests, a real sign-up still gets its welcome message."""
    world, app = daemon
    fuzz(world, app, requests=300, seed=99)
    world.clock.advance(timedelta(minutes=1))
    body = json.dumps({"user_id": "u00007", "name": "signed_up", "id": "after-fuzz-1"}).encode()
    assert one(daemon, "POST", b"/v1/events", AUTH_JSON, body).status == 202
    world.step(sync=False)
    rows = world.engine.rt.store.list_outbox(campaign="welcome")
    assert any(r.user_id == "u00007" and r.status == "sent" for r in rows)
