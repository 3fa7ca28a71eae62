"""The shared provider interface: messages in, per-message results out, errors classified.

An adapter turns a batch of OutboundMessages into ONE HTTP request (`build_request`) and reads the
answer back (`parse_response`) into one Outcome per message: the provider's message id, or a
ProviderError saying whether trying again (or elsewhere) can help. Transport failures are classified
here once for every provider. Adapters never retry; GroupRouter does.

Three kinds of outcome: accepted (an id), refused for sure (the provider cannot have taken the
message: connection refused or connect timeout before the request was written, 4xx, 429, 503, or the
request could not even be built), and IN DOUBT (`ProviderError.ambiguous`: the request was written but
no trustworthy answer came back — read/write timeout, dropped connection, 500/502/504). An in-doubt
message may have been accepted, so it is never retried or failed over blindly: an adapter with
`supports_lookup` can be asked later whether the provider has it (`lookup`, sans-I/O halves
`build_lookup` / `parse_lookup`); for the others the group's `inDoubt` policy decides.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
    status: Literal["sent", "failed", "in_doubt"]  # in_doubt: `provider` may have accepted it
    provider_message_id: str | None
    error: str | None  # already redacted
    retryable: bool  # meaningful when failed
    attempts: int
    segments: int
    retry_after: float | None = None
    encoding: str | None = None
    error_code: str | None = None  # the provider's own error code of a failure (e.g. Twilio 21610)


class ProviderError(Exception):
    """A failed attempt. `scope` says who is at fault: this message (invalid number, template) or the
    provider (auth, outage), which decides whether another provider is worth trying."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 status_code: int | None = None, scope: ErrorScope | None = None,
                 code: str | None = None, ambiguous: bool = False) -> None:
        super().__init__(redact(message))
        self.retryable = retryable
        # The request reached the provider and may have been accepted: never resend or fail over blindly.
        self.ambiguous = ambiguous
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


# 503 Service Unavailable says the request was not taken on; any other 5xx may come after the work
# was done (a 500 from a crashed handler, a 502/504 from a gateway that gave up waiting on the backend).
REFUSING_5XX = frozenset({503})


def error_for_status(response: httpx.Response, detail: str, code: str | None = None,
                     message_level_codes: frozenset[int] = frozenset({400, 404, 413, 422})) -> ProviderError:
    """Classify a non-success HTTP answer: 408/425/429/503 are worth retrying (nothing was accepted);
    other 5xx are IN DOUBT (the provider may have accepted the message); 401/403 are the provider
    account's problem (try another provider); other 4xx are about this message."""
    status = response.status_code
    retry_after = parse_retry_after(response.headers.get("retry-after"), response.headers.get("date"))
    text = f"HTTP {status}: {detail}" if detail else f"HTTP {status}"
    if status in (408, 425, 429) or status >= 500:
        return ProviderError(text, retryable=True, retry_after=retry_after, status_code=status, code=code,
                             ambiguous=status >= 500 and status not in REFUSING_5XX)
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
        except Exception as exc:  # nothing left Herald: a definite refusal, with the reason
            return [unbuildable(self.name, exc)] * len(batch)
        waited = self.timeout
        if timeout is not None and timeout < self.timeout:
            request.extensions["timeout"] = httpx.Timeout(timeout).as_dict()
            waited = timeout
        try:
            response = await self.client.send(request)
        except httpx.TransportError as exc:
            return [transport_error(exc, waited)] * len(batch)
        except Exception as exc:  # unknown: it may have gone out, so in doubt (never a wedged claim)
            return [ProviderError(f"unexpected {type(exc).__name__} while sending: the provider may have "
                                  "accepted it", retryable=True, ambiguous=True)] * len(batch)
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

    # -- in-doubt lookups ---------------------------------------------------------------------

    supports_lookup: ClassVar[bool] = False
    # Seconds after a send before the provider's lookup reliably shows the message (its documented
    # visibility delay, or a margin where it documents none); overridden per provider.
    lookup_delay: float = 0.0
    max_lookup_pages: ClassVar[int] = 10

    def build_lookup(self, doubt: InDoubt, page: str | None) -> httpx.Request:
        """The request asking the provider whether it has `doubt.message` (page: a continuation)."""
        raise NotImplementedError(f"{self.type} has no message lookup")

    def parse_lookup(self, response: httpx.Response, doubt: InDoubt) -> LookupPage:
        """Read one page of the lookup answer (ProviderError when the lookup itself failed)."""
        raise NotImplementedError(f"{self.type} has no message lookup")

    async def lookup(self, doubt: InDoubt) -> Found | ProviderError:
        """Ask the provider whether it accepted the in-doubt message: Found(id) or Found(None) when it
        has no such message, a ProviderError when the question could not be answered (ask again)."""
        page: str | None = None
        for _ in range(self.max_lookup_pages):
            try:
                request = self.build_lookup(doubt, page)
            except ProviderError as exc:
                return exc
            except Exception as exc:  # building the lookup failed: nothing was sent
                return unbuildable(self.name, exc)
            try:
                response = await self.client.send(request)
            except httpx.TransportError as exc:
                return transport_error(exc, self.timeout)
            try:
                answer = self.parse_lookup(response, doubt)
            except ProviderError as exc:
                return exc
            if answer.found is not None or answer.next_page is None:
                return Found(answer.found)
            page = answer.next_page
        return ProviderError(f"{self.name}: lookup still paging after {self.max_lookup_pages} pages",
                             retryable=True)

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


