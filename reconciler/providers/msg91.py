"""MSG91 Flow API v5: POST https://control.msg91.com/api/v5/flow/ with an `authkey` header.

JSON {"template_id", "short_url": "1"|"0", "recipients": [{"mobiles": "91…", "VAR1": …}]}: the DLT
template registered at MSG91, with the campaign's ordered template variables as VAR1, VAR2, … (the
message body is not sent: MSG91 renders the template). The answer is {"type": "success", "message":
"<request id>"} or {"type": "error", "message": "…"}; the request id is what delivery reports carry.
MSG91 has no client-reference field and does not dedupe.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ..models.provider import Msg91Spec
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

REAL_BASE_URL = "https://control.msg91.com"
ACCOUNT_ERROR_WORDS = ("authkey", "auth key", "authentication", "ip not whitelisted", "balance", "credit")


class Msg91Adapter(ProviderAdapter):
    type = "msg91"

    def __init__(self, name: str, spec: Msg91Spec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.auth_key = resolve_secret(spec.authKey, environ)
        self.url = httpx.URL(f"{self.base_url}/api/v5/flow/")

    def template_for(self, message: OutboundMessage) -> str | None:
        """The campaign's template id overrides the provider's flow id, except when it is a numeric DLT
        template id (meant for DLT gateways in the same group) and the provider names its own flow."""
        campaign = message.template_id
        if campaign and not (campaign.isdigit() and self.spec.templateId):
            return campaign
        return self.spec.templateId or campaign

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = batch
        template_id = self.template_for(message)
        if not template_id:
            raise ProviderError("msg91 needs a template id (campaign message.templateId or provider templateId)",
                                retryable=False, scope="message")
        recipient = {"mobiles": national_digits(message.to)}
        recipient.update({f"VAR{i}": value for i, value in enumerate(message.template_variables, start=1)})
        payload = {
            "template_id": template_id,
            "short_url": "1" if self.spec.shortUrl else "0",
            "recipients": [recipient],
        }
        headers = {**self.headers_for(batch), "authkey": self.auth_key}
        return self.make_request("POST", self.url, headers, json_payload=payload)

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        body = json_body(response)
        kind = body.get("type") if isinstance(body, dict) else None
        detail = str(body.get("message", "")) if isinstance(body, dict) else response.text[:200]
        if not 200 <= response.status_code < 300:
            return [error_for_status(response, f"msg91: {detail}")]
        if kind == "error":
            scope: ErrorScope = "provider" if any(w in detail.lower() for w in ACCOUNT_ERROR_WORDS) else "message"
            return [ProviderError(f"msg91: {detail}", retryable=False, status_code=response.status_code,
                                  scope=scope)]
        request_id = body.get("message") if isinstance(body, dict) else None
        return [request_id if isinstance(request_id, str) and request_id else None]
