"""Concurrent POST /v1/events share store writes (group commit) without losing, doubling or reordering
events, and a 202 still means stored: every event is written once and reaches the live hook once."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from test_audience_support import NOW

from reconciler.audience import EventRecord
from reconciler.audience.duckdb_store import DuckDBAudienceStore
from reconciler.audience.store import EventWrite
from reconciler.clock import FakeClock
from reconciler.http.events import EventBatcher, event_routes

TOKEN = "admin-token-for-tests"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
POISON = "poison-user"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class RecordingStore(DuckDBAudienceStore):
    """A real in-memory DuckDB store that records each write, can hold writes at a gate, and rejects
    any write that contains the POISON user (a stand-in for a batch the engine refuses)."""

    def __init__(self) -> None:
        super().__init__(":memory:")
        self.write_sizes: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.writing = threading.Event()

    def write_events(self, records: Iterable[EventRecord]) -> EventWrite:
        batch = list(records)
        self.writing.set()
        self.gate.wait(timeout=10)
        if any(record.user_id == POISON for record in batch):
            raise RuntimeError("rejected batch")
        self.write_sizes.append(len(batch))
        return super().write_events(batch)

    def stored_users(self) -> Counter[str]:
        cursor = self._con.cursor()
        try:
            return Counter(row[0] for row in cursor.execute("SELECT user_id FROM events").fetchall())
        finally:
            cursor.close()


class Hook:
    def __init__(self, store: RecordingStore) -> None:
        self.store = store
        self.calls: list[list[str]] = []
        self.unstored_when_called: list[str] = []

    async def __call__(self, events: list[EventRecord]) -> None:
        stored = self.store.stored_users()
        self.unstored_when_called += [e.user_id for e in events if stored[e.user_id] == 0]
        self.calls.append([e.user_id for e in events])


@pytest.fixture
async def store() -> AsyncIterator[RecordingStore]:
    recording = RecordingStore()
    yield recording
    recording.gate.set()
    recording.close()


def client_for(store: RecordingStore, hook: Hook) -> httpx.AsyncClient:
    app = Starlette(routes=event_routes(store, token=TOKEN, clock=FakeClock(NOW), on_events=hook))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://herald.test")


def event(user: str) -> EventRecord:
    return EventRecord(user_id=user, name="purchase", ts=NOW, properties={})


async def yield_until(condition: Any, attempts: int = 1000) -> None:
    """Let other tasks run (no wall-clock waiting) until `condition()` holds."""
    for _ in range(attempts):
        if condition():
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError("condition never held")


@pytest.mark.anyio
async def test_many_concurrent_single_event_requests_are_each_stored_and_hooked_once(store: RecordingStore) -> None:
    hook = Hook(store)
    users = [f"u{i}" for i in range(60)]
    answers: dict[str, int] = {}
    async with client_for(store, hook) as client:
        async def post(user: str) -> None:
            answer = await client.post("/v1/events", json={"user_id": user, "name": "purchase"}, headers=HEADERS)
            answers[user] = answer.status_code

        async with anyio.create_task_group() as group:
            for user in users:
                group.start_soon(post, user)

    assert answers == {user: 202 for user in users}
    assert store.stored_users() == Counter(users)
    assert Counter(user for call in hook.calls for user in call) == Counter(users)
    assert sum(store.write_sizes) == len(users)
    assert len(store.write_sizes) < len(users)  # concurrent requests shared writes
    assert hook.unstored_when_called == []


@pytest.mark.anyio
async def test_requests_queued_behind_a_write_share_the_next_write_and_hook_call(store: RecordingStore) -> None:
    hook = Hook(store)
    batcher = EventBatcher(store, hook)
    store.gate.clear()
    async with anyio.create_task_group() as group:
        group.start_soon(batcher.submit, [event("first")])
        await anyio.to_thread.run_sync(store.writing.wait)
        for i in range(20):
            group.start_soon(batcher.submit, [event(f"q{i}"), event(f"q{i}")])
        await yield_until(lambda: batcher.queued == 20)
        store.gate.set()

    assert store.write_sizes == [1, 40]
    assert batcher.writes == 2
    assert hook.calls == [["first"], [user for i in range(20) for user in (f"q{i}", f"q{i}")]]


@pytest.mark.anyio
async def test_a_request_gets_202_only_after_its_events_are_stored(store: RecordingStore) -> None:
    hook = Hook(store)
    answers: list[int] = []
    store.gate.clear()
    async with client_for(store, hook) as client, anyio.create_task_group() as group:
        async def post() -> None:
            answer = await client.post("/v1/events", json={"user_id": "u1", "name": "purchase"}, headers=HEADERS)
            answers.append(answer.status_code)

        group.start_soon(post)
        await anyio.to_thread.run_sync(store.writing.wait)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert answers == [] and store.stored_users() == Counter()
        store.gate.set()

    assert answers == [202]
    assert store.stored_users() == Counter({"u1": 1})
    assert hook.calls == [["u1"]]


@pytest.mark.anyio
async def test_a_bad_request_never_drops_the_events_of_requests_sharing_its_write(store: RecordingStore) -> None:
    hook = Hook(store)
    answers: dict[str, int] = {}
    store.gate.clear()
    async with client_for(store, hook) as client, anyio.create_task_group() as group:
        async def post(name: str, body: Any) -> None:
            answer = await client.post("/v1/events", json=body, headers=HEADERS)
            answers[name] = answer.status_code

        group.start_soon(post, "first", {"user_id": "first", "name": "purchase"})
        await anyio.to_thread.run_sync(store.writing.wait)
        for i in range(10):
            group.start_soon(post, f"ok{i}", [{"user_id": f"ok{i}", "name": "purchase"}])
        group.start_soon(post, "invalid", [{"user_id": "x", "name": "purchase"}, {"name": "no user"}])
        group.start_soon(post, "rejected", [{"user_id": POISON, "name": "purchase"}])
        await yield_until(lambda: len(answers) >= 1)  # the invalid one answers without waiting for a write
        store.gate.set()

    assert answers["invalid"] == 422
    assert answers["rejected"] == 503
    ok = ["first"] + [f"ok{i}" for i in range(10)]
    assert {name: answers[name] for name in ok} == {name: 202 for name in ok}
    assert store.stored_users() == Counter(ok)
    assert Counter(user for call in hook.calls for user in call) == Counter(ok)
    assert hook.unstored_when_called == []


@pytest.mark.anyio
async def test_a_failing_hook_keeps_events_stored_and_answers_202(store: RecordingStore) -> None:
    def broken_hook(events: list[EventRecord]) -> None:
        raise RuntimeError("trigger evaluation failed")

    app = Starlette(routes=event_routes(store, token=TOKEN, clock=FakeClock(NOW), on_events=broken_hook))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://herald.test") as client:
        answer = await client.post("/v1/events", json={"user_id": "u1", "name": "purchase"}, headers=HEADERS)
    assert answer.status_code == 202
    assert store.stored_users() == Counter({"u1": 1})


@pytest.mark.anyio
async def test_one_write_never_exceeds_the_record_limit(store: RecordingStore) -> None:
    batcher = EventBatcher(store, max_records=5)
    store.gate.clear()
    async with anyio.create_task_group() as group:
        group.start_soon(batcher.submit, [event("first")])
        await anyio.to_thread.run_sync(store.writing.wait)
        for i in range(6):
            group.start_soon(batcher.submit, [event(f"a{i}"), event(f"b{i}")])
        await yield_until(lambda: batcher.queued == 6)
        store.gate.set()

    assert store.write_sizes == [1, 4, 4, 4]
    assert sum(store.stored_users().values()) == 13
