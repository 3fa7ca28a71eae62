"""Netcore (myTOOday) bulk push SMS: POST https://bulkpush.mytoday.com/BulkSms/SingleMsgApi.

Form fields feedid, username, password, To (digits, no '+'), Text, senderid, templateid/entityid
(DLT), async=0 (synchronous answer). The answer is XML: <RESULT REQID='…'><MID … TID='…'/></RESULT>
on success (TID identifies the message in delivery reports), or
<RESULT><REQUEST-ERROR><ERROR><CODE/><DESC/></ERROR></REQUEST-ERROR></RESULT> (request refused, e.g.
bad credentials) / an <ERROR> inside <MID> (this number refused). Netcore does not dedupe.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

import httpx

from ..models.provider import NetcoreSpec
from ..secrets import resolve_secret
from .base import (
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderError,
    dlt_template_id,
    error_for_status,
    national_digits,
)

REAL_BASE_URL = "https://bulkpush.mytoday.com"
MAX_XML_BYTES = 65536


def _error_text(element: ET.Element) -> tuple[str, str]:
    return (element.findtext("CODE") or "").strip(), (element.findtext("DESC") or "").strip()


class NetcoreAdapter(ProviderAdapter):
    type = "netcore"

    def __init__(self, name: str, spec: NetcoreSpec, client: httpx.AsyncClient, base_url: str,
                 environ: dict[str, str] | None = None) -> None:
        super().__init__(name, client, base_url, spec.timeoutSeconds)
        self.spec = spec
        self.password = resolve_secret(spec.password, environ)
        self.url = httpx.URL(f"{self.base_url}/BulkSms/SingleMsgApi")

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        (message,) = batch
        form = {
            "feedid": self.spec.feedId,
            "username": self.spec.username,
            "password": self.password,
            "To": national_digits(message.to),
            "Text": message.body,
            "senderid": self.spec.senderId,
            "async": "0",
        }
        template = dlt_template_id(message, self.spec.dltTemplateId)
        if template:
            form["templateid"] = template
        if self.spec.dltEntityId:
            form["entityid"] = self.spec.dltEntityId
        headers = {**self.headers_for(batch), "Accept": "application/xml, text/xml"}
        return self.make_request("POST", self.url, headers, form=form)

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        if not 200 <= response.status_code < 300:
            return [error_for_status(response, response.text[:200])]
        try:
            root = ET.fromstring(response.content[:MAX_XML_BYTES])
        except ET.ParseError:
            return [None]  # HTTP 2xx: accepted, but the id is unreadable
        request_error = root.find("REQUEST-ERROR/ERROR")
        if request_error is not None:
            code, desc = _error_text(request_error)
            return [ProviderError(f"netcore {code}: {desc}", retryable=False, status_code=response.status_code,
                                  scope="provider", code=code)]
        mid = root.find("MID")
        if mid is not None and mid.find("ERROR") is not None:
            code, desc = _error_text(mid.find("ERROR"))  # type: ignore[arg-type]
            return [ProviderError(f"netcore {code}: {desc}", retryable=False, status_code=response.status_code,
                                  scope="message", code=code)]
        tid = mid.get("TID") if mid is not None else None
        return [tid or root.get("REQID") or None]
