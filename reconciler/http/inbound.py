"""Inbound replies: /inbound/{provider name}, each provider's "message received" webhook.

Verified like receipts (reconciler.http.receipts): Twilio's X-Twilio-Signature over the public URL,
Vonage's `sig` when the provider has a signatureSecret, else the per-provider `?token=` that
`herald receipt-urls` prints. The reply is handed to reconciler.consent: STOP family → opt out,
START family → opt in, HELP → the configured help text, each answered through the same provider.

Fields read per provider (as each posts them):
- Twilio: From, To, Body, MessageSid; `OptOutType` (Advanced Opt-Out: STOP/START/HELP) wins when set.
- Vonage: msisdn, to, text, messageId (GET query or POST form/JSON).
- Exotel: From, To, Body, SmsSid.  MSG91 and Netcore: sender/mobile/number, message/text/content.
- Generic HTTP: Settings.spec.consent.inboundFromFields / inboundTextFields.
Forged → 403, malformed → 400, unknown provider → 404, store down → 503; never 500.
`POST /v1/consent` (admin bearer token) records a consent change from another system (source "api").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from .. import consent
from ..models.provider import ExotelSpec, GenericHttpSpec, Msg91Spec, NetcoreSpec, TwilioSpec, VonageSpec
from ..secrets import SecretError, redact
from .proxies import PublicUrl
from .receipts import (
    Forbidden,
    Malformed,
    _check_token,
    _check_vonage_signature,
    _Context,
    _first,
    _params,
    check_twilio,
)
from .security import BodyIncomplete, BodyTooLarge, bearer_token_ok, read_limited_body, unauthorized

if TYPE_CHECKING:
    from ..loading import DesiredState
    from ..providers.group import GroupRouter
    from ..runtime import Runtime

LOG = logging.getLogger("herald.inbound")
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
WORD_FROM = ("sender", "mobile", "number", "msisdn", "from")
WORD_TEXT = ("message", "text", "content", "body", "keyword")
MAX_CONSENT_BODY = 16_384
NATIONAL_REGION = {ExotelSpec: "IN", Msg91Spec: "IN", NetcoreSpec: "IN"}  # numbers posted with a trunk 0


async def parse_inbound(ctx: _Context, request: Request, state: DesiredState) -> consent.InboundMessage:
    """Verify the callback and read sender, text, recipient and message id (Forbidden / Malformed)."""
    spec = ctx.provider.spec
    params, raw = await _params(request)
    if isinstance(spec, TwilioSpec):
        check_twilio(ctx, request, raw)
        sender, text = params.get("From"), params.get("Body")
        opt_out_type = (params.get("OptOutType") or "").strip()
        text = opt_out_type or text
        recipient, message_id = params.get("To"), params.get("MessageSid") or params.get("SmsSid")
    elif isinstance(spec, VonageSpec):
        if spec.signatureSecret is not None:
            _check_vonage_signature(ctx, consent_secret(ctx), params)
        else:
            _check_token(ctx.provider, params, ctx.environ)
        sender, text, recipient, message_id = (params.get("msisdn"), params.get("text"), params.get("to"),
                                               params.get("messageId"))
    else:
        _check_token(ctx.provider, params, ctx.environ)
        settings = consent.settings_of(state)
        from_fields = tuple(settings.inboundFromFields) if isinstance(spec, GenericHttpSpec) else WORD_FROM
        text_fields = tuple(settings.inboundTextFields) if isinstance(spec, GenericHttpSpec) else WORD_TEXT
        sender, text = _first(params, *from_fields), _first(params, *text_fields)
        recipient = _first(params, "to", "recipient", "shortcode", "longcode")
        message_id = _first(params, "SmsSid", "messageId", "message_id", "id", "requestId")
    phone = consent.normalize_phone(sender, NATIONAL_REGION.get(type(spec)))
    if phone is None:
        raise Malformed("the sender's number is missing or not a phone number")
    if text is None:
        raise Malformed("the message text is missing")
    return consent.InboundMessage(ctx.provider.name, phone, text, recipient, message_id)


def consent_secret(ctx: _Context) -> str:
    from ..secrets import resolve_secret

    spec = ctx.provider.spec
    assert isinstance(spec, VonageSpec) and spec.signatureSecret is not None
    return resolve_secret(spec.signatureSecret, ctx.environ)


def inbound_routes(state: DesiredState, rt: Runtime, *, router: Callable[[], Awaitable[GroupRouter]] | None = None,
                   public: PublicUrl | None = None, environ: dict[str, str] | None = None,
                   prefix: str = "/inbound") -> list[Route]:
    """{prefix}/{provider name} for every provider of `state` (GET and POST), and POST /v1/consent."""
    where = public or PublicUrl()

    async def endpoint(request: Request) -> Response:
        name = request.path_params["provider"]
        provider = state.providers.get(name)
        if provider is None:
            return PlainTextResponse("unknown provider", status_code=404)
        ctx = _Context(provider, environ, rt.clock, where)
        try:
            inbound = await parse_inbound(ctx, request, state)
        except Forbidden as exc:
            return PlainTextResponse(f"forbidden: {exc}", status_code=403)
        except (Malformed, BodyTooLarge, BodyIncomplete, ValueError, OverflowError, RecursionError) as exc:
            return PlainTextResponse(redact(f"malformed inbound message: {exc}"[:300]), status_code=400)
        except SecretError as exc:
            LOG.error("inbound messages for %s cannot be verified: %s", name, exc)
            return PlainTextResponse("inbound verification is not configured", status_code=503)
        try:
            outcome = await consent.handle_inbound(rt, state, await router() if router else None, inbound)
        except Exception as exc:  # the stores are down: the provider retries later
            LOG.error("inbound message for %s not handled: %s", name, redact(f"{type(exc).__name__}: {exc}"))
            return PlainTextResponse("temporarily unavailable", status_code=503)
        LOG.info("inbound %s from %s: %s", name, inbound.sender, outcome.keyword or "no keyword")
        if isinstance(provider.spec, TwilioSpec):
            return Response(EMPTY_TWIML, media_type="text/xml")
        if isinstance(provider.spec, VonageSpec):
            return Response(status_code=204)
        return PlainTextResponse("OK")

    async def consent_api(request: Request) -> Response:
        """{"phone" or "user_id", "opted_out": bool, "message"?}: recorded with source "api"."""
        if not bearer_token_ok(request, rt.config.admin_token):
            return unauthorized()
        try:
            body = json.loads(await read_limited_body(request, MAX_CONSENT_BODY))
        except (ValueError, BodyTooLarge, BodyIncomplete, RecursionError):
            return JSONResponse({"error": "body must be a JSON object"}, status_code=400)
        problem = _consent_problem(body)
        if problem:
            return JSONResponse({"error": problem}, status_code=400)
        phone = consent.normalize_phone(body.get("phone")) if body.get("phone") else None
        if body.get("phone") and phone is None:
            return JSONResponse({"error": "phone is not a phone number"}, status_code=400)
        users = [body["user_id"]] if body.get("user_id") else None
        try:
            change = await asyncio.to_thread(consent.record_change, rt, phone=phone, opted_out=body["opted_out"],
                                             source="api", message=body.get("message"), user_ids=users)
        except Exception as exc:
            LOG.error("consent change not recorded: %s", redact(f"{type(exc).__name__}: {exc}"))
            return JSONResponse({"error": "temporarily unavailable"}, status_code=503)
        return JSONResponse({"status": "recorded", **change.details(), "at": change.at.isoformat()})

    return [Route(f"{prefix}/{{provider}}", endpoint, methods=["GET", "POST"]),
            Route("/v1/consent", consent_api, methods=["POST"])]


def _consent_problem(body: object) -> str | None:
    if not isinstance(body, dict):
        return "body must be a JSON object"
    if not isinstance(body.get("opted_out"), bool):
        return "opted_out (true or false) is required"
    if not any(isinstance(body.get(k), str) and body.get(k) for k in ("phone", "user_id")):
        return "phone or user_id is required"
    for key in ("phone", "user_id", "message"):
        value = body.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 320 or "\x00" in value):
            return f"{key} must be a short string"
    return None
