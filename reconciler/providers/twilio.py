"""Twilio Programmable Messaging: POST /2010-04-01/Accounts/{AccountSid}/Messages.json.

Form-encoded To, From (or MessagingServiceSid), Body, StatusCallback; HTTP Basic AccountSid:AuthToken.
201 answers a Message resource (JSON) whose `sid` is the message id; errors are
{"code", "message", "more_info", "status"}. Twilio has no client-reference field and does not dedupe.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ..models.provider import TwilioSpec
from ..secrets import resolve_secret
from .base import (
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


class TwilioAdapter(ProviderAdapter):
    type = "twilio"

    def __init__(self, name: str, spec: TwilioSpec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.url = httpx.URL(f"{self.base_url}/2010-04-01/Accounts/{spec.accountSid}/Messages.json")
        self.authorization = basic_auth_header(spec.accountSid, resolve_secret(spec.authToken, environ))

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
