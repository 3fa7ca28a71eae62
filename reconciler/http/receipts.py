"""Delivery receipts: one endpoint per provider, /receipts/{provider name}, accepting its status callback.

Signed callbacks are verified: Twilio's X-Twilio-Signature (base64 HMAC-SHA1 of the full URL plus the
sorted POST parameters, keyed by the auth token) and Vonage's `sig` (when the provider has a
signatureSecret). Providers that do not sign (MSG91, Exotel, Netcore, generic HTTP, Vonage without a
signature secret) must call a URL carrying `?token=…`, the per-provider token from
`reconciler.providers.registry.receipt_token` (printed by `herald receipt-urls --base-url …`).

Forged or missing signatures/tokens get 403, malformed callbacks 400 (bad JSON at any nesting depth,
text with NUL or lone surrogates, a body cut short or over 256 KiB), an unknown provider 404, and a
sink failure 503 (so the provider retries later); never 500. A receipt for a message the sink does not
know still gets the provider's usual success answer.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, Protocol
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from ..clock import Clock
from ..loading import DesiredState
from ..models import Provider
from ..models.provider import ExotelSpec, GenericHttpSpec, Msg91Spec, NetcoreSpec, TwilioSpec, VonageSpec
from ..providers.registry import receipt_token
from ..secrets import SecretError, redact, resolve_secret
from .proxies import PublicUrl
from .security import BodyIncomplete, BodyTooLarge, read_limited_body, text_problem

log = logging.getLogger(__name__)

ReceiptStatus = Literal["delivered", "failed", "sent", "undelivered"]
MAX_RECEIPT_BYTES = 262_144
VONAGE_MAX_SKEW_SECONDS = 300


class ReceiptSink(Protocol):
    def record_receipt(self, provider: str, provider_message_id: str, status: ReceiptStatus,
                       error_code: str | None, raw: Mapping[str, str]) -> bool | Awaitable[bool]:
        """Apply a receipt; False when no message has this provider id (still acknowledged)."""
        ...


@dataclass(frozen=True)
class Receipt:
    provider_message_id: str
    status: ReceiptStatus
    error_code: str | None
    raw: Mapping[str, str]


class Malformed(Exception):
    pass


class Forbidden(Exception):
    pass


# -- status vocabularies -------------------------------------------------------------------

TWILIO_STATUS: dict[str, ReceiptStatus] = {
    "sent": "sent", "delivered": "delivered", "read": "delivered", "undelivered": "undelivered",
    "failed": "failed", "canceled": "failed",
}
VONAGE_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered", "expired": "undelivered", "failed": "failed", "rejected": "failed",
    "accepted": "sent", "buffered": "sent",
}
EXOTEL_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered", "failed": "failed", "failed-dnd": "failed", "undelivered": "undelivered",
    "expired": "undelivered", "sent": "sent", "submitted": "sent",
}
WORD_STATUS: dict[str, ReceiptStatus] = {
    "delivered": "delivered", "delivrd": "delivered", "success": "delivered",
    "failed": "failed", "rejectd": "failed", "rejected": "failed", "ndnc": "failed", "blocked": "failed",
    "undeliv": "undelivered", "undelivered": "undelivered", "expired": "undelivered",
    "sent": "sent", "submitted": "sent", "accepted": "sent", "pending": "sent",
}
MSG91_CODES: dict[str, ReceiptStatus] = {"1": "delivered", "2": "failed", "9": "failed", "16": "failed",
                                        "17": "failed", "25": "failed", "26": "failed"}


def _word_status(value: str) -> ReceiptStatus | None:
    return WORD_STATUS.get(value.strip().lower())


def _first(params: Mapping[str, str], *names: str) -> str | None:
    lowered = {k.lower(): v for k, v in params.items()}
    for name in names:
        value = lowered.get(name.lower())
        if value not in (None, ""):
            return str(value)
    return None


def _without_token(params: Mapping[str, str]) -> dict[str, str]:
    """The callback's fields as stored with the receipt: our ?token= is not the provider's data."""
    return {k: v for k, v in params.items() if k != "token"}


def _error_code(value: str | None) -> str | None:
    return None if value in (None, "", "0", "000", "null", "None") else value


# -- request parsing -----------------------------------------------------------------------

async def _params(request: Request) -> tuple[dict[str, str], bytes]:
    """Query string merged with a form or JSON object body; the raw body is kept for JSON lists."""
    params = dict(request.query_params)
    raw = await read_limited_body(request, MAX_RECEIPT_BYTES)
    if not raw:
        return params, raw
    content_type = request.headers.get("content-type", "")
    if "json" in content_type:
        try:
            data = json.loads(raw)
        except ValueError:
            raise Malformed("body is not JSON") from None
        if isinstance(data, dict):
            params.update({str(k): "" if v is None else str(v) for k, v in data.items()})
        return _storable(params), raw
    try:
        params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
    except UnicodeDecodeError:
        raise Malformed("body is not UTF-8") from None
    return _storable(params), raw


def _storable(params: dict[str, str]) -> dict[str, str]:
    """The fields, if every key and value can be stored (no NUL, no lone surrogate); else Malformed."""
    for text in (*params, *params.values()):
        problem = text_problem(text)
        if problem:
            raise Malformed(problem)
    return params


def _form_multi(request: Request, raw: bytes) -> dict[str, list[str]]:
    """The POST form as name → every value (Twilio signs repeated names value by value)."""
    if not raw or "json" in request.headers.get("content-type", ""):
        return {}
    found: dict[str, list[str]] = {}
    for key, value in parse_qsl(raw.decode("utf-8"), keep_blank_values=True):
        found.setdefault(key, []).append(value)
    return found


# -- signatures ----------------------------------------------------------------------------

TWILIO_ALGORITHMS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def twilio_signature(auth_token: str, url: str, post_params: Mapping[str, str | Sequence[str]],
                     algorithm: str = "HMAC_SHA1") -> str:
    """Twilio's X-Twilio-Signature: base64 HMAC of the URL followed by each POST name and value, names
    sorted, each name's distinct values sorted (as the official RequestValidator computes it)."""
    signed = url
    for key in sorted(post_params):
        value = post_params[key]
        for item in sorted(set([value] if isinstance(value, str) else value)):
            signed += f"{key}{item}"
    digest = hmac.new(auth_token.encode(), signed.encode(), TWILIO_ALGORITHMS[algorithm.upper()]).digest()
    return base64.b64encode(digest).decode()


