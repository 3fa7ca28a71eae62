"""Request guards shared by the daemon's endpoints: admin token, GitHub-style HMAC, body size."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse

MAX_BODY_BYTES = 1_048_576


class BodyTooLarge(Exception):
    pass


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
    return hmac.compare_digest(expected, signature_header.removeprefix("sha256="))


async def read_limited_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """Read the body, refusing (before buffering it all) anything larger than `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
