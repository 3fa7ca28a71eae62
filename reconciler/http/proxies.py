"""The URL a provider called, behind TLS terminators and reverse proxies.

Providers sign the URL they called (Twilio) and must be told where to call (status callbacks), so the
daemon needs its public URL:
- `HERALD_PUBLIC_URL` / `herald run --public-url https://herald.example` states it outright;
- `HERALD_TRUSTED_PROXIES` (comma-separated CIDRs) names the proxies whose `Forwarded` (RFC 7239) and
  `X-Forwarded-Proto/-Host/-Port` headers are believed. Headers from any other peer are ignored, so a
  client cannot make Herald check a signature against a URL of its choosing.
When a proxy chain appends several values, the last one (written by the proxy next to Herald) counts.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from starlette.requests import Request

from ..outbound import parse_networks as outbound_networks

PUBLIC_URL_ENV = "HERALD_PUBLIC_URL"
TRUSTED_PROXIES_ENV = "HERALD_TRUSTED_PROXIES"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyConfigError(ValueError):
    pass


def parse_networks(text: str | Iterable[str] | None) -> tuple[Network, ...]:
    """CIDRs (or single addresses) from 'a, b' or a list; ProxyConfigError names a bad entry."""
    if text is None:
        return ()
    try:
        return outbound_networks(text.split(",") if isinstance(text, str) else text)
    except ValueError as exc:
        raise ProxyConfigError(str(exc)) from None


def normalize_public_url(url: str | None) -> str | None:
    """scheme://host[:port][/prefix] without a trailing slash; ProxyConfigError when not http(s)."""
    if not url:
        return None
    text = url.strip().rstrip("/")
    if not text.startswith(("https://", "http://")) or "?" in text or "#" in text or len(text) <= 8:
        raise ProxyConfigError(f"public URL must be http(s)://host[/prefix] (got {url!r})")
    return text


@dataclass(frozen=True)
class PublicUrl:
    """Where providers reach this daemon: the configured public URL and the trusted proxies."""

    base: str | None = None
    trusted: tuple[Network, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, base: str | None = None,
                 trusted: str | None = None) -> PublicUrl:
        env = os.environ if environ is None else environ
        return cls(normalize_public_url(base or env.get(PUBLIC_URL_ENV) or None),
                   parse_networks(trusted if trusted is not None else env.get(TRUSTED_PROXIES_ENV)))

    def is_trusted(self, host: str | None) -> bool:
        if not host or not self.trusted:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.trusted)

    def candidates(self, request: Request) -> list[str]:
        """The full URLs (with query) the caller may have signed: the public URL; the forwarded URL
        when the peer is a trusted proxy; the request's own URL only when neither is configured."""
        path = request.url.path
        query = f"?{request.url.query}" if request.url.query else ""
        found: list[str] = []
        if self.base:
            found.append(f"{self.base}{path}{query}")
        peer = request.client.host if request.client else None
        if self.is_trusted(peer):
            forwarded = forwarded_base(request.headers)
            if forwarded:
                found.append(f"{forwarded}{path}{query}")
        if not found:
            found.append(str(request.url))
        return list(dict.fromkeys(found))


def _last(value: str | None) -> str | None:
    if not value:
        return None
    parts = [p.strip() for p in value.split(",") if p.strip()]
    return parts[-1] if parts else None


def _forwarded_pairs(header: str | None) -> dict[str, str]:
    """The last element of an RFC 7239 Forwarded header as {name: value} (quotes removed)."""
    element = _last(header)
    pairs: dict[str, str] = {}
    for pair in (element or "").split(";"):
        name, sep, value = pair.partition("=")
        if sep:
            pairs[name.strip().lower()] = value.strip().strip('"')
    return pairs


def forwarded_base(headers: Mapping[str, str]) -> str | None:
    """scheme://host[:port] from Forwarded, else X-Forwarded-Proto/-Host/-Port; None without a host."""
    pairs = _forwarded_pairs(headers.get("forwarded"))
    proto = (pairs.get("proto") or _last(headers.get("x-forwarded-proto")) or "http").lower()
    host = pairs.get("host") or _last(headers.get("x-forwarded-host")) or headers.get("host")
    if proto not in ("http", "https") or not host or any(c in host for c in "/?#@ \\"):
        return None
    port = _last(headers.get("x-forwarded-port"))
    if port and port.isdigit() and ":" not in host.rsplit("]", 1)[-1]:
        default = "443" if proto == "https" else "80"
        if port != default:
            host = f"{host}:{port}"
    return f"{proto}://{host}"
