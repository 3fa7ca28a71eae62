"""Live ingest: POST /v1/events and POST /v1/users (one JSON object or a list of them).

Both need `Authorization: Bearer <HERALD_ADMIN_TOKEN>`. A request is all-or-nothing: any invalid item
rejects the whole request with 422 and per-item reasons, so a client can fix and resend it.
Answers: 202 accepted, 400 malformed JSON (or a number too long to read, or a body cut short),
401 token, 413 too large, 415 not JSON, 422 invalid items (incl. text with NUL or lone surrogates, integers
beyond 64 bits, values nested deeper than 32 levels, timestamps outside 1970-2200), 503 store unavailable (retry later) — never
500, and never 503 for input that cannot succeed. An event without `ts` happened "now" (the Clock).

Idempotency: an event with a client event id — its `id` field, or for event i of a request with an
`Idempotency-Key: K` header and no `id`, the id `K:i` — is stored once per (user_id, name, id). A retry
is answered 202 with its index under "duplicates", is not stored again, and reaches the live hook
with the ts of the first copy, so its live messages keep the same idempotency keys.

Concurrent event requests share store writes (group commit, see EventBatcher): a 202 still means
the request's events are stored and were passed to the live-trigger hook.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..audience.records import EventRecord, RecordError, UserRecord, parse_event, parse_user
from ..audience.store import AudienceStore, EventWrite
from ..clock import Clock
from ..secrets import redact
from .security import (
    BodyIncomplete,
    BodyTooLarge,
    as_bytes,
    bearer_token_ok,
    read_limited_body,
    unauthorized,
)

log = logging.getLogger(__name__)

MAX_EVENT_BODY_BYTES = 1_048_576
MAX_ITEMS_PER_REQUEST = 5000
MAX_REPORTED_ERRORS = 50
MAX_IDEMPOTENCY_KEY_LENGTH = 200
MAX_LOGGED_CHARS = 300  # of an error's text in the log (it may quote a hostile value)

EventHook = Callable[[list[EventRecord]], Awaitable[None] | None]
ConsentHook = Callable[[list[tuple[str, str | None, bool]]], Awaitable[None]]  # (user id, phone, opted_out)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.errors = errors or []


def _error(status: int, message: str, errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if errors:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


async def _items(request: Request, max_body_bytes: int) -> list[Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise BadRequest(415, "send Content-Type: application/json")
    try:
        body = await read_limited_body(request, max_body_bytes)
    except BodyTooLarge:
        raise BadRequest(413, f"body exceeds {max_body_bytes} bytes") from None
    except BodyIncomplete as exc:
        raise BadRequest(400, str(exc)) from None
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise BadRequest(400, f"body is not valid JSON{_json_error_detail(exc)}") from None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise BadRequest(422, "the list is empty")
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise BadRequest(413, f"at most {MAX_ITEMS_PER_REQUEST} items per request")
    return items


def _json_error_detail(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f": {exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return ": not UTF-8"
    if isinstance(exc, RecursionError):
        return ": nested too deeply"
    return ": a number has too many digits"  # int() refuses more than sys.get_int_max_str_digits()


def _idempotency_key(request: Request) -> str | None:
    """The request's Idempotency-Key header: 1 to 200 printable ASCII characters, or BadRequest 400."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequest(400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} printable ASCII "
                              f"characters (got {len(as_bytes(key))} bytes)")
    return key


def _parse_all(items: list[Any], parse: Callable[[int, Any], Any]) -> list[Any]:
    """Every item parsed, or BadRequest 422 naming each bad item's index and reason."""
    records: list[Any] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:  # parse_* also refuse values no store can hold (records.check_storable)
            records.append(parse(index, item))
        except RecordError as exc:
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append({"index": index, "message": str(exc)})
            else:
                break
    if errors:
        raise BadRequest(422, "invalid items; nothing was stored", errors)
    return records


