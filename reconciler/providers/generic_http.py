"""The generic HTTP provider: any SMS API described in YAML (url, method, headers, auth, body, globals).

Placeholders: $$To $$Body $$From $$MessageID $$TemplateID $$TemplateVariables. Unbatched, every place
(url, headers, body, globals) is rendered per message. Batched, one request carries up to
`batching.size` recipients: `body` is rendered once per recipient, while url, headers and globals are
request-level and must not be personalized (validation rejects it; this adapter refuses to start too).

Batched body shapes:
  join: array  -> {**globals, <key>: [{…body for recipient 1…}, {…}]} (form/query: <key> holds that list as JSON)
  join: comma  -> {**globals, **body} where fields holding $$To or $$MessageID are joined by commas;
                  recipients are grouped by identical remaining fields (one request per distinct text).

The URL comes from the desired state, so the outbound URL policy applies at send time: each request
carries `outbound` (Settings spec.outbound.allowNetworks + HERALD_OUTBOUND_ALLOW) and the provider
client resolves its host, checks every address and connects only to a checked one (transport.py); a
refusal fails the messages for this provider with the reason (nothing was sent). `outbound` is None
only when the operator re-rooted the URL onto HERALD_PROVIDER_BASE_URL (the mock). Header secrets
must be in Settings spec.secrets.allow (`header_allow`), checked when the adapter is built, i.e. for
every applied state the daemon sends with.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from ..models.common import Secret
from ..models.provider import GenericHttpSpec
from ..outbound import OutboundPolicy
from ..secrets import redact, resolve_formatted, resolve_secret, secret_name
from .base import (
    OUTBOUND_POLICY,
    OutboundMessage,
    Outcome,
    ProviderAdapter,
    ProviderConfigError,
    ProviderError,
    basic_auth_header,
    error_for_status,
    json_body,
)

PER_RECIPIENT = ("$$To", "$$Body", "$$MessageID", "$$TemplateVariables", "{{", "{%")
RECIPIENT_LIST = ("$$To", "$$MessageID")
TEMPLATE_VARIABLES = "$$TemplateVariables"
SEPARATORS = {"array": ",", "comma": ",", "pipe": "|"}


def lookup_path(document: Any, path: str) -> Any:
    """Dotted path into JSON: 'data.id', 'messages.0.id', 'messages.*.id' (a list, one per item)."""
    parts = path.split(".")
    for index, part in enumerate(parts):
        if part == "*" and isinstance(document, list):
            rest = ".".join(parts[index + 1:])
            return [lookup_path(item, rest) if rest else item for item in document]
        if isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        elif isinstance(document, dict) and part in document:
            document = document[part]
        else:
            return None
    return document


class GenericHttpAdapter(ProviderAdapter):
    type = "generic_http"

    def __init__(self, name: str, spec: GenericHttpSpec, client: httpx.AsyncClient, url: str,
                 environ: dict[str, str] | None = None, *, outbound: OutboundPolicy | None = None,
                 header_allow: Sequence[str] | None = None) -> None:
        """`outbound`: the policy every request must pass (None: exempt, see the module docstring).
        `header_allow`: Settings spec.secrets.allow (None: not wired to Settings, only the HERALD_*
        rule applies). SecretError when a header secret is refused or missing."""
        super().__init__(name, client, url, spec.timeoutSeconds)
        self.spec = spec
        self.url = url
        self.outbound = outbound
        self.parsed_url = httpx.URL(url) if "$$" not in url else None
        self.batching = spec.batching if spec.batching and spec.batching.enabled else None
        self.max_batch = self.batching.size if self.batching else 1
        self.secret_headers = {
            k: resolve_formatted(v, environ, use="header",
                                 allow=[secret_name(v.secretRef)] if header_allow is None else header_allow)
            for k, v in spec.headers.items() if isinstance(v, Secret)}
        self.text_headers = {k: v for k, v in spec.headers.items() if isinstance(v, str)}
        self.authorization = self._authorization(environ)
        if self.batching:
            self._refuse_personalized_request_fields()

    def _authorization(self, environ: dict[str, str] | None) -> str | None:
        auth = self.spec.auth
        if auth is None:
            return None
        if auth.basic is not None:
            return basic_auth_header(auth.basic.username, resolve_secret(auth.basic.password, environ))
        if auth.bearer is not None:
            if auth.bearer.format == "{value}":
                return f"Bearer {resolve_secret(auth.bearer, environ)}"
            return resolve_formatted(auth.bearer, environ)
        return None

    def _refuse_personalized_request_fields(self) -> None:
        places = [("url", self.spec.url), *((f"headers.{k}", v) for k, v in self.text_headers.items()),
                  *((f"globals.{k}", v) for k, v in self.spec.globals.items())]
        for where, value in places:
            if any(marker in value for marker in PER_RECIPIENT):
                raise ProviderConfigError(
                    f"provider {self.name}: {where} is personalized, but batching sends many recipients "
                    "in one request; move per-recipient values into body")

    # -- rendering ---------------------------------------------------------------------------

    def _variables(self, message: OutboundMessage) -> str:
        return SEPARATORS[self.spec.templateVariablesFormat].join(message.template_variables)

    def render(self, template: str, message: OutboundMessage, url_encode: bool = False) -> str:
        values = {
            "$$To": message.to,
            "$$Body": message.body,
            "$$From": self.spec.senderId or "",
            "$$MessageID": message.message_id,
            "$$TemplateID": message.template_id or "",
            TEMPLATE_VARIABLES: self._variables(message),
        }
        for placeholder, value in values.items():
            if placeholder in template:
                template = template.replace(placeholder, quote(value, safe="") if url_encode else value)
        return template

    def render_value(self, template: str, message: OutboundMessage) -> Any:
        if (template.strip() == TEMPLATE_VARIABLES and self.spec.templateVariablesFormat == "array"
                and self.spec.bodyFormat == "json"):
            return list(message.template_variables)
        return self.render(template, message)

    def _request_level(self, batch: Sequence[OutboundMessage]) -> OutboundMessage:
        """Batched requests render url/headers/globals once; only $$From/$$TemplateID may appear."""
        first = batch[0]
        if self.batching and any(m.template_id != first.template_id for m in batch):
            raise ProviderError("a batch mixes template ids; send one campaign per batch",
                                retryable=False, scope="message")
        return first

    def _headers(self, batch: Sequence[OutboundMessage], shared: OutboundMessage) -> dict[str, str]:
        headers = self.headers_for(batch)
        headers.update({k: self.render(v, shared) for k, v in self.text_headers.items()})
        headers.update(self.secret_headers)
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers

    def _payload(self, batch: Sequence[OutboundMessage], shared: OutboundMessage) -> dict[str, Any]:
        payload: dict[str, Any] = {k: self.render_value(v, shared) for k, v in self.spec.globals.items()}
        if not self.batching:
            payload.update({k: self.render_value(v, shared) for k, v in self.spec.body.items()})
            return payload
        if self.batching.join == "comma":
            for key, template in self.spec.body.items():
                if any(marker in template for marker in RECIPIENT_LIST):
                    payload[key] = ",".join(self.render(template, m) for m in batch)
                else:
                    payload[key] = self.render_value(template, shared)
            return payload
        entries = [{k: self.render_value(v, m) for k, v in self.spec.body.items()} for m in batch]
        payload[self.batching.key] = entries if self.spec.bodyFormat == "json" else json.dumps(entries)
        return payload

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        shared = self._request_level(batch)
        url: httpx.URL | str = self.parsed_url or self.render(self.url, shared, url_encode=True)
        headers = self._headers(batch, shared)
        payload = self._payload(batch, shared)
        if self.spec.bodyFormat == "json":
            request = self.make_request(self.spec.method, url, headers, json_payload=payload)
        elif self.spec.bodyFormat == "form":
            request = self.make_request(self.spec.method, url, headers, form=payload)
        else:
            request = self.make_request(self.spec.method, url, headers, params=payload)
        if self.outbound is not None:
            request.extensions[OUTBOUND_POLICY] = self.outbound
        return request

    # -- answers -----------------------------------------------------------------------------

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        if response.status_code not in self.spec.success.statusCodes:
            detail = redact(response.text[:200].replace("\n", " "))
            error = error_for_status(response, detail)
            if 200 <= response.status_code < 300:  # a 2xx the config does not call success
                error.scope = "provider"
            return [error] * len(batch)
        path = self.spec.success.messageIdPath
        found = lookup_path(json_body(response), path) if path else None
        if isinstance(found, list):
            ids = [str(v) if v is not None else None for v in found]
            return list(ids) if len(ids) == len(batch) else [None] * len(batch)
        return [str(found) if found is not None else None] * len(batch)

    async def submit(self, batch: Sequence[OutboundMessage], *, timeout: float | None = None) -> list[Outcome]:
        if not (self.batching and self.batching.join == "comma") or len(batch) <= 1:
            return await super().submit(batch, timeout=timeout)
        groups: dict[str, list[int]] = {}
        for index, message in enumerate(batch):
            groups.setdefault(self._shared_fields_key(message), []).append(index)
        outcomes: list[Outcome] = [None] * len(batch)
        parts = list(groups.values())
        answers = await asyncio.gather(*(super(GenericHttpAdapter, self).submit([batch[i] for i in p], timeout=timeout)
                                         for p in parts))
        for indexes, answer in zip(parts, answers, strict=True):
            for index, outcome in zip(indexes, answer, strict=True):
                outcomes[index] = outcome
        return outcomes

    def _shared_fields_key(self, message: OutboundMessage) -> str:
        shared: Mapping[str, str] = {k: self.render(v, message) for k, v in self.spec.body.items()
                                     if not any(marker in v for marker in RECIPIENT_LIST)}
        return json.dumps(shared, sort_keys=True)