@dataclass(frozen=True)
class InDoubt:
    """A message the provider may or may not have accepted, sent (if at all) between since and until."""

    message: OutboundMessage
    since: datetime
    until: datetime


@dataclass(frozen=True)
class LookupPage:
    found: str | None  # the provider's message id when this page holds the message
    next_page: str | None = None  # continuation (URL or token) when more pages may hold it


@dataclass(frozen=True)
class Found:
    provider_message_id: str | None  # None: the provider has no such message


OUTBOUND_POLICY = "herald.outbound_policy"  # request extension: the OutboundPolicy the request must obey


class OutboundBlocked(httpx.ConnectError):
    """The outbound URL policy refused the request's host or one of the addresses it resolves to
    (outbound.py): no connection was opened, nothing was sent. The message is the policy's reason."""


# Connect failures happen before a byte of the request is written, and a LocalProtocolError (e.g. a
# header with a newline) stops the request before it is sent: the provider cannot have it.
REFUSED_BEFORE_WRITE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.LocalProtocolError)


def transport_error(exc: httpx.TransportError, waited: float) -> ProviderError:
    """A transport failure, classified: refused (nothing was written) or in doubt (it may have arrived).
    A policy refusal (OutboundBlocked) is final: trying again would be refused again."""
    name = type(exc).__name__
    if isinstance(exc, OutboundBlocked):
        return ProviderError(f"refused by the outbound URL policy, nothing was sent: {exc}", retryable=False,
                             scope="provider")
    if isinstance(exc, httpx.LocalProtocolError):
        return ProviderError(f"the request could not be sent ({name}); check the provider's settings and "
                             "secrets", retryable=False, scope="provider")
    if isinstance(exc, REFUSED_BEFORE_WRITE):
        return ProviderError(f"not connected ({name}): nothing was sent", retryable=True)
    if isinstance(exc, httpx.TimeoutException):
        return ProviderError(f"no answer within {waited:g}s ({name}): the provider may have accepted it",
                             retryable=True, ambiguous=True)
    return ProviderError(f"connection lost ({name}: {exc}): the provider may have accepted it",
                         retryable=True, ambiguous=True)


def unbuildable(provider: str, exc: Exception) -> ProviderError:
    """A request that could not be built (e.g. a secret with a newline in a header): refused for sure.
    The exception's text is left out, since it may quote the offending (secret) value."""
    return ProviderError(f"{provider}: the request could not be built ({type(exc).__name__}); check the "
                         "provider's settings and secrets", retryable=False, scope="provider")


def result_from(provider: str | None, message: OutboundMessage, outcome: Outcome, attempts: int) -> SendResult:
    info = analyze(message.body)
    if isinstance(outcome, ProviderError) and outcome.ambiguous:
        return SendResult(message.message_id, provider, "in_doubt", None, redact(outcome.message),
                          False, attempts, info.segments, None, info.encoding)
    if isinstance(outcome, ProviderError):
        return SendResult(message.message_id, provider, "failed", None, redact(outcome.message),
                          outcome.retryable, attempts, info.segments, outcome.retry_after, info.encoding,
                          outcome.code)
    return SendResult(message.message_id, provider, "sent", outcome, None, False, attempts, info.segments,
                      None, info.encoding)
