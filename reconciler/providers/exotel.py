"""Exotel SMS: POST https://{subdomain}/v1/Accounts/{sid}/Sms/send.json, HTTP Basic api_key:api_token.

Form fields From, To, Body, EncodingType (unicode for UCS-2), DltEntityId, DltTemplateId,
StatusCallback (with the receipt token added) and CustomField (our message id, echoed back in
the status callback). The answer is {"SMSMessage": {"Sid", "Status", …}} or
{"RestException": {"Status", "Message", "Code"}}. Exotel does not dedupe.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from ..encoding import analyze
from ..models.provider import ExotelSpec
from ..secrets import resolve_secret
from .base import (
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderError,
    basic_auth_header,
    dlt_template_id,
    error_for_status,
    json_body,
)


def real_base_url(spec: ExotelSpec) -> str:
    return f"https://{spec.subdomain}"


class ExotelAdapter(ProviderAdapter):
    type = "exotel"

    def __init__(self, name: str, spec: ExotelSpec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None, status_callback: str | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.authorization = basic_auth_header(spec.apiKey, resolve_secret(spec.apiToken, environ))
        self.status_callback = status_callback
        self.url = httpx.URL(f"{self.base_url}/v1/Accounts/{spec.accountSid}/Sms/send.json")

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = batch
        form = {"From": self.spec.from_, "To": message.to, "Body": message.body,
                "CustomField": message.message_id}
        if analyze(message.body).unicode:
            form["EncodingType"] = "unicode"
        if self.spec.dltEntityId:
            form["DltEntityId"] = self.spec.dltEntityId
        template = dlt_template_id(message, self.spec.dltTemplateId)
        if template:
            form["DltTemplateId"] = template
        if self.status_callback:
            form["StatusCallback"] = self.status_callback
        headers = {**self.headers_for(batch), "Authorization": self.authorization}
        return self.make_request("POST", self.url, headers, form=form)

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        body = json_body(response)
        if 200 <= response.status_code < 300:
            sms = body.get("SMSMessage") if isinstance(body, dict) else None
            sid = sms.get("Sid") if isinstance(sms, dict) else None
            return [sid if isinstance(sid, str) else None]
        exception = body.get("RestException") if isinstance(body, dict) else None
        if isinstance(exception, dict):
            detail = f"exotel {exception.get('Code', '')}: {exception.get('Message', '')}".strip()
            return [error_for_status(response, detail, code=str(exception.get("Code") or "") or None)]
        return [error_for_status(response, response.text[:200])]


__all__ = ["ExotelAdapter", "ProviderError", "real_base_url"]
