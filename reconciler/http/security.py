"""Request guards shared by the daemon's endpoints: admin token, GitHub-style HMAC, body size, text
that can be stored, and an ASCII request target.

Invariant: nothing here raises on hostile input (non-ASCII headers, odd Content-Length values, clients
that disconnect mid-body); each guard answers False or raises one of the exceptions below, which the
endpoints turn into a specific 4xx.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

MAX_BODY_BYTES = 1_048_576
_DIGITS_IN_A_SANE_LENGTH = 15


class BodyTooLarge(Exception):
    pass


class BodyIncomplete(Exception):
    """The client went away before sending the whole body."""


def as_bytes(text: str) -> bytes:
    """Any str as bytes, never raising (header values are latin-1; lone surrogates pass through)."""
    return text.encode("utf-8", "surrogatepass")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored (None when it can): a NUL character (PostgreSQL text and jsonb
    refuse it) or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in text:
        return "text contains a NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "text contains a lone surrogate (invalid Unicode)"
    return None


def bearer_token_ok(request: Request, expected: str | None) -> bool:
    """Constant-time check of `Authorization: Bearer <token>`. No configured token means no access."""
    if not expected:
        return False
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected.encode())


def unauthorized() -> JSONResponse:
    return JSONResponse({"error": "missing or invalid bearer token"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})


def github_signature_ok(secret: str, body: bytes, signature_header: str | None) -> bool:
    """Verify `X-Hub-Signature-256: sha256=<hex HMAC of the raw body>` as GitHub sends it."""
    if not signature_header or not signature_header.startswith("sha256="):
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), as_bytes(signature_header.removeprefix("sha256=")))


async def read_limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the body, refusing (before buffering it all) anything larger than `limit`.

    Raises BodyTooLarge (declared or streamed size over `limit`) or BodyIncomplete (client gone)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (len(declared) > _DIGITS_IN_A_SANE_LENGTH
                                                      or int(declared) > limit):
        raise BodyTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body exceeds {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise BodyIncomplete("the client disconnected before the body was complete") from None
    return b"".join(chunks)


class RequestTargetGuard:
    """ASGI middleware: a request whose target (path or query) holds raw non-ASCII bytes gets 400.

    RFC 3986 allows only ASCII in a request target (anything else is percent-encoded); servers pass
    such bytes through, and Starlette's URL building would fail on them deep inside a handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            target = bytes(scope.get("raw_path") or b"") + bytes(scope.get("query_string") or b"")
            if not target.isascii() or not str(scope.get("path", "")).isprintable():
                response = JSONResponse({"error": "the request target must be ASCII (percent-encode the rest) "
                                                  "and free of control characters"}, status_code=400)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