def twilio_url_variants(url: str) -> list[str]:
    """The URL as called, without its port and with the scheme's default port (RequestValidator checks
    both, since Twilio's signing is inconsistent about ':443')."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = f"{userinfo}@" if userinfo else ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    without = urlunsplit((parts.scheme, f"{prefix}{shown}", parts.path, parts.query, parts.fragment))
    with_port = urlunsplit((parts.scheme, f"{prefix}{shown}:{port}", parts.path, parts.query, parts.fragment))
    return list(dict.fromkeys([without, with_port]))


def twilio_algorithm(settings_header: str | None) -> str:
    """The algorithm named by X-Twilio-Webhooks-Signature-Settings (key=…,algorithm=…); HMAC_SHA1 without."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def twilio_request_valid(key: str, urls: Sequence[str], params: Mapping[str, Sequence[str]], raw: bytes,
                         signature: str, algorithm: str) -> bool:
    """True when `signature` matches one URL variant, as the official RequestValidator decides: form
    parameters signed; a JSON body signed through the URL's bodySHA256 (hex SHA-256 of the body)."""
    if algorithm not in TWILIO_ALGORITHMS:
        return False
    for url in urls:
        query = parse_qs(urlsplit(url).query)
        signed_params = params
        if "bodySHA256" in query:
            if not hmac.compare_digest(hashlib.sha256(raw).hexdigest().encode(), query["bodySHA256"][0].encode()):
                continue
            signed_params = {}
        for variant in twilio_url_variants(url):
            expected = twilio_signature(key, variant, signed_params, algorithm)
            if hmac.compare_digest(signature.encode(), expected.encode()):
                return True
    return False


def vonage_signed_string(params: Mapping[str, str]) -> str:
    return "".join(f"&{key}={str(params[key]).replace('&', '_').replace('=', '_')}"
                   for key in sorted(params) if key != "sig")


def vonage_signatures(secret: str, params: Mapping[str, str]) -> list[str]:
    """The signature under each method the Vonage dashboard offers (MD5 hash, MD5/SHA1/SHA256/SHA512 HMAC)."""
    signed = vonage_signed_string(params)
    found = [hashlib.md5((signed + secret).encode()).hexdigest()]
    for algorithm in (hashlib.md5, hashlib.sha1, hashlib.sha256, hashlib.sha512):
        found.append(hmac.new(secret.encode(), signed.encode(), algorithm).hexdigest())
    return found


