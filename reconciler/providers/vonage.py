"""Vonage (Nexmo) SMS API: POST https://rest.nexmo.com/sms/json.

Form fields api_key, api_secret, from, to (digits, no '+'), text, type=unicode for UCS-2 text,
client-ref (our message id, echoed in delivery receipts), status-report-req/callback. The answer is
always HTTP 200 with {"message-count", "messages": [{"status": "0", "message-id", ...}]}; a non-zero
status carries "error-text". A long text comes back as one entry per part; the first part's id is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ..encoding import analyze
from ..models.provider import VonageSpec
from ..secrets import resolve_secret
from .base import (
    ErrorScope,
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderError,
    error_for_status,
    json_body,
    national_digits,
)

REAL_BASE_URL = "https://rest.nexmo.com"
CLIENT_REF_MAX = 100
RETRYABLE_STATUSES = frozenset({"1", "5"})  # throttled, internal error
ACCOUNT_STATUSES = frozenset({"4", "8", "9", "10", "11", "14", "15", "19", "32"})


class VonageAdapter(ProviderAdapter):
    type = "vonage"

    def __init__(self, name: str, spec: VonageSpec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.api_secret = resolve_secret(spec.apiSecret, environ)
        self.url = httpx.URL(f"{self.base_url}/sms/json")

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = batch
        form = {
            "api_key": self.spec.apiKey,
            "api_secret": self.api_secret,
            "from": national_digits(self.spec.from_) if self.spec.from_.startswith("+") else self.spec.from_,
            "to": national_digits(message.to),
            "text": message.body,
            "type": "unicode" if analyze(message.body).unicode else "text",
            "client-ref": message.message_id[:CLIENT_REF_MAX],
        }
        if self.spec.statusCallbackUrl:
            form["status-report-req"] = "1"
            form["callback"] = self.spec.statusCallbackUrl
        return self.make_request("POST", self.url, self.headers_for(batch), form=form)

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        body = json_body(response)
        if response.status_code != 200:
            return [error_for_status(response, response.text[:200])]
        parts = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(parts, list) or not parts or not isinstance(parts[0], dict):
            return [None]  # HTTP 200 means accepted; the id is unreadable, so receipts cannot match
        failed = next((p for p in parts if isinstance(p, dict) and str(p.get("status")) != "0"), None)
        if failed is None:
            message_id = parts[0].get("message-id")
            return [message_id if isinstance(message_id, str) else None]
        status = str(failed.get("status"))
        text = f"vonage status {status}: {failed.get('error-text', 'unknown error')}"
        if status in RETRYABLE_STATUSES:
            return [ProviderError(text, retryable=True, status_code=200, code=status)]
        scope: ErrorScope = "provider" if status in ACCOUNT_STATUSES else "message"
        return [ProviderError(text, retryable=False, status_code=200, scope=scope, code=status)]
