"""Twilio Programmable Messaging: POST /2010-04-01/Accounts/{AccountSid}/Messages.json.

Form-encoded To, From (or MessagingServiceSid), Body, StatusCallback; HTTP Basic AccountSid:AuthToken.
201 answers a Message resource (JSON) whose `sid` is the message id; errors are
{"code", "message", "more_info", "status"}. Twilio has no client-reference field and does not dedupe.

In-doubt lookup: GET the same Messages.json (the Message list) filtered by To (and From when the
account sends from a number), newest first, paging by next_page_uri; the message is the outbound one
with Herald's exact body created within the doubt window (padded by LOOKUP_MARGIN for clock skew).
DateSent is deliberately not used as a filter: a message still `queued`/`accepted` has no date_sent
yet ("date_sent: ... when Twilio sent the message",
https://www.twilio.com/docs/messaging/api/message-resource#message-properties), so filtering on it
would miss exactly the messages that were accepted a moment before the answer was lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from ..models.provider import TwilioSpec
from ..secrets import resolve_secret
from .base import (
    InDoubt,
    LookupPage,
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderError,
    basic_auth_header,
    error_for_status,
    json_body,
)

REAL_BASE_URL = "https://api.twilio.com"
# Error codes about the account or sender rather than the recipient: another provider may work.
ACCOUNT_ERROR_CODES = frozenset({20003, 20005, 21606, 21611, 21659, 30002})
RETRYABLE_CODES = frozenset({20429, 20500, 20503})
LOOKUP_PAGE_SIZE = 50
LOOKUP_MARGIN = timedelta(minutes=2)  # Twilio's clock vs ours, and the time a request spent in transit
# Twilio documents no visibility delay for the Message list; the resource exists once create returns,
# so this only has to cover a create still being processed when Herald gave up on its answer.
DEFAULT_LOOKUP_DELAY = 30.0


class TwilioAdapter(ProviderAdapter):
    type = "twilio"
    supports_lookup = True

    def __init__(self, name: str, spec: TwilioSpec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.url = httpx.URL(f"{self.base_url}/2010-04-01/Accounts/{spec.accountSid}/Messages.json")
        self.authorization = basic_auth_header(spec.accountSid, resolve_secret(spec.authToken, environ))
        self.lookup_delay = DEFAULT_LOOKUP_DELAY if spec.lookupDelaySeconds is None else spec.lookupDelaySeconds

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = batch
        form = {"To": message.to, "Body": message.body}
        if self.spec.messagingServiceSid:
            form["MessagingServiceSid"] = self.spec.messagingServiceSid
        if self.spec.from_:
            form["From"] = self.spec.from_
        if self.spec.statusCallbackUrl:
            form["StatusCallback"] = self.spec.statusCallbackUrl
        headers = {**self.headers_for(batch), "Authorization": self.authorization}
        return self.make_request("POST", self.url, headers, form=form)

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            sid = body.get("sid") if isinstance(body, dict) else None
            if isinstance(body, dict) and body.get("status") == "failed" and body.get("error_code"):
                return [ProviderError(f"twilio {body.get('error_code')}: {body.get('error_message')}",
                                      retryable=False, code=str(body.get("error_code")))]
            return [sid if isinstance(sid, str) else None]
        code = body.get("code") if isinstance(body, dict) else None
        detail = f"twilio {code}: {body.get('message')}" if isinstance(body, dict) and code else response.text[:200]
        error = error_for_status(response, detail, code=str(code) if code else None)
        if code in RETRYABLE_CODES:
            error.retryable, error.scope = True, "provider"
        elif code in ACCOUNT_ERROR_CODES:
            error.scope = "provider"
        return [error]

    # -- in-doubt lookup ---------------------------------------------------------------------

    def build_lookup(self, doubt: InDoubt, page: str | None) -> httpx.Request:
        headers = {"Accept": "application/json", "Authorization": self.authorization}
        if page is not None:  # next_page_uri: a path on the same host, carrying every filter
            return self.make_request("GET", httpx.URL(f"{self.base_url}{page}"), headers)
        params = {"To": doubt.message.to, "PageSize": str(LOOKUP_PAGE_SIZE)}
        if self.spec.from_:
            params["From"] = self.spec.from_
        return self.make_request("GET", self.url, headers, params=params)

    def parse_lookup(self, response: httpx.Response, doubt: InDoubt) -> LookupPage:
        body = json_body(response)
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            code = body.get("code") if isinstance(body, dict) else None
            error = error_for_status(response, f"twilio {code}: message lookup failed" if code else "lookup failed")
            error.retryable, error.ambiguous = True, False  # a read: asking again is harmless
            raise error
        earliest, latest = doubt.since - LOOKUP_MARGIN, doubt.until + LOOKUP_MARGIN
        older_only = True
        for message in body["messages"]:
            if not isinstance(message, dict):
                continue
            created = _twilio_time(message.get("date_created"))
            if created is None or created >= earliest:
                older_only = False
            if self._is_ours(message, doubt) and created is not None and earliest <= created <= latest:
                sid = message.get("sid")
                return LookupPage(sid if isinstance(sid, str) else None)
        next_page = body.get("next_page_uri")
        more = isinstance(next_page, str) and next_page and body["messages"] and not older_only
        return LookupPage(None, next_page if more else None)

    def _is_ours(self, message: dict[str, Any], doubt: InDoubt) -> bool:
        """The same recipient, sender, body and an outbound direction (a reply is 'inbound')."""
        if message.get("to") != doubt.message.to or message.get("body") != doubt.message.body:
            return False
        if not str(message.get("direction", "")).startswith("outbound"):
            return False
        if self.spec.messagingServiceSid and message.get("messaging_service_sid") not in (None, self.spec.messagingServiceSid):
            return False
        return not (self.spec.from_ and not self.spec.messagingServiceSid and message.get("from") != self.spec.from_)


def _twilio_time(value: Any) -> datetime | None:
    """Twilio's timestamps are RFC 2822 ("Mon, 16 Aug 2010 03:45:01 +0000")."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
