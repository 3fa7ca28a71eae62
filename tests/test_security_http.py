"""The daemon's HTTP surface under hostile input and without credentials.

Through the daemon's own Starlette app (the Daemon object `herald run` serves): hypothesis fuzzes
event/user ingest, the delivery-receipt endpoints and the git webhook — answers are clear 4xx, never
500, and nothing forged is stored. Authentication accept/reject paths for every state-changing
endpoint. Then once over a real socket against the daemon process: the same checks, plus request
size limits that hold the daemon's memory flat while a client streams 32 MB at it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import (
    ADMIN_TOKEN,
    SETTINGS_YAML,
    WEBHOOK_SECRET,
    DaemonProcess,
    campaign_yaml,
    engine_world,
    ingest,
    mock_provider,
    population,
    providers_yaml,
    soon,
    standard_files,
    write_repo,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from reconciler.daemon import Daemon, DaemonOptions
from reconciler.demo import DemoWorld
from reconciler.http.receipts import twilio_signature
from reconciler.providers.registry import receipt_token
from reconciler.secrets import resolve_secret

FIRE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
JSON = {"Content-Type": "application/json"}
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def hub_signature(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclasses.dataclass
class Surface:
    world: DemoWorld
    client: TestClient

    @property
    def db(self) -> Path:
        return self.world.workdir / "state.db"

    def count(self, table: str) -> int:
        with sqlite3.connect(self.db) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def events(self) -> int:
        return self.world.engine.rt.audience.stats().events


@pytest.fixture(scope="module")
def surface(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Surface]:
    tmp_path = tmp_path_factory.mktemp("surface")
    files = {"providers/providers.yaml": providers_yaml(), "campaigns/settings.yaml": SETTINGS_YAML,
             "campaigns/blast.yaml": campaign_yaml("blast", FIRE, everyone=True)}
    with engine_world(tmp_path, files, population=6) as world:
        world.step()
        world.clock.set(FIRE)
        world.step(sync=False)  # send the campaign: receipts have messages to refer to
        rt = world.engine.rt
        rt.config = dataclasses.replace(rt.config, admin_token=ADMIN_TOKEN)
        daemon = Daemon(world.engine, DaemonOptions(webhook_secret=WEBHOOK_SECRET))
        with TestClient(daemon.app, raise_server_exceptions=False) as client:
            yield Surface(world, client)


# ---------------------------------------------------------------- strategies

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
timestamps = st.one_of(st.just("2026-12-01T08:00:00Z"), st.text(max_size=30), st.integers(), st.floats())
event_like = st.fixed_dictionaries(
    {"user_id": st.one_of(st.sampled_from(["u00001", "u00002", ""]), st.text(max_size=20), st.integers()),
     "name": st.one_of(st.sampled_from(["purchase", "signed_up"]), st.text(max_size=20), st.none())},
    optional={"ts": timestamps, "amount": json_values, "event_id": st.text(max_size=10), "props": json_values})
user_like = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=20), st.integers()),
     "phone": st.one_of(st.sampled_from(["+14155550123", "0044", "+999", ""]), st.text(max_size=20))},
    optional={"timezone": st.one_of(st.sampled_from(["UTC", "Mars/Base"]), st.text(max_size=20)),
              "created_at": timestamps, "first_name": json_values})
content_types = st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                 "application/x-www-form-urlencoded", ""])


def bodies(items: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    as_json = st.one_of(items, st.lists(items, max_size=4), json_values).map(lambda v: json.dumps(v).encode())
    return st.one_of(as_json, st.binary(max_size=200), st.text(max_size=200).map(str.encode))


CLEAR_INGEST_ANSWERS = {202, 400, 413, 415, 422}


# ---------------------------------------------------------------- fuzzing


@pytest.mark.parametrize(("path", "items"), [("/v1/events", event_like), ("/v1/users", user_like)])
def test_ingest_answers_every_input_with_a_clear_status(surface: Surface, path: str,
                                                         items: st.SearchStrategy[Any]) -> None:
    seen: set[int] = set()

    @FUZZ
    @given(body=bodies(items), content_type=content_types)
    def check(body: bytes, content_type: str) -> None:
        response = surface.client.post(path, content=body, headers={**AUTH, "Content-Type": content_type})
        assert response.status_code in CLEAR_INGEST_ANSWERS, (response.status_code, response.text, body[:200])
        assert response.status_code == 202 or response.json()["error"]
        seen.add(response.status_code)
    check()
    assert {202, 400, 415, 422} <= seen  # the fuzzing reached acceptance and every kind of refusal


def test_receipt_endpoints_never_fail_and_never_store_forged_callbacks(surface: Surface) -> None:
    before = surface.count("receipts")
    form = st.dictionaries(st.sampled_from(["MessageSid", "MessageStatus", "messageId", "status", "token",
                                            "sig", "timestamp", "SmsSid", "data", "x"]),
                           st.text(max_size=40), max_size=6)

    @FUZZ
    @given(provider=st.sampled_from(["tw", "vn", "nobody", "..%2fadmin", "tw%00"]), query=form, data=form,
           raw=st.one_of(st.none(), st.binary(max_size=200)), content_type=content_types,
           signature=st.one_of(st.none(), st.text(max_size=40)))
    def check(provider: str, query: dict[str, str], data: dict[str, str], raw: bytes | None, content_type: str,
              signature: str | None) -> None:
        headers = {"Content-Type": content_type}
        if signature is not None:
            headers["X-Twilio-Signature"] = signature.encode("ascii", "ignore").decode()
        body = raw if raw is not None else httpx.QueryParams(data).__str__().encode()
        response = surface.client.post(f"/receipts/{provider}", params=query, content=body, headers=headers)
        assert response.status_code in {200, 204, 400, 403, 404}, (response.status_code, response.text)
    check()
    assert surface.count("receipts") == before  # nothing without a valid signature or token got in


def test_git_webhook_rejects_every_unsigned_or_missigned_body(surface: Surface) -> None:
    @FUZZ
    @given(body=st.binary(max_size=300), signature=st.one_of(st.none(), st.text(max_size=80),
                                                             st.binary(max_size=32).map(lambda b: "sha256=" + b.hex())))
    def check(body: bytes, signature: str | None) -> None:
        headers = {} if signature is None else {"X-Hub-Signature-256": signature.encode("ascii", "ignore").decode()}
        response = surface.client.post("/webhook/git", content=body, headers=headers)
        assert response.status_code == 403, (response.status_code, response.text)
    check()


# ---------------------------------------------------------------- authentication


BAD_AUTHORIZATION = [None, "", "Bearer", "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", f"Bearer {ADMIN_TOKEN}x",
                     f"bearer {ADMIN_TOKEN[:-1]}", f"Bearer  {ADMIN_TOKEN[1:]}", "Bearer None"]


def test_state_changing_endpoints_refuse_a_missing_or_wrong_token(surface: Surface) -> None:
    body = json.dumps({"user_id": "u00001", "name": "purchase", "id": "x1", "phone": "+14155550123"})
    events, users = surface.events(), surface.world.engine.rt.audience.stats().users
    for path in ("/v1/events", "/v1/users", "/admin/sync"):
        for authorization in BAD_AUTHORIZATION:
            headers = {**JSON, **({"Authorization": authorization} if authorization is not None else {})}
            response = surface.client.post(path, content=body, headers=headers)
            assert response.status_code == 401, (path, authorization)
            assert response.headers["www-authenticate"] == "Bearer"
    assert surface.events() == events and surface.world.engine.rt.audience.stats().users == users


def test_state_changing_endpoints_accept_the_token(surface: Surface) -> None:
    before = surface.events()
    event = {"user_id": "u00001", "name": "purchase", "ts": "2026-12-01T09:30:00Z", "amount": 5}
    assert surface.client.post("/v1/events", json=event, headers=AUTH).status_code == 202
    assert surface.events() == before + 1
    user = {"id": "new-user", "phone": "+14155550199", "timezone": "UTC"}
    assert surface.client.post("/v1/users", json=user, headers=AUTH).status_code == 202
    assert surface.world.engine.rt.audience.get_user("new-user") is not None
    assert surface.client.post("/admin/sync", headers=AUTH).status_code == 202


def test_no_configured_token_means_no_access(tmp_path: Path) -> None:
    files = {"providers/providers.yaml": providers_yaml(), "campaigns/settings.yaml": SETTINGS_YAML}
    with engine_world(tmp_path, files, population=2) as world:
        daemon = Daemon(world.engine, DaemonOptions(webhook_secret=None))  # no admin token, no webhook secret
        with TestClient(daemon.app) as client:
            for path in ("/v1/events", "/v1/users", "/admin/sync"):
                assert client.post(path, json={}, headers={"Authorization": "Bearer "}).status_code == 401
                assert client.post(path, json={}, headers={"Authorization": "Bearer None"}).status_code == 401
            body = b'{"ref": "refs/heads/main"}'
            answer = client.post("/webhook/git", content=body, headers={"X-Hub-Signature-256": hub_signature(body, "")})
            assert answer.status_code == 403


def test_git_webhook_accepts_only_the_github_hmac_of_the_exact_body(surface: Surface) -> None:
    body = b'{"ref": "refs/heads/main", "after": "abc"}'
    good = hub_signature(body)
    assert surface.client.post("/webhook/git", content=body, headers={"X-Hub-Signature-256": good}).status_code == 202
    for signature in (good.upper(), good.replace("sha256=", "sha1="), good[:-2], hub_signature(body + b" "),
                      hub_signature(body, WEBHOOK_SECRET + "x"), "sha256=", ""):
        answer = surface.client.post("/webhook/git", content=body, headers={"X-Hub-Signature-256": signature})
        assert answer.status_code == 403, signature
    assert surface.client.post("/webhook/git", content=body + b" ", headers={"X-Hub-Signature-256": good}
                               ).status_code == 403


def _sent_row(surface: Surface, provider: str) -> Any:
    rows = surface.world.engine.rt.store.list_outbox(campaign="blast", statuses=["sent"], limit=100)
    return next(r for r in rows if r.provider == provider and r.provider_message_id)


def test_twilio_receipts_need_the_auth_token_signature(surface: Surface) -> None:
    row = _sent_row(surface, "tw")
    url = "http://testserver/receipts/tw"
    params = {"MessageSid": row.provider_message_id, "MessageStatus": "delivered"}
    token = resolve_secret(surface.world.engine.state.providers["tw"].spec.authToken)  # type: ignore[union-attr]
    forged = [None, "", twilio_signature("not-the-token", url, params),
              twilio_signature(token, url + "?x=1", params),
              twilio_signature(token, url, {**params, "MessageStatus": "failed"})]
    for signature in forged:
        headers = {} if signature is None else {"X-Twilio-Signature": signature}
        assert surface.client.post("/receipts/tw", data=params, headers=headers).status_code == 403
    assert surface.world.engine.rt.store.get_outbox([row.id])[0].delivery_status is None
    good = {"X-Twilio-Signature": twilio_signature(token, url, params)}
    assert surface.client.post("/receipts/tw", data=params, headers=good).status_code == 204
    assert surface.world.engine.rt.store.get_outbox([row.id])[0].delivery_status == "delivered"


def test_unsigned_providers_need_the_receipt_token(surface: Surface) -> None:
    surface.world.clock.set(FIRE)
    vonage = surface.world.engine.state.providers["vn"]
    token = receipt_token(vonage)
    assert token
    params = {"messageId": "0A000000123ABCD1", "status": "delivered"}
    for given_token in (None, "", token[:-1], token.upper(), "x" * len(token)):
        query = {} if given_token is None else {"token": given_token}
        answer = surface.client.post("/receipts/vn", params=query, data=params)
        assert answer.status_code == 403
    before = surface.count("receipts")
    assert surface.client.post("/receipts/vn", params={"token": token}, data=params).status_code == 204
    assert surface.count("receipts") == before + 1


@pytest.mark.parametrize(("path", "headers", "limit_status"), [
    ("/v1/events", {**AUTH, **JSON}, 413),
    ("/webhook/git", {"X-Hub-Signature-256": "sha256=00"}, 413),
    ("/receipts/vn", {"Content-Type": "application/x-www-form-urlencoded"}, 400),
])
def test_oversized_bodies_are_refused(surface: Surface, path: str, headers: dict[str, str], limit_status: int) -> None:
    big = b"x" * (2 * 1024 * 1024)
    assert surface.client.post(path, content=big, headers=headers).status_code == limit_status


# ---------------------------------------------------------------- over a real socket


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _stream(megabytes: int) -> Iterator[bytes]:
    chunk = b"[" + b" " * (1024 * 1024 - 1)
    for _ in range(megabytes):
        yield chunk


def test_the_daemon_process_enforces_auth_and_size_limits_on_its_socket(tmp_path: Path) -> None:
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, population(3))
    repo = write_repo(tmp_path / "repo", standard_files(soon(3600)))
    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d", str(repo.working_tree_dir), f"sqlite:///{tmp_path / 'state.db'}",
                               audience_url, mock.url, poll_interval=600)
        daemon.start()
        try:
            daemon.wait_healthy()
            base = daemon.base_url
            event = {"user_id": "r00001", "name": "purchase"}
            assert httpx.post(f"{base}/v1/events", json=event).status_code == 401
            assert httpx.post(f"{base}/v1/events", json=event, headers={"Authorization": "Bearer no"}).status_code == 401
            assert httpx.post(f"{base}/v1/events", json=event, headers=AUTH).status_code == 202
            assert httpx.post(f"{base}/admin/sync").status_code == 401
            assert httpx.post(f"{base}/admin/sync", headers=AUTH).status_code == 202
            body = b'{"ref": "refs/heads/main"}'
            assert httpx.post(f"{base}/webhook/git", content=body).status_code == 403
            assert httpx.post(f"{base}/webhook/git", content=body,
                              headers={"X-Hub-Signature-256": hub_signature(body)}).status_code == 202
            assert httpx.post(f"{base}/receipts/vn", data={"messageId": "1", "status": "delivered"}).status_code == 403

            assert daemon.process is not None
            rss_before = _rss_kib(daemon.process.pid)
            with httpx.Client(timeout=60) as client:
                for path, headers in (("/v1/events", {**AUTH, **JSON}), ("/webhook/git", {}),
                                      ("/receipts/vn", {"Content-Type": "application/json"})):
                    try:  # 32 MB, chunked (no Content-Length): refused while reading, not after buffering
                        answer = client.post(f"{base}{path}", content=_stream(32), headers=headers)
                        assert answer.status_code in (400, 413), (path, answer.status_code)
                    except httpx.TransportError:
                        pass  # the daemon answered and closed while we were still sending: also refused
            grown = _rss_kib(daemon.process.pid) - rss_before
            assert grown < 16 * 1024, f"daemon memory grew by {grown} KiB while refusing 3 x 32 MB"
            assert daemon.healthz()["status"] == "ok"
        finally:
            assert daemon.terminate() == 0
    assert "Traceback" not in daemon.log_text()


def test_the_dashboard_shows_nothing_without_the_token_or_a_valid_session(surface: Surface) -> None:
    for path in ("/dashboard/", "/dashboard/audit", "/dashboard/campaigns/blast"):
        anonymous = surface.client.get(path, follow_redirects=False)
        assert anonymous.status_code == 303 and "/login" in anonymous.headers["location"]
        assert surface.client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        forged = surface.client.get(path, cookies={"herald_session": "9999999999.abc.def"}, follow_redirects=False)
        assert forged.status_code == 303
        assert "blast" not in anonymous.text + forged.text
        assert surface.client.get(path, headers=AUTH).status_code == 200
    wrong = surface.client.post("/dashboard/login", data={"token": "nope", "next": "/dashboard/"},
                                follow_redirects=False)
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