@dataclass
class _Waiting:
    events: list[EventRecord]
    stored: asyncio.Future[list[bool]] = field(repr=False)  # per event: was it a duplicate?


class EventBatcher:
    """Group commit for event requests: one store write and one hook call for everything queued.

    While a write is in flight, new requests queue; when it finishes, everything queued (up to
    `max_records`) goes to the store in one write, then to the hook in one call, and only then does each
    waiting request get its answer. An idle batcher writes a lone request at once, so there is no fixed
    delay. If a shared write fails, each request is written on its own, so one request's failure never
    fails another's events. Writes run in order, so the hook sees events in the order they were stored.
    Duplicates (a client event id already stored) reach the hook too, with their first copy's ts: the
    hook's idempotency keys make a repeat harmless, and a retry after a crash between store and hook
    still triggers what the first attempt did not.
    """

    def __init__(self, store: AudienceStore, on_events: EventHook | None = None, *,
                 max_records: int = MAX_ITEMS_PER_REQUEST) -> None:
        self._store = store
        self._on_events = on_events
        self._max_records = max_records
        self._queue: list[_Waiting] = []
        self._writer: asyncio.Task[None] | None = None
        self.writes: int = 0  # store writes made (observability and tests)

    @property
    def queued(self) -> int:
        """Requests waiting for the next write."""
        return len(self._queue)

    async def submit(self, events: list[EventRecord]) -> list[bool]:
        """Return, once `events` are stored and passed to the hook, which of them were duplicates;
        raise the store's error otherwise."""
        loop = asyncio.get_running_loop()
        if self._writer is not None and not self._writer.done() and self._writer.get_loop() is not loop:
            self._queue = []  # left behind by a closed event loop (test clients start one per request)
        waiting = _Waiting(events, loop.create_future())
        self._queue.append(waiting)
        if self._writer is None or self._writer.done() or self._writer.get_loop() is not loop:
            self._writer = loop.create_task(self._drain())
        # shield: a client that goes away must not cancel the shared future; its events are still written
        return await asyncio.shield(waiting.stored)

    async def _drain(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._queue:
                batch = self._take()
                await self._write(batch)
        except BaseException as exc:  # cancelled with the loop: nobody may wait forever
            error = exc if isinstance(exc, Exception) else RuntimeError("event ingest stopped")
            for waiting in batch + self._take_all():
                _settle(waiting, error)
            raise

    def _take(self) -> list[_Waiting]:
        taken, records = 0, 0
        for waiting in self._queue:
            if taken and records + len(waiting.events) > self._max_records:
                break
            taken, records = taken + 1, records + len(waiting.events)
        batch, self._queue = self._queue[:taken], self._queue[taken:]
        return batch

    def _take_all(self) -> list[_Waiting]:
        batch, self._queue = self._queue, []
        return batch

    async def _write(self, batch: list[_Waiting]) -> None:
        try:
            written = await self._insert([event for waiting in batch for event in waiting.events])
            stored = _split(batch, written)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            stored = await self._write_one_by_one(batch)
        if stored:
            await self._notify([event for _, write in stored for event in write.events])
        for waiting, write in stored:
            _settle(waiting, write.duplicate)

    async def _write_one_by_one(self, batch: list[_Waiting]) -> list[tuple[_Waiting, EventWrite]]:
        # each engine writes a batch atomically (one transaction), so a failed shared write stored
        # nothing and retrying per request cannot double anything
        stored: list[tuple[_Waiting, EventWrite]] = []
        for waiting in batch:
            try:
                stored.append((waiting, await self._insert(waiting.events)))
            except Exception as exc:
                _settle(waiting, exc)
        return stored

    async def _insert(self, events: list[EventRecord]) -> EventWrite:
        self.writes += 1
        return await run_in_threadpool(self._store.write_events, events)

    async def _notify(self, events: list[EventRecord]) -> None:
        if self._on_events is None:
            return
        try:
            result = self._on_events(events)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.error("live event hook failed: %s", redact(f"{type(exc).__name__}: {exc}")[:MAX_LOGGED_CHARS])


def _split(batch: list[_Waiting], written: EventWrite) -> list[tuple[_Waiting, EventWrite]]:
    """A shared write's outcome, cut back into each waiting request's part (same order)."""
    parts, start = [], 0
    for waiting in batch:
        end = start + len(waiting.events)
        parts.append((waiting, EventWrite(written.events[start:end], written.duplicate[start:end])))
        start = end
    return parts


def _settle(waiting: _Waiting, outcome: BaseException | list[bool]) -> None:
    if waiting.stored.done():
        return
    if isinstance(outcome, BaseException):
        waiting.stored.set_exception(outcome)
    else:
        waiting.stored.set_result(outcome)


def event_routes(store: AudienceStore, *, token: str | None, clock: Clock, on_events: EventHook | None = None,
                 max_body_bytes: int = MAX_EVENT_BODY_BYTES, prefix: str = "/v1",
                 on_consent: ConsentHook | None = None) -> list[Route]:
    """Routes for live users/events. `on_events` (e.g. the scheduler's live triggers) sees every
    accepted event once, after it is stored, possibly together with other requests' events; its failure
    is logged, the events stay stored. `on_consent` sees the opt-outs/opt-ins a users request changed
    (reconciler.consent records them with source "ingest")."""
    batcher = EventBatcher(store, on_events)

    async def guarded(request: Request, handle: Callable[[list[Any]], Awaitable[dict[str, Any]]]) -> Response:
        if not bearer_token_ok(request, token):
            return unauthorized()
        try:
            items = await _items(request, max_body_bytes)
            answer = await handle(items)
        except BadRequest as exc:
            return _error(exc.status, str(exc), exc.errors)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a value no store can hold
            log.warning("live ingest refused a value: %s", redact(f"{type(exc).__name__}: {exc}")[:MAX_LOGGED_CHARS])
            return _error(422, f"a value cannot be stored ({type(exc).__name__}); nothing was stored")
        except Exception as exc:  # the store is down or locked: the client should retry
            log.error("live ingest failed: %s", redact(f"{type(exc).__name__}: {exc}")[:MAX_LOGGED_CHARS])
            return _error(503, "the audience store is unavailable; retry later")
        return JSONResponse(answer, status_code=202)

    async def post_events(request: Request) -> Response:
        async def handle(items: list[Any]) -> dict[str, Any]:
            key = _idempotency_key(request)
            now = clock.now()

            def parse(index: int, item: Any) -> EventRecord:
                event = parse_event(item, now=now)
                return replace(event, id=f"{key}:{index}") if key is not None and event.id is None else event

            events: list[EventRecord] = _parse_all(items, parse)
            duplicate = await batcher.submit(events)
            answer: dict[str, Any] = {"accepted": len(events)}
            if any(duplicate):
                answer["duplicates"] = [index for index, seen in enumerate(duplicate) if seen]
            return answer

        return await guarded(request, handle)

    async def post_users(request: Request) -> Response:
        async def handle(items: list[Any]) -> dict[str, Any]:
            users: list[UserRecord] = _parse_all(items, lambda _index, item: parse_user(item))
            changes = await run_in_threadpool(store.consent_changes, users) if on_consent else []
            await run_in_threadpool(lambda: store.upsert_users(users, now=clock.now()))
            if changes and on_consent is not None:
                try:
                    await on_consent(changes)
                except Exception as exc:  # the users are stored; the ledger entry is what is missing
                    log.error("consent changes not recorded: %s", redact(f"{type(exc).__name__}: {exc}")[:MAX_LOGGED_CHARS])
            invalid = sum(1 for user in users if user.phone_valid is False)
            return {"accepted": len(users), "invalid_phones": invalid}

        return await guarded(request, handle)

    return [
        Route(f"{prefix}/events", post_events, methods=["POST"]),
        Route(f"{prefix}/users", post_users, methods=["POST"]),
    ]
