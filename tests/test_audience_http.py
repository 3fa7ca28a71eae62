"""Live ingest endpoints: auth, clear 4xx on bad input (never 500), storage and the trigger hook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.testclient import TestClient
from test_audience_support import NOW, phone

from reconciler.audience import AudienceStore, EventRecord, open_audience_store
from reconciler.clock import FakeClock
from reconciler.http.events import event_routes

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Harness:
    def __init__(self) -> None:
        self.store: AudienceStore = open_audience_store("duckdb:///:memory:")
        self.clock = FakeClock(NOW)
        self.seen: list[EventRecord] = []
        app = Starlette(routes=event_routes(self.store, token=TOKEN, clock=self.clock, on_events=self.seen.extend,
                                            max_body_bytes=4096))
        self.client = TestClient(app, raise_server_exceptions=False)

    def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
        return self.client.post(path, content=body if isinstance(body, bytes | str) else json.dumps(body),
                                headers={"Content-Type": "application/json", **AUTH, **(headers or {})})


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    yield h
    h.store.close()


def test_events_are_stored_and_passed_to_the_trigger_hook(harness: Harness) -> None:
    harness.post("/v1/users", {"id": "u1", "phone": phone(1)})
    answer = harness.post("/v1/events", [{"user_id": "u1", "name": "added_to_cart", "value": 30},
                                         {"user_id": "u1", "name": "purchase", "ts": "2026-11-30T10:00:00Z"}])
    assert answer.status_code == 202 and answer.json() == {"accepted": 2}
    assert [e.name for e in harness.seen] == ["added_to_cart", "purchase"]
    assert harness.seen[0].ts == NOW and harness.seen[0].properties == {"value": 30}  # no ts: the clock's now
    assert harness.store.count_events("u1", "added_to_cart", now=NOW) == 1
    assert harness.store.count_events("u1", "purchase", now=NOW, since=NOW - timedelta(days=2)) == 1


def test_users_endpoint_upserts(harness: Harness) -> None:
    first = harness.post("/v1/users", [{"id": "u1", "phone": phone(1), "plan": "free"}, {"id": "u2", "phone": "1"}])
    assert first.status_code == 202 and first.json() == {"accepted": 2, "invalid_phones": 1}
    harness.post("/v1/users", {"id": "u1", "opted_out": True})
    user = harness.store.get_user("u1")
    assert user is not None and not user.reachable and user.properties == {"plan": "free"}


@pytest.mark.parametrize(("headers", "status"), [
    ({"Authorization": ""}, 401),
    ({"Authorization": "Bearer wrong"}, 401),
    ({"Authorization": f"Basic {TOKEN}"}, 401),
])
def test_auth_is_required(harness: Harness, headers: dict[str, str], status: int) -> None:
    answer = harness.post("/v1/events", {"user_id": "u", "name": "e"}, headers)
    assert answer.status_code == status
    assert harness.store.stats().events == 0


def test_no_configured_token_means_no_access() -> None:
    with open_audience_store("duckdb:///:memory:") as store:
        client = TestClient(Starlette(routes=event_routes(store, token=None, clock=FakeClock(NOW))))
        answer = client.post("/v1/events", json={"user_id": "u", "name": "e"}, headers={"Authorization": "Bearer "})
        assert answer.status_code == 401


@pytest.mark.parametrize(("body", "content_type", "status", "fragment"), [
    (b"{not json", "application/json", 400, "not valid JSON"),
    (b"\xff\xfe", "application/json", 400, "not valid JSON"),
    (b"[]", "application/json", 422, "empty"),
    (b'{"user_id": "u"}', "application/json", 422, "name"),
    (b'[{"user_id": "u", "name": "e"}, 5]', "application/json", 422, "invalid items"),
    (b'{"user_id": "u", "name": "e", "ts": "never"}', "application/json", 422, "invalid items"),
    (b'{"user_id": "u", "name": "e", "v": NaN}', "application/json", 422, "invalid items"),
    (b'{"user_id": "u", "name": "e"}', "text/plain", 415, "application/json"),
    (b'{"user_id": "u", "name": "' + b"x" * 5000 + b'"}', "application/json", 413, "exceeds"),
    (b"[" * 1500 + b"]" * 1500, "application/json", 400, "not valid JSON"),
])
def test_bad_input_gets_a_clear_4xx(harness: Harness, body: bytes, content_type: str, status: int,
                                    fragment: str) -> None:
    answer = harness.post("/v1/events", body, {"Content-Type": content_type})
    assert answer.status_code == status
    assert fragment in json.dumps(answer.json())
    assert harness.store.stats().events == 0  # all or nothing


def test_invalid_items_are_reported_by_index(harness: Harness) -> None:
    answer = harness.post("/v1/events", [{"user_id": "u", "name": "ok"}, {"name": "no user"},
                                         {"user_id": "u", "name": ""}])
    assert answer.status_code == 422
    assert [e["index"] for e in answer.json()["errors"]] == [1, 2]


def test_wrong_method_is_405(harness: Harness) -> None:
    assert harness.client.get("/v1/events", headers=AUTH).status_code == 405


def test_store_failure_is_503_not_500(harness: Harness) -> None:
    harness.store.close()
    answer = harness.post("/v1/events", {"user_id": "u", "name": "e"})
    assert answer.status_code == 503


def test_a_failing_hook_does_not_lose_events() -> None:
    def broken(events: list[EventRecord]) -> None:
        raise RuntimeError("scheduler down")

    with open_audience_store("duckdb:///:memory:") as store:
        client = TestClient(Starlette(routes=event_routes(store, token=TOKEN, clock=FakeClock(NOW),
                                                          on_events=broken)))
        assert client.post("/v1/events", json={"user_id": "u", "name": "e"}, headers=AUTH).status_code == 202
        assert store.stats().events == 1


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(json_values, st.dictionaries(st.sampled_from(["user_id", "name", "ts", "properties", "x"]),
                                                      json_values, max_size=5)))
def test_fuzzed_payloads_never_500(harness: Harness, payload: Any) -> None:
    answer = harness.post("/v1/events", payload)
    assert answer.status_code in (202, 400, 413, 422)