def _check_token(provider: Provider, params: Mapping[str, str], environ: dict[str, str] | None) -> None:
    expected = receipt_token(provider, environ)
    given = params.get("token", "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Forbidden("missing or wrong token")


# -- per-provider parsing ------------------------------------------------------------------

@dataclass
class _Context:
    provider: Provider
    environ: dict[str, str] | None
    clock: Clock | None
    public: PublicUrl


def check_twilio(ctx: _Context, request: Request, raw: bytes) -> None:
    """Forbidden unless X-Twilio-Signature matches one URL the request may have been sent to (public
    URL, trusted forwarded URL; each with and without its port) under the algorithm of
    X-Twilio-Webhooks-Signature-Settings, keyed by the webhook signing key when set, else the auth token."""
    spec = ctx.provider.spec
    assert isinstance(spec, TwilioSpec)
    signature = request.headers.get("x-twilio-signature")
    if not signature:
        raise Forbidden("X-Twilio-Signature missing")
    settings_header = request.headers.get("x-twilio-webhooks-signature-settings")
    algorithm = twilio_algorithm(settings_header)
    keys = [resolve_secret(spec.authToken, ctx.environ)]
    if spec.webhookSigningKey is not None and settings_header:
        keys.insert(0, resolve_secret(spec.webhookSigningKey, ctx.environ))
    urls = ctx.public.candidates(request)
    params = _form_multi(request, raw)
    if not any(twilio_request_valid(key, urls, params, raw, signature, algorithm) for key in keys):
        raise Forbidden("X-Twilio-Signature does not match")


async def _twilio(ctx: _Context, request: Request) -> list[Receipt]:
    params, raw = await _params(request)
    check_twilio(ctx, request, raw)
    sid = _first(params, "MessageSid", "SmsSid")
    status_word = _first(params, "MessageStatus", "SmsStatus")
    if not sid or not status_word:
        raise Malformed("MessageSid and MessageStatus are required")
    status = TWILIO_STATUS.get(status_word.lower())
    return [Receipt(sid, status, _error_code(params.get("ErrorCode")), params)] if status else []


async def _vonage(ctx: _Context, request: Request) -> list[Receipt]:
    spec = ctx.provider.spec
    assert isinstance(spec, VonageSpec)
    params, _ = await _params(request)
    if spec.signatureSecret is not None:
        _check_vonage_signature(ctx, resolve_secret(spec.signatureSecret, ctx.environ), params)
    else:
        _check_token(ctx.provider, params, ctx.environ)
    message_id, status_word = params.get("messageId"), params.get("status")
    if not message_id or not status_word:
        raise Malformed("messageId and status are required")
    status = VONAGE_STATUS.get(status_word.lower())
    shown = _without_token(params)
    return [Receipt(message_id, status, _error_code(params.get("err-code")), shown)] if status else []


def _check_vonage_signature(ctx: _Context, secret: str, params: Mapping[str, str]) -> None:
    sig = params.get("sig", "")
    if not sig:
        raise Forbidden("sig missing")
    signed = {k: v for k, v in params.items() if k not in ("sig", "token")}
    if not any(hmac.compare_digest(sig.lower().encode(), s.encode()) for s in vonage_signatures(secret, signed)):
        raise Forbidden("sig does not match")
    stamp = params.get("timestamp")
    if ctx.clock is not None and stamp and stamp.isascii() and stamp.isdigit():
        if len(stamp) > 12:  # beyond year 33658: no real clock
            raise Forbidden("signed timestamp out of range")
        skew = abs(ctx.clock.now() - datetime.fromtimestamp(int(stamp), UTC)).total_seconds()
        if skew > VONAGE_MAX_SKEW_SECONDS:
            raise Forbidden("signed timestamp too old (replay?)")


def _msg91_status(report: Mapping[str, object]) -> ReceiptStatus:
    code = str(report.get("status", ""))
    if code in MSG91_CODES:
        return MSG91_CODES[code]
    return _word_status(str(report.get("desc", ""))) or "sent"


def _msg91_reports(document: object) -> list[tuple[str, Mapping[str, object]]]:
    """(request id, report) pairs from the v2 (data=[{requestId, report:[…]}]) or v3 (flat) shape."""
    items = document if isinstance(document, list) else [document]
    pairs: list[tuple[str, Mapping[str, object]]] = []
    for item in items:
        if not isinstance(item, dict):
            raise Malformed("report entries must be objects")
        request_id = str(item.get("requestId") or item.get("request_id") or "")
        reports = item.get("report")
        for report in reports if isinstance(reports, list) else [item]:
            if isinstance(report, dict):
                pairs.append((request_id, report))
    return pairs


async def _msg91(ctx: _Context, request: Request) -> list[Receipt]:
    params, raw = await _params(request)
    _check_token(ctx.provider, params, ctx.environ)
    if "data" in params:
        try:
            document: object = json.loads(params["data"])
        except ValueError:
            raise Malformed("data is not JSON") from None
    elif raw and "json" in request.headers.get("content-type", ""):
        document = json.loads(raw)
    else:
        document = _without_token(params)
    receipts = []
    for request_id, report in _msg91_reports(document):
        if not request_id:
            raise Malformed("requestId missing")
        _storable({"requestId": request_id})
        raw_fields = _storable({str(k): str(v) for k, v in report.items()})
        status = _msg91_status(report)
        error = _error_code(str(report.get("failedReason") or "")) if status != "delivered" else None
        receipts.append(Receipt(request_id, status, error, raw_fields))
    if not receipts:
        raise Malformed("no report in callback")
    return receipts


async def _exotel(ctx: _Context, request: Request) -> list[Receipt]:
    params, _ = await _params(request)
    _check_token(ctx.provider, params, ctx.environ)
    sid, status_word = params.get("SmsSid"), params.get("Status")
    if not sid or not status_word:
        raise Malformed("SmsSid and Status are required")
    status = EXOTEL_STATUS.get(status_word.lower())
    shown = _without_token(params)
    error = _error_code(params.get("DetailedStatusCode")) if status in ("failed", "undelivered") else None
    return [Receipt(sid, status, error, shown)] if status else []


async def _by_words(ctx: _Context, request: Request) -> list[Receipt]:
    """Netcore and generic HTTP providers: id and status under the usual names, any case."""
    params, _ = await _params(request)
    _check_token(ctx.provider, params, ctx.environ)
    message_id = _first(params, "tid", "message_id", "messageId", "msgid", "id", "reference", "reqid")
    status_word = _first(params, "status", "dlr_status", "state")
    if not message_id or not status_word:
        raise Malformed("a message id (tid/message_id/id) and a status are required")
    status = _word_status(status_word)
    if status is None:
        raise Malformed(f"unknown status '{status_word[:40]}'")
    error = _error_code(_first(params, "error_code", "errcode", "err-code", "reason", "code"))
    shown = _without_token(params)
    return [Receipt(message_id, status, error if status != "delivered" else None, shown)]


PARSERS: dict[type, Callable[[_Context, Request], Awaitable[list[Receipt]]]] = {
    TwilioSpec: _twilio, VonageSpec: _vonage, Msg91Spec: _msg91, ExotelSpec: _exotel,
    NetcoreSpec: _by_words, GenericHttpSpec: _by_words,
}
NO_CONTENT_TYPES = (TwilioSpec, VonageSpec)


# -- routes --------------------------------------------------------------------------------

async def _record(sink: ReceiptSink, provider: str, receipt: Receipt) -> bool:
    result = sink.record_receipt(provider, receipt.provider_message_id, receipt.status, receipt.error_code,
                                 receipt.raw)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


def receipt_routes(state: DesiredState, sink: ReceiptSink, *, clock: Clock | None = None,
                   public_base_url: str | None = None, environ: dict[str, str] | None = None,
                   prefix: str = "/receipts", public: PublicUrl | None = None,
                   on_receipt: Callable[[str, Receipt], Awaitable[None]] | None = None) -> list[Route]:
    """Routes for every provider of `state` at {prefix}/{provider name} (GET and POST).

    `public` (or just `public_base_url`) is where the providers call this daemon: behind a proxy the
    request URL differs, and Twilio signs the URL it called. `on_receipt` sees each recorded receipt
    (consent: an opt-out error code in a receipt opts the recipient out)."""
    where = public or PublicUrl(base=public_base_url.rstrip("/") if public_base_url else None)

    async def endpoint(request: Request) -> Response:
        name = request.path_params["provider"]
        provider = state.providers.get(name)
        if provider is None:
            return PlainTextResponse("unknown provider", status_code=404)
        ctx = _Context(provider, environ, clock, where)
        try:
            receipts = await PARSERS[type(provider.spec)](ctx, request)
        except Forbidden as exc:
            return PlainTextResponse(f"forbidden: {exc}", status_code=403)
        except (Malformed, BodyTooLarge, BodyIncomplete, ValueError, OverflowError) as exc:
            return PlainTextResponse(redact(f"malformed receipt: {exc}"), status_code=400)
        except RecursionError:  # JSON nested deeper than the parser (or str()) can follow
            return PlainTextResponse("malformed receipt: nested too deeply", status_code=400)
        except SecretError as exc:
            log.error("receipts for %s cannot be verified: %s", name, exc)
            return PlainTextResponse("receipt verification is not configured", status_code=503)
        try:
            for receipt in receipts:
                await _record(sink, name, receipt)
                if on_receipt is not None:
                    await on_receipt(name, receipt)
        except Exception as exc:  # the sink's store is down: ask the provider to retry later
            log.error("receipt for %s not recorded: %s", name, redact(str(exc)))
            return PlainTextResponse("temporarily unavailable", status_code=503)
        if isinstance(provider.spec, NO_CONTENT_TYPES):
            return Response(status_code=204)
        return PlainTextResponse("OK")

    return [Route(f"{prefix}/{{provider}}", endpoint, methods=["GET", "POST"])]
