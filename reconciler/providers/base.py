"""The shared provider interface: messages in, per-message results out, errors classified.

An adapter turns a batch of OutboundMessages into ONE HTTP request (`build_request`) and reads the
answer back (`parse_response`) into one Outcome per message: the provider's message id, or a
ProviderError saying whether trying again (or elsewhere) can help. Transport failures are classified
here once for every provider. Adapters never retry; GroupRouter does.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode

import httpx

from ..encoding import analyze
from ..secrets import redact

IDEMPOTENCY_HEADER = "Idempotency-Key"
USER_AGENT = "herald/0.1"
ErrorScope = Literal["message", "provider"]


@dataclass(frozen=True)
class OutboundMessage:
    message_id: str  # Herald's idempotency key, stable per (campaign run, user)
    to: str  # E.164
    body: str
    template_id: str | None = None
    template_variables: tuple[str, ...] = ()
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendResult:
    message_id: str
    provider: str | None  # provider NAME (metadata.name) that accepted / was tried last
    status: Literal["sent", "failed"]
    provider_message_id: str | None
    error: str | None  # already redacted
    retryable: bool  # meaningful when failed
    attempts: int
    segments: int
    retry_after: float | None = None
    encoding: str | None = None


class ProviderError(Exception):
    """A failed attempt. `scope` says who is at fault: this message (invalid number, template) or the
    provider (auth, outage), which decides whether another provider is worth trying."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status_code: int | None = None, scope: ErrorScope | None = None,
                 code: str | None = None) -> None:
        super().__init__(redact(message))
        self.retryable = retryable
        self.retry_after = retry_after
        self.status_code = status_code
        self.scope: ErrorScope = scope or ("provider" if retryable else "message")
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class ProviderConfigError(ValueError):
    """The provider's configuration cannot work (checked again at runtime after validation)."""


Outcome = str | None | ProviderError  # provider message id (None when the provider gave none) or error


def idempotency_key(messages: Sequence[OutboundMessage]) -> str:
    if len(messages) == 1:
        return messages[0].message_id
    digest = hashlib.sha256("\n".join(m.message_id for m in messages).encode()).hexdigest()
    return f"batch-{digest[:40]}"


def parse_retry_after(value: str | None, response_date: str | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (relative to the
    response's own Date header, so no wall clock is read)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    if not response_date:
        return None
    try:
        delta = parsedate_to_datetime(value) - parsedate_to_datetime(response_date)
    except (TypeError, ValueError):
        return None
    return max(0.0, delta.total_seconds())


def error_for_status(response: httpx.Response, detail: str, code: str | None = None,
                     message_level_codes: frozenset[int] = frozenset({400, 404, 413, 422})) -> ProviderError:
    """Classify a non-success HTTP answer: 408/425/429/5xx are worth retrying; 401/403 are the
    provider account's problem (try another provider); other 4xx are about this message."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"), response.headers.get("date"))
    text = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in (408, 425, 429) or status >= 500:
        return ProviderError(text, retryable=True, retry_after=retry_after, status_code=status, code=code)
    scope: ErrorScope = "message" if status in message_level_codes else "provider"
    return ProviderError(text, retryable=False, status_code=status, scope=scope, code=code)


def json_body(response: httpx.Response) -> Any:
    try:
        return json.loads(response.content)
    except ValueError:
        return None


def basic_auth_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def dlt_template_id(message: OutboundMessage, provider_default: str | None) -> str | None:
    """The DLT template id Exotel and Netcore send: the campaign's when it is numeric (a DLT id rather
    than, say, an MSG91 flow id), else the provider's own; None when there is neither."""
    campaign = message.template_id if message.template_id and message.template_id.isdigit() else None
    return campaign or provider_default or None


def national_digits(number: str) -> str:
    """E.164 without the '+', as Vonage, MSG91 and Netcore want it."""
    return number.lstrip("+")


class ProviderAdapter:
    """One configured provider account. Subclasses implement build_request and parse_response."""

    type: ClassVar[str] = ""
    max_batch: int = 1

    def __init__(self, name: str, client: httpx.AsyncClient, base_url: str, timeout: float) -> None:
        self.name = name
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._timeouts = httpx.Timeout(timeout).as_dict()

    def build_request(self, batch: Sequence[OutboundMessage]) -> httpx.Request:
        raise NotImplementedError

    def parse_response(self, response: httpx.Response, batch: Sequence[OutboundMessage]) -> list[Outcome]:
        raise NotImplementedError

    def headers_for(self, batch: Sequence[OutboundMessage]) -> dict[str, str]:
        return {IDEMPOTENCY_HEADER: idempotency_key(batch), "Accept": "application/json"}

    async def submit(self, batch: Sequence[OutboundMessage], *, timeout: float | None = None) -> list[Outcome]:
        """One attempt: one HTTP request for the whole batch, one Outcome per message. `timeout`
        shortens the provider's own timeout for this attempt (the caller's time is running out)."""
        if not batch:
            return []
        if len(batch) > self.max_batch:
            raise ValueError(f"{self.name}: batch of {len(batch)} exceeds max_batch {self.max_batch}")
        try:
            request = self.build_request(batch)
        except ProviderError as exc:
            return [exc] * len(batch)
        waited = self.timeout
        if timeout is not None and timeout < self.timeout:
            request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
            waited = timeout
        try:
            response = await self.client.send(request)
        except httpx.TimeoutException as exc:
            return [ProviderError(f"timeout after {waited:g}s ({type(exc).__name__})", retryable=True)] * len(batch)
        except httpx.TransportError as exc:
            return [ProviderError(f"connection error: {type(exc).__name__}: {exc}", retryable=True)] * len(batch)
        try:
            outcomes = self.parse_response(response, batch)
        except ProviderError as exc:
            return [exc] * len(batch)
        if len(outcomes) != len(batch):
            raise AssertionError(f"{self.name}: {len(outcomes)} outcomes for {len(batch)} messages")
        return outcomes

    async def send(self, messages: Sequence[OutboundMessage]) -> list[SendResult]:
        """Send once (no retry, no failover), in batches of max_batch."""
        results: list[SendResult] = []
        for start in range(0, len(messages), self.max_batch):
            batch = messages[start:start + self.max_batch]
            outcomes = await self.submit(batch)
            results.extend(result_from(self.name, m, o, attempts=1) for m, o in zip(batch, outcomes, strict=True))
        return results

    def make_request(self, method: str, url: httpx.URL | str, headers: dict[str, str], *,
                     form: Mapping[str, Any] | None = None, json_payload: Any = None,
                     params: Mapping[str, Any] | None = None) -> httpx.Request:
        """Build the request directly (not via client.build_request, which re-parses and merges the
        URL, headers and cookies on every call: a third of the client's CPU per message)."""
        content: bytes | None = None
        if form is not None:
            content = urlencode(form, doseq=True).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif json_payload is not None:
            content = json.dumps(json_payload, ensure_ascii=False, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        headers.setdefault("User-Agent", USER_AGENT)
        request = httpx.Request(method, url, headers=headers, content=content,
                                params=dict(params) if params is not None else None)
        request.extensions["timeout"] = self._timeouts
        return request


def result_from(provider: str | None, message: OutboundMessage, outcome: Outcome, attempts: int) -> SendResult:
    info = analyze(message.body)
    if isinstance(outcome, ProviderError):
        return SendResult(message.message_id, provider, "failed", None, redact(outcome.message),
                          outcome.retryable, attempts, info.segments, outcome.retry_after, info.encoding)
    return SendResult(message.message_id, provider, "sent", outcome, None, False, attempts, info.segments,
                      None, info.encoding)
