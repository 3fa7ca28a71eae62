"""Vonage (Nexmo) SMS API: POST https://rest.nexmo.com/sms/json.

Form fields api_key, api_secret, from, to (digits, no '+'), text, type=unicode for UCS-2 text,
client-ref (our message id, echoed in delivery receipts), status-report-req/callback. The answer is
always HTTP 200 with {"message-count", "messages": [{"status": "0", "message-id", ...}]}; a non-zero
status carries "error-text". A long text comes back as one entry per part; the first part's id is kept.

In-doubt lookup (opt-in, `reportsLookup: true`: the Reports API is a separately priced product):
GET https://api.nexmo.com/v2/reports/records?account_id=…&product=SMS&direction=outbound&date_start=…
&date_end=…&include_message=true (the synchronous "load records" call; date range at most 24 h,
https://developer.vonage.com/en/reports/code-snippets/load-records-sync-dates), Basic api_key:api_secret.
The message is the record whose `client_ref` is Herald's message id (sent as `client-ref`); records
without one match on `to` + `message_body`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from ..encoding import analyze
from ..models.provider import VonageSpec
from ..secrets import resolve_secret
from .base import (
    ErrorScope,
    InDoubt,
    LookupPage,
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderError,
    basic_auth_header,
    error_for_status,
    json_body,
    national_digits,
)

REAL_BASE_URL = "https://rest.nexmo.com"
REPORTS_BASE_URL = "https://api.nexmo.com"  # the Reports API lives on another host than the SMS API
LOOKUP_MARGIN = timedelta(minutes=2)
MAX_SYNC_WINDOW = timedelta(hours=24)  # the synchronous records call refuses longer date ranges
# Vonage documents no delay before a record shows in the Reports API; a minute is a conservative guess
# (https://developer.vonage.com/en/reports/overview; the synchronous records call suits small, frequent reads).
DEFAULT_LOOKUP_DELAY = 60.0
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
        reports = REPORTS_BASE_URL if self.base_url == REAL_BASE_URL else self.base_url
        self.records_url = httpx.URL(f"{reports}/v2/reports/records")
        self.supports_lookup = spec.reportsLookup  # type: ignore[misc]  # per account: an opt-in product
        self.lookup_delay = DEFAULT_LOOKUP_DELAY if spec.lookupDelaySeconds is None else spec.lookupDelaySeconds

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

    # -- in-doubt lookup (Reports API) -------------------------------------------------------

    def build_lookup(self, doubt: InDoubt, page: str | None) -> httpx.Request:
        headers = {"Accept": "application/json",
                   "Authorization": basic_auth_header(self.spec.apiKey, self.api_secret)}
        if page is not None:
            return self.make_request("GET", httpx.URL(page), headers)
        start = doubt.since - LOOKUP_MARGIN
        end = min(doubt.until + LOOKUP_MARGIN, start + MAX_SYNC_WINDOW)
        params = {"account_id": self.spec.apiKey, "product": "SMS", "direction": "outbound",
                  "date_start": _iso(start), "date_end": _iso(end), "include_message": "true"}
        return self.make_request("GET", self.records_url, headers, params=params)

    def parse_lookup(self, response: httpx.Response, doubt: InDoubt) -> LookupPage:
        body = json_body(response)
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("records"), list):
            error = error_for_status(response, "vonage reports lookup failed")
            error.retryable, error.ambiguous = True, False  # a read: asking again is harmless
            raise error
        ref = doubt.message.message_id[:CLIENT_REF_MAX]
        for record in body["records"]:
            if isinstance(record, dict) and _is_ours(record, doubt, ref):
                message_id = record.get("message_id")
                return LookupPage(message_id if isinstance(message_id, str) else None)
        return LookupPage(None, _next_href(body))


def _is_ours(record: dict[str, Any], doubt: InDoubt, ref: str) -> bool:
    if record.get("client_ref"):
        return bool(record.get("client_ref") == ref)
    return (str(record.get("to", "")).lstrip("+") == national_digits(doubt.message.to)
            and record.get("message_body") == doubt.message.body)


def _next_href(body: dict[str, Any]) -> str | None:
    links = body.get("_links")
    nxt = links.get("next") if isinstance(links, dict) else None
    href = nxt.get("href") if isinstance(nxt, dict) else None
    return href if isinstance(href, str) and href else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
