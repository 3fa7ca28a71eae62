"""Linked content: per-user data fetched over HTTP at send time, available as linked.<name>.

Each source's URL is a Liquid template rendered for the user; header values are literals or secret
references; responses are cached for `cacheTtl` (time from the injected Clock). When a source fails
(timeout, HTTP error, refused URL, bad template) its `onError` decides: skip_user (this user gets no
message), send_without (render without it; linked.* is lenient) or abort_run (stop the whole run).

URLs are checked before each request (see outbound.py): normalized first; refused when the host is,
or resolves to, a non-public address (loopback, link-local, private, unspecified...) unless Settings
`spec.outbound.allowNetworks` or HERALD_OUTBOUND_ALLOW allow it; the request connects to the address
that was checked. Even where loopback is allowed, linked content must not reach the daemon's own admin
endpoints (the daemon's admin port on a local address or its host names, or admin paths on a local
address, judged on the fully decoded, normalized path) unless the policy explicitly allows it.
Redirects are not followed. Header secrets must be listed in Settings `spec.secrets.allow` and are
never the daemon's own HERALD_* variables.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from .clock import Clock
from .models.campaign import LinkedContent
from .models.common import Secret
from .outbound import (
    Address,
    Network,
    NormalizedUrl,
    OutboundPolicy,
    OutboundRefused,
    PinnedRequest,
    address_class,
    literal_address,
    normalize_url,
    pin,
    resolve_host,
)
from .render import render_context, render_source
from .secrets import SecretError, redact, resolve_formatted, secret_name

if TYPE_CHECKING:
    from .audience.records import EventRecord, Member
    from .models import Campaign, Settings

Action = Literal["send", "skip_user", "abort_run"]
ADMIN_PATH_PREFIXES = ("/admin", "/v1/", "/healthz", "/metrics", "/webhook", "/dashboard", "/api/")
MAX_RESPONSE_BYTES = 262_144
_SEVERITY: dict[Action, int] = {"send": 0, "skip_user": 1, "abort_run": 2}


@dataclass(frozen=True)
class LinkedUrlPolicy:
    """What linked-content URLs may target. The daemon passes its own admin port(s) and host names;
    `allow_networks` are the non-public networks allowed on top of public addresses."""

    admin_ports: frozenset[int] = frozenset()
    admin_hosts: frozenset[str] = frozenset()
    allow_admin: bool = False
    resolve_hostnames: bool = True
    allow_networks: tuple[Network, ...] = ()

    @classmethod
    def for_daemon(cls, port: int, hosts: tuple[str, ...] = (), *, allow_admin: bool = False) -> LinkedUrlPolicy:
        return cls(frozenset({port}), frozenset(h.lower() for h in hosts), allow_admin)

    @property
    def outbound(self) -> OutboundPolicy:
        return OutboundPolicy(self.allow_networks, resolve=self.resolve_hostnames)

    def with_outbound(self, outbound: OutboundPolicy) -> LinkedUrlPolicy:
        """This policy with the networks `outbound` allows added (Settings, HERALD_OUTBOUND_ALLOW)."""
        return replace(self, allow_networks=self.allow_networks + outbound.allow_networks)


def _is_local(address: Address) -> bool:
    return address_class(address) in ("loopback", "unspecified")


def _admin_refusal(target: NormalizedUrl, addresses: Sequence[Address], policy: LinkedUrlPolicy) -> str | None:
    local = (any(_is_local(a) for a in addresses) or target.host == "localhost"
             or target.host.endswith(".localhost"))
    if (local or target.host in policy.admin_hosts) and target.port in policy.admin_ports:
        return "the URL targets the daemon's own admin port"
    path = target.decoded_path
    if local and any(path.startswith(prefix) or path + "/" == prefix for prefix in ADMIN_PATH_PREFIXES):
        return "the URL targets an admin endpoint on this machine"
    return None


def linked_request(url: str, policy: LinkedUrlPolicy) -> PinnedRequest:
    """The request to make for `url`, aimed at a checked address; OutboundRefused says why not."""
    target = normalize_url(url)
    if policy.allow_admin:
        return PinnedRequest(target.url, target=target)
    literal = literal_address(target.host)
    if literal is not None or policy.resolve_hostnames:
        addresses = resolve_host(target.host, target.port)
    else:
        addresses = []
    refusal = _admin_refusal(target, addresses, policy)
    if refusal:
        raise OutboundRefused(refusal)
    return pin(target.url, policy.outbound, addresses or None)  # the same lookup: no second answer


def check_linked_url(url: str, policy: LinkedUrlPolicy) -> str | None:
    """None when `url` may be fetched, else the reason it is refused."""
    try:
        linked_request(url, policy)
    except OutboundRefused as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class LinkedOutcome:
    values: dict[str, Any]
    action: Action = "send"
    errors: tuple[str, ...] = ()


class LinkedContentError(Exception):
    pass


@dataclass
class _CacheEntry:
    expires: datetime
    value: Any


@dataclass
class LinkedContentFetcher:
    """Fetches a campaign's linked content for one user at a time. Thread-safe; share one per daemon."""

    clock: Clock
    policy: LinkedUrlPolicy
    client: httpx.Client | None = None
    environ: Mapping[str, str] | None = None
    max_cache_entries: int = 10_000
    max_response_bytes: int = MAX_RESPONSE_BYTES
    settings: Callable[[], Settings | None] | None = None  # the daemon's current Settings (allow-lists)
    _cache: OrderedDict[tuple[Any, ...], _CacheEntry] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _owns_client: bool = field(default=False, repr=False)
    requests_made: int = 0

    def __post_init__(self) -> None:
        if self.client is None:
            self.client = httpx.Client(follow_redirects=False)
            self._owns_client = True

    def close(self) -> None:
        if self._owns_client and self.client is not None:
            self.client.close()

    def fetch(self, campaign: Campaign, member: Member, *,
              event: EventRecord | Mapping[str, Any] | None = None) -> LinkedOutcome:
        """All of the campaign's sources for one user; the most severe onError among failures wins."""
        values: dict[str, Any] = {}
        errors: list[str] = []
        action: Action = "send"
        context = render_context(campaign, member, event=event)
        settings = self.settings() if self.settings is not None else None
        policy = self.policy.with_outbound(OutboundPolicy.from_settings(settings))
        allow = None if self.settings is None else (settings.spec.secrets.allow if settings is not None else [])
        for source in campaign.spec.message.linkedContent:
            try:
                values[source.name] = self._fetch_one(source, context, policy, allow)
            except LinkedContentError as exc:
                errors.append(redact(f"{source.name}: {exc}"))
                failed: Action = "send" if source.onError == "send_without" else source.onError
                if _SEVERITY[failed] > _SEVERITY[action]:
                    action = failed
                if action == "abort_run":
                    break
        return LinkedOutcome(values, action, tuple(errors))

    def _fetch_one(self, source: LinkedContent, context: Mapping[str, Any], policy: LinkedUrlPolicy,
                   allow: Collection[str] | None) -> Any:
        try:
            url = render_source(source.url, context).strip()
        except Exception as exc:
            raise LinkedContentError(f"URL template failed: {str(exc).splitlines()[0]}") from None
        try:
            request = linked_request(url, policy)
        except OutboundRefused as exc:
            raise LinkedContentError(str(exc)) from None
        headers = self._headers(source, allow)
        key = (source.method, request.target.url if request.target else url, tuple(sorted(headers.items())))
        now = self.clock.now()
        cached = self._cached(key, now)
        if cached is not None:
            return cached.value
        value = self._request(source, request, headers)
        if source.cacheTtl is not None and source.cacheTtl.total_seconds() > 0:
            self._store(key, _CacheEntry(now + source.cacheTtl, value))
        return value

    def _headers(self, source: LinkedContent, allow: Collection[str] | None) -> dict[str, str]:
        """Literal headers and secret references; a reference must be allow-listed (when the fetcher
        knows the Settings) and is never a HERALD_* variable."""
        headers: dict[str, str] = {}
        for name, given in source.headers.items():
            if isinstance(given, str):
                headers[name] = given
                continue
            try:
                secret = Secret.model_validate(given)
                # not wired to Settings (allow is None): only the HERALD_* rule is enforced here
                allowed = [secret_name(secret.secretRef)] if allow is None else allow
                headers[name] = resolve_formatted(secret, self.environ, use="header", allow=allowed)
            except SecretError as exc:
                raise LinkedContentError(f"header {name}: {exc}") from None
            except ValueError:
                raise LinkedContentError(f"header {name}: not a string or a secretRef") from None
        return headers

    def _cached(self, key: tuple[Any, ...], now: datetime) -> _CacheEntry | None:
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if entry.expires <= now:
                del self._cache[key]
                return None
            self._cache.move_to_end(key)
            return entry

    def _store(self, key: tuple[Any, ...], entry: _CacheEntry) -> None:
        with self._lock:
            self._cache[key] = entry
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_cache_entries:
                self._cache.popitem(last=False)

    def _request(self, source: LinkedContent, request: PinnedRequest, headers: dict[str, str]) -> Any:
        assert self.client is not None
        self.requests_made += 1
        host = request.target.host if request.target else urlsplit(request.url).hostname
        try:
            with self.client.stream(source.method, request.url, headers={**headers, **request.headers},
                                    timeout=source.timeoutSeconds, follow_redirects=False,
                                    extensions=request.extensions) as response:
                if response.status_code >= 300:
                    raise LinkedContentError(f"{host} answered HTTP {response.status_code}")
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise LinkedContentError(f"{host} sent more than {self.max_response_bytes} bytes")
                content_type = response.headers.get("content-type", "")
        except httpx.TimeoutException:
            raise LinkedContentError(f"{host} did not answer within {source.timeoutSeconds:g}s") from None
        except httpx.HTTPError as exc:
            raise LinkedContentError(f"{host}: {type(exc).__name__}") from None
        return _decode(bytes(body), content_type)


def _decode(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type or text.lstrip()[:1] in ("{", "["):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            if "json" in content_type:
                raise LinkedContentError("the response is not valid JSON") from None
    return text
