"""Live ingest: POST /v1/events and POST /v1/users (one JSON object or a list of them).

Both need `Authorization: Bearer <HERALD_ADMIN_TOKEN>`. A request is all-or-nothing: any invalid item
rejects the whole request with 422 and per-item reasons, so a client can fix and resend it.
Answers: 202 accepted, 400 malformed JSON, 401 token, 413 too large, 415 not JSON, 422 invalid items,
503 store unavailable (retry later) — never 500. An event without `ts` happened "now" (the Clock).
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..audience.records import EventRecord, RecordError, UserRecord, parse_event, parse_user
from ..audience.store import AudienceStore
from ..clock import Clock
from ..secrets import redact
from .security import BodyTooLarge, bearer_token_ok, read_limited_body, unauthorized

log = logging.getLogger(__name__)

MAX_EVENT_BODY_BYTES = 1_048_576
MAX_ITEMS_PER_REQUEST = 5000
MAX_REPORTED_ERRORS = 50

EventHook = Callable[[list[EventRecord]], Awaitable[None] | None]


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
    try:
        decoded = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        detail = f": {exc.msg} at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise BadRequest(400, f"body is not valid JSON{detail}") from None
    items = decoded if isinstance(decoded, list) else [decoded]
    if not items:
        raise BadRequest(422, "the list is empty")
    if len(items) > MAX_ITEMS_PER_REQUEST:
        raise BadRequest(413, f"at most {MAX_ITEMS_PER_REQUEST} items per request")
    return items


def _parse_all(items: list[Any], parse: Callable[[Any], Any]) -> list[Any]:
    records: list[Any] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            records.append(parse(item))
        except RecordError as exc:
            if len(errors) < MAX_REPORTED_ERRORS:
                errors.append({"index": index, "message": str(exc)})
            else:
                break
    if errors:
        raise BadRequest(422, "invalid items; nothing was stored", errors)
    return records


def event_routes(store: AudienceStore, *, token: str | None, clock: Clock, on_events: EventHook | None = None,
                 max_body_bytes: int = MAX_EVENT_BODY_BYTES, prefix: str = "/v1") -> list[Route]:
    """Routes for live users/events. `on_events` (e.g. the scheduler's live triggers) sees each
    accepted batch after it is stored; its failure is logged, the events stay stored."""

    async def guarded(request: Request, handle: Callable[[list[Any]], Awaitable[dict[str, Any]]]) -> Response:
        if not bearer_token_ok(request, token):
            return unauthorized()
        try:
            items = await _items(request, max_body_bytes)
            answer = await handle(items)
        except BadRequest as exc:
            return _error(exc.status, str(exc), exc.errors)
        except Exception as exc:  # the store is down or locked: the client should retry
            log.error("live ingest failed: %s", redact(f"{type(exc).__name__}: {exc}"))
            return _error(503, "the audience store is unavailable; retry later")
        return JSONResponse(answer, status_code=202)

    async def post_events(request: Request) -> Response:
        async def handle(items: list[Any]) -> dict[str, Any]:
            now = clock.now()
            events: list[EventRecord] = _parse_all(items, lambda item: parse_event(item, now=now))
            await run_in_threadpool(store.insert_events, events)
            await _notify(events)
            return {"accepted": len(events)}

        return await guarded(request, handle)

    async def post_users(request: Request) -> Response:
        async def handle(items: list[Any]) -> dict[str, Any]:
            users: list[UserRecord] = _parse_all(items, parse_user)
            await run_in_threadpool(lambda: store.upsert_users(users, now=clock.now()))
            invalid = sum(1 for user in users if user.phone_valid is False)
            return {"accepted": len(users), "invalid_phones": invalid}

        return await guarded(request, handle)

    async def _notify(events: list[EventRecord]) -> None:
        if on_events is None:
            return
        try:
            result = on_events(events)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            log.error("live event hook failed: %s", redact(f"{type(exc).__name__}: {exc}"))

    return [
        Route(f"{prefix}/events", post_events, methods=["POST"]),
        Route(f"{prefix}/users", post_users, methods=["POST"]),
    ]
