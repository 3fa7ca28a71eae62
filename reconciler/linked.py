"""Linked content: per-user data fetched over HTTP at send time, available as linked.<name>.

Each source's URL is a Liquid template rendered for the user; header values are literals or secret
references; responses are cached for `cacheTtl` (time from the injected Clock). When a source fails
(timeout, HTTP error, refused URL, bad template) its `onError` decides: skip_user (this user gets no
message), send_without (render without it; linked.* is lenient) or abort_run (stop the whole run).

URLs are checked before each request: linked content must not reach the daemon's own admin
endpoints (loopback or the daemon's host names on its admin port, or admin paths on loopback)
unless the policy explicitly allows it. Redirects are not followed.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import httpx

from .clock import Clock
from .models.campaign import LinkedContent
from .models.common import Secret
from .render import render_context, render_source
from .secrets import SecretError, redact, resolve_formatted

if TYPE_CHECKING:
    from .audience.records import EventRecord, Member
    from .models import Campaign

Action = Literal["send", "skip_user", "abort_run"]
ADMIN_PATH_PREFIXES = ("/admin", "/v1/", "/healthz", "/metrics", "/webhook", "/dashboard", "/api/")
MAX_RESPONSE_BYTES = 262_144
_SEVERITY: dict[Action, int] = {"send": 0, "skip_user": 1, "abort_run": 2}


@dataclass(frozen=True)
class LinkedUrlPolicy:
    """What linked-content URLs may target. The daemon passes its own admin port(s) and host names."""

    admin_ports: frozenset[int] = frozenset()
    admin_hosts: frozenset[str] = frozenset()
    allow_admin: bool = False
    resolve_hostnames: bool = True

    @classmethod
    def for_daemon(cls, port: int, hosts: tuple[str, ...] = (), *, allow_admin: bool = False) -> LinkedUrlPolicy:
        return cls(frozenset({port}), frozenset(h.lower() for h in hosts), allow_admin)


def _is_local_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        try:  # legacy IPv4 spellings the resolver accepts: 127.1, 2130706433, 0x7f000001
            address = ipaddress.ip_address(socket.inet_aton(host))
        except (OSError, ValueError):
            return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _resolves_locally(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # unresolvable: the request itself will fail
    return any(_is_local_address(str(info[4][0])) for info in infos)


def check_linked_url(url: str, policy: LinkedUrlPolicy) -> str | None:
    """None when `url` may be fetched, else the reason it is refused."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "the URL is malformed"
    if parts.scheme not in ("http", "https"):
        return "linked content URLs must use http or https"
    host = (parts.hostname or "").lower().rstrip(".")
    if not host:
        return "the URL has no host"
    if policy.allow_admin:
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    local = (_is_local_address(host) or host == "localhost" or host.endswith(".localhost")
             or (policy.resolve_hostnames and _resolves_locally(host)))
    if (local or host in policy.admin_hosts) and port in policy.admin_ports:
        return "the URL targets the daemon's own admin port"
    if local and any(parts.path.startswith(prefix) for prefix in ADMIN_PATH_PREFIXES):
        return "the URL targets an admin endpoint on this machine"
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
        for source in campaign.spec.message.linkedContent:
            try:
                values[source.name] = self._fetch_one(source, context)
            except LinkedContentError as exc:
                errors.append(redact(f"{source.name}: {exc}"))
                failed: Action = "send" if source.onError == "send_without" else source.onError
                if _SEVERITY[failed] > _SEVERITY[action]:
                    action = failed
                if action == "abort_run":
                    break
        return LinkedOutcome(values, action, tuple(errors))

    def _fetch_one(self, source: LinkedContent, context: Mapping[str, Any]) -> Any:
        try:
            url = render_source(source.url, context).strip()
        except Exception as exc:
            raise LinkedContentError(f"URL template failed: {str(exc).splitlines()[0]}") from None
        refusal = check_linked_url(url, self.policy)
        if refusal:
            raise LinkedContentError(refusal)
        headers = self._headers(source)
        key = (source.method, url, tuple(sorted(headers.items())))
        now = self.clock.now()
        cached = self._cached(key, now)
        if cached is not None:
            return cached.value
        value = self._request(source, url, headers)
        if source.cacheTtl is not None and source.cacheTtl.total_seconds() > 0:
            self._store(key, _CacheEntry(now + source.cacheTtl, value))
        return value

    def _headers(self, source: LinkedContent) -> dict[str, str]:
        headers: dict[str, str] = {}
        for name, given in source.headers.items():
            if isinstance(given, str):
                headers[name] = given
                continue
            try:
                headers[name] = resolve_formatted(Secret.model_validate(given), dict(self.environ)
                                                  if self.environ is not None else None)
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

    def _request(self, source: LinkedContent, url: str, headers: dict[str, str]) -> Any:
        assert self.client is not None
        self.requests_made += 1
        host = urlsplit(url).hostname
        try:
            with self.client.stream(source.method, url, headers=headers, timeout=source.timeoutSeconds,
                                    follow_redirects=False) as response:
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
