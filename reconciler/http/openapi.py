"""OpenAPI 3.1 description of the daemon's HTTP API, served at /openapi.json and checked in as
schemas/openapi.json (`herald schema` writes it, `herald schema --check` reports drift).

Invariants: every status an operation can answer is listed (the request-target guard's 400 and the
405 of a wrong method on every path); request bodies state the limits the handlers enforce (sizes,
item counts, key lengths), and response bodies are described as the handlers build them.
tests/test_openapi.py runs schemathesis against the live ASGI app with these promises as checks.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..audience.records import MAX_EVENT_NAME_LENGTH, MAX_ID_LENGTH
from .events import MAX_EVENT_BODY_BYTES, MAX_IDEMPOTENCY_KEY_LENGTH, MAX_ITEMS_PER_REQUEST

OPENAPI_VERSION = "3.1.0"

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERROR = {"application/json": {"schema": _ERROR}}
_TEXT = {"text/plain": {"schema": {"type": "string"}}}


def _error(description: str, content: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "content": content or _JSON_ERROR}


_BAD_TARGET = _error("The request target holds raw non-ASCII bytes or control characters, or the body is "
                     "malformed (see the error).")
_METHOD = {"description": "Method not allowed on this path.", "content": _TEXT}


def _ingest(summary: str, item: str, accepted: str) -> dict[str, Any]:
    body_schema = {"oneOf": [{"$ref": f"#/components/schemas/{item}"},
                             {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS_PER_REQUEST,
                              "items": {"$ref": f"#/components/schemas/{item}"}}]}
    return {
        "summary": summary,
        "description": f"One JSON object or a list of 1 to {MAX_ITEMS_PER_REQUEST}; at most "
                       f"{MAX_EVENT_BODY_BYTES} bytes. All or nothing: one invalid item rejects the request "
                       "with 422 and a reason per item.",
        "security": [{"bearerAuth": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body_schema}}},
        "responses": {
            "202": {"description": "Stored.", "content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{accepted}"}}}},
            "400": _BAD_TARGET,
            "401": _error("Missing or wrong bearer token."),
            "405": _METHOD,
            "413": _error(f"Body over {MAX_EVENT_BODY_BYTES} bytes or more than {MAX_ITEMS_PER_REQUEST} items."),
            "415": _error("Content-Type is not application/json."),
            "422": _error("Invalid items (or an empty list); nothing was stored."),
            "503": _error("The audience store is unavailable; retry later."),
        },
    }


def _paths() -> dict[str, Any]:
    events = _ingest("Ingest live events", "Event", "EventsAccepted")
    events["parameters"] = [{
        "name": "Idempotency-Key", "in": "header", "required": False,
        "description": "Event i of the request without an `id` gets the id `KEY:i`, so a retried request "
                       "is stored once.",
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                   "pattern": "^[\\x21-\\x7e]([\\x20-\\x7e]*[\\x21-\\x7e])?$"}}]
    return {
        "/healthz": {"get": {
            "summary": "Health of the daemon and its stores",
            "responses": {"200": {"description": "Health report.", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Health"}}}},
                "400": _BAD_TARGET, "405": _METHOD,
                "503": _error("A store is unreachable.", {"application/json": {
                    "schema": {"$ref": "#/components/schemas/StoreDown"}}})}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text exposition format 0.0.4.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          "400": _BAD_TARGET, "405": _METHOD,
                          "503": _error("The state store is unreachable.", {"application/json": {
                              "schema": {"$ref": "#/components/schemas/StoreDown"}}})}}},
        "/webhook/git": {"post": {
            "summary": "Git push webhook: sync now",
            "description": "GitHub-style push webhook; X-Hub-Signature-256 must be the HMAC-SHA256 of the "
                           "body keyed by HERALD_WEBHOOK_SECRET. The body is at most 256 KiB.",
            "parameters": [{"name": "X-Hub-Signature-256", "in": "header", "required": False,
                            "schema": {"type": "string"}, "description": "sha256=<hex HMAC of the body>"}],
            "requestBody": {"required": False, "content": {"application/json": {"schema": {}}}},
            "responses": {"202": {"description": "A sync was scheduled.", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SyncScheduled"}}}},
                "400": _BAD_TARGET,
                "403": _error("Bad signature, or no webhook secret configured."),
                "405": _METHOD,
                "413": _error("Body over 256 KiB.")}}},
        "/admin/sync": {"post": {
            "summary": "Sync with git now",
            "security": [{"bearerAuth": []}],
            "responses": {"202": {"description": "A sync was scheduled.", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/SyncScheduled"}}}},
                "400": _BAD_TARGET, "401": _error("Missing or wrong bearer token."), "405": _METHOD}}},
        "/v1/audience/snapshot": {"post": {
            "summary": "Snapshot the embedded audience store",
            "description": "A consistent copy of the DuckDB audience store, for read commands in other "
                           "processes; 404 when the store can be read directly (PostgreSQL).",
            "security": [{"bearerAuth": []}],
            "responses": {"200": {"description": "Written.", "content": {"application/json": {"schema": {
                "type": "object", "required": ["path", "at"], "properties": {
                    "path": {"type": "string"}, "at": {"type": "string", "format": "date-time"}}}}}},
                "400": _BAD_TARGET, "401": _error("Missing or wrong bearer token."),
                "404": _error("The audience store can be read directly."), "405": _METHOD,
                "503": _error("The snapshot failed.")}}},
        "/v1/events": {"post": events},
        "/v1/users": {"post": _ingest("Create or update users", "User", "UsersAccepted")},
        "/receipts/{provider}": {
            "parameters": [_PROVIDER],
            "get": _receipt("Delivery receipt (query parameters)"),
            "post": {**_receipt("Delivery receipt (form or JSON body)"), "requestBody": _CALLBACK_BODY},
        },
        "/inbound/{provider}": {
            "parameters": [_PROVIDER],
            "get": _inbound("Inbound reply (query parameters)"),
            "post": {**_inbound("Inbound reply (form or JSON body)"), "requestBody": _CALLBACK_BODY},
        },
        "/v1/consent": {"post": _consent()},
        "/openapi.json": {"get": {
            "summary": "This description",
            "responses": {"200": {"description": "OpenAPI 3.1 document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}},
                          "400": _BAD_TARGET, "405": _METHOD}}},
    }


_PROVIDER = {"name": "provider", "in": "path", "required": True, "description": "Name of a Provider document.",
             "schema": {"type": "string"}}
_CALLBACK_BODY = {"required": False, "content": {"application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                                                  "application/json": {"schema": {}}}}
_TOKEN = {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
          "description": "Per-provider token (providers that do not sign; `herald receipt-urls`)."}


def _inbound(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": "A provider's message-received webhook: STOP/START/HELP keywords change consent and "
                       "are answered through the same provider. Verified like receipts.",
        "parameters": [_TOKEN],
        "responses": {
            "200": {"description": "Handled: empty TwiML for Twilio, OK for others.",
                    "content": {"text/xml": {"schema": {"type": "string"}}, **_TEXT}},
            "204": {"description": "Handled (Vonage)."},
            "400": {"description": "Malformed message or request target.", "content": {**_TEXT, **_JSON_ERROR}},
            "403": {"description": "Forged or missing signature or token.", "content": _TEXT},
            "404": {"description": "No provider of that name.", "content": _TEXT},
            "405": _METHOD,
            "503": {"description": "Not handled (store down) or verification not configured; the provider "
                                   "retries.", "content": _TEXT},
        },
    }


def _consent() -> dict[str, Any]:
    short = {"type": "string", "minLength": 1, "maxLength": 320}
    body = {"type": "object", "required": ["opted_out"], "properties": {
        "phone": short, "user_id": short, "message": {"type": "string", "maxLength": 320},
        "opted_out": {"type": "boolean"}},
        "anyOf": [{"required": ["phone"]}, {"required": ["user_id"]}]}
    recorded = {"type": "object", "required": ["status", "opted_out", "source", "at"], "properties": {
        "status": {"const": "recorded"}, "phone": {"type": ["string", "null"]},
        "users": {"type": "array", "items": {"type": "string"}}, "opted_out": {"type": "boolean"},
        "source": {"type": "string"}, "message": {"type": ["string", "null"]},
        "provider": {"type": ["string", "null"]}, "at": {"type": "string", "format": "date-time"}}}
    return {
        "summary": "Record a consent change from another system",
        "security": [{"bearerAuth": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "200": {"description": "Recorded (source api).", "content": {"application/json": {"schema": recorded}}},
            "400": _error("Not a JSON object, a missing or bad field, or a phone that is not a number."),
            "401": _error("Missing or wrong bearer token."),
            "405": _METHOD,
            "503": _error("The store is unavailable; retry later."),
        },
    }


def _receipt(summary: str) -> dict[str, Any]:
    return {
        "summary": summary,
        "description": "The provider's status callback. Twilio and Vonage (with a signatureSecret) sign it; "
                       "other providers call a URL with `?token=` (`herald receipt-urls`).",
        "parameters": [_TOKEN],
        "responses": {
            "200": {"description": "Recorded (or not ours): the provider's usual success answer.", "content": _TEXT},
            "204": {"description": "Recorded (providers that expect no body)."},
            "400": {"description": "Malformed receipt or request target.", "content": {**_TEXT, **_JSON_ERROR}},
            "403": {"description": "Forged or missing signature or token.", "content": _TEXT},
            "404": {"description": "No provider of that name.", "content": _TEXT},
            "405": _METHOD,
            "503": {"description": "Receipt not recorded (store down) or verification not configured; "
                                   "the provider retries.", "content": _TEXT},
        },
    }


def _components() -> dict[str, Any]:
    identifier = {"type": ["string", "integer"], "description": f"1 to {MAX_ID_LENGTH} characters."}
    timestamp = {"type": ["string", "number"], "description": "ISO 8601 (no offset: UTC) or epoch seconds, "
                                                              "1970-01-01 to 2200-01-01."}
    return {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                           "description": "HERALD_ADMIN_TOKEN"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {
                "error": {"type": "string"},
                "errors": {"type": "array", "items": {"type": "object", "required": ["index", "message"],
                                                      "properties": {"index": {"type": "integer", "minimum": 0},
                                                                     "message": {"type": "string"}}}}}},
            "StoreDown": {"type": "object", "required": ["status", "error"], "properties": {
                "status": {"const": "error"}, "error": {"type": "string"}}},
            "SyncScheduled": {"type": "object", "required": ["status"], "properties": {
                "status": {"const": "sync scheduled"}}},
            "Health": {"type": "object", "required": ["status"], "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded"]},
                "problems": {"type": "array", "items": {"type": "object"},
                             "description": "What makes the daemon degraded (unit, what, since)."},
                "clock_skew_seconds": {"type": ["number", "null"]},
                "applied_version": {"type": "integer"},
                "last_applied_commit": {"type": ["string", "null"]},
                "last_error": {"type": ["object", "null"]}}},
            "Event": {"type": "object", "required": ["user_id", "name"], "properties": {
                "user_id": identifier,
                "name": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_NAME_LENGTH},
                "ts": timestamp,
                "id": {**identifier, "description": "Client event id: stored once per (user_id, name, id)."},
                "properties": {"type": "object"}},
                "description": "Other top-level keys become event properties."},
            "User": {"type": "object", "required": ["id"], "properties": {
                "id": identifier,
                "phone": {"type": ["string", "integer"], "description": "Normalized to E.164; an invalid "
                                                                        "number is kept but never selected."},
                "timezone": {"type": "string", "description": "IANA zone name."},
                "country": {"type": "string", "description": "ISO 3166 alpha-2 code."},
                "created_at": timestamp,
                "opted_out": {"type": ["boolean", "string"]},
                "subscribed": {"type": ["boolean", "string"]},
                "properties": {"type": "object"}},
                "description": "Other top-level keys become user properties; a null property value removes it."},
            "EventsAccepted": {"type": "object", "required": ["accepted"], "properties": {
                "accepted": {"type": "integer", "minimum": 1},
                "duplicates": {"type": "array", "items": {"type": "integer", "minimum": 0},
                               "description": "Indexes of events already stored (same client id)."}}},
            "UsersAccepted": {"type": "object", "required": ["accepted", "invalid_phones"], "properties": {
                "accepted": {"type": "integer", "minimum": 1},
                "invalid_phones": {"type": "integer", "minimum": 0}}},
        },
    }


def openapi_document() -> dict[str, Any]:
    """The whole description (a fresh dict each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "Herald daemon", "version": "1",
                 "description": "HTTP API of `herald run`: health, metrics, git webhook, admin sync, live "
                                "ingest of users and events, consent, and the providers' delivery receipts "
                                "and inbound replies. The dashboard (/dashboard) is HTML and not described."},
        "paths": _paths(),
        "components": _components(),
    }


async def openapi_endpoint(request: Request) -> Response:
    """GET /openapi.json: the same document `herald schema` checks in as schemas/openapi.json."""
    return JSONResponse(openapi_document())
