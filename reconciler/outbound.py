"""Outbound URL policy: where a commit may make the daemon send requests.

Applies to URLs that come from the desired state: linked content, generic HTTP provider URLs, alert
and notification webhooks, the GitHub API base. Every such URL is

1. normalized before any check (`normalize_url`): scheme and host lower-cased, percent-escapes of
   unreserved characters decoded, dot segments removed, duplicate slashes collapsed. Path checks
   (the admin-path guard) look at the fully decoded path, so `/%61dmin`, `//admin` and `/x/../admin`
   are all `/admin`;
2. refused when its host is, or resolves to, an address that is not globally routable: loopback,
   link-local (169.254.0.0/16, fe80::/10), private (10/8, 172.16/12, 192.168/16, fc00::/7),
   unspecified, CGNAT, multicast, reserved; IPv4-mapped, 6to4 and NAT64 IPv6 forms are checked as the
   IPv4 address they carry. Networks listed in Settings `spec.outbound.allowNetworks` or in the
   environment variable HERALD_OUTBOUND_ALLOW (comma-separated CIDRs) are allowed;
3. re-checked at request time after DNS resolution: every address the name resolves to must pass,
   and the request connects to the checked address (`pin`: the URL carries the address, the Host
   header and TLS SNI/certificate check keep the name), so a second lookup cannot swap in another
   address. Redirects are never followed: a 3xx answer is a failure. Generic HTTP providers get the
   same check from the provider client's resolver (providers/transport.py `CheckedResolver`): every
   address of the answer must pass and aiohttp connects only to those addresses.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from .models import Settings

ALLOW_ENV = "HERALD_OUTBOUND_ALLOW"
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_UNRESERVED_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
MAX_DECODE_ROUNDS = 8


class OutboundRefused(ValueError):
    """A URL the policy refuses; the message says why (never a secret: URLs are redacted by callers)."""


class Unresolvable(OutboundRefused):
    """The host name does not resolve (perhaps only for now: a DNS outage is not a policy refusal)."""


@dataclass(frozen=True)
class NormalizedUrl:
    scheme: str
    host: str  # lower-case, no trailing dot, IPv6 without brackets
    port: int
    path: str  # normalized path as sent (unreserved escapes decoded, dot segments, one slash)
    url: str  # the normalized URL (what is requested)

    @property
    def decoded_path(self) -> str:
        """The path fully percent-decoded (repeatedly) and normalized again: what a server may route on."""
        path = self.path
        for _ in range(MAX_DECODE_ROUNDS):
            decoded = unquote(path)
            if decoded == path:
                break
            path = decoded
        return _normalize_path(path)


def _decode_unreserved(text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else "%" + match.group(1).upper()

    return _UNRESERVED_ESCAPE.sub(replace, text)


def _normalize_path(path: str) -> str:
    """RFC 3986 dot-segment removal and duplicate slashes collapsed; always starts with '/'."""
    collapsed = re.sub(r"/{2,}", "/", path or "/")
    trailing = collapsed.endswith("/") or collapsed.endswith("/.") or collapsed.endswith("/..")
    normalized = posixpath.normpath("/" + collapsed.lstrip("/"))
    normalized = "/" + normalized.lstrip("/")  # normpath keeps a leading '//'
    return normalized + "/" if trailing and normalized != "/" else normalized


def normalize_url(url: str) -> NormalizedUrl:
    """Parse and normalize an http(s) URL; OutboundRefused when it is malformed or not http(s)."""
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise OutboundRefused("the URL holds whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise OutboundRefused("the URL is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OutboundRefused("outbound URLs must use http or https")
    host = unquote(parts.hostname or "").lower().rstrip(".")
    if not host:
        raise OutboundRefused("the URL has no host")
    path = _normalize_path(_decode_unreserved(parts.path))
    query = _decode_unreserved(parts.query)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    normalized = urlunsplit((scheme, userinfo + at + hostport.lower(), path, query, ""))
    return NormalizedUrl(scheme, host, port or (443 if scheme == "https" else 80), path, normalized)


def literal_address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        pass
    try:  # legacy IPv4 spellings resolvers accept: 127.1, 2130706433, 0x7f000001, 017700000001
        return ipaddress.ip_address(socket.inet_aton(host))
    except (OSError, ValueError, UnicodeError):
        return None


def _embedded_ipv4(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_class(address: Address) -> str | None:
    """Why `address` is not a public destination (None when it is globally routable)."""
    address = _embedded_ipv4(address)
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def parse_networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (a bare address is a /32 or /128); ValueError names the bad entry."""
    networks = []
    for entry in entries:
        text = entry.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"'{text}' is not a network (CIDR such as 127.0.0.0/8 or ::1/128)") from None
    return tuple(networks)


@dataclass(frozen=True)
class OutboundPolicy:
    """Which non-public networks are allowed (nothing by default)."""

    allow_networks: tuple[Network, ...] = ()
    resolve: bool = True  # look host names up (False: only literal addresses are checked)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OutboundPolicy:
        env = os.environ if environ is None else environ
        return cls(parse_networks((env.get(ALLOW_ENV) or "").split(",")))

    @classmethod
    def from_settings(cls, settings: Settings | None, environ: Mapping[str, str] | None = None) -> OutboundPolicy:
        """Settings spec.outbound.allowNetworks plus HERALD_OUTBOUND_ALLOW."""
        from_env = cls.from_env(environ)
        outbound = getattr(settings.spec, "outbound", None) if settings is not None else None
        listed = parse_networks(outbound.allowNetworks) if outbound is not None else ()
        return cls(from_env.allow_networks + listed)

    def allows(self, address: Address) -> bool:
        plain = _embedded_ipv4(address)
        return any(plain in network or address in network for network in self.allow_networks)

    def address_refusal(self, address: Address, host: str | None = None) -> str | None:
        """Why a request may not go to `address` (reached through the name `host`), else None."""
        kind = address_class(address)
        if kind is None or self.allows(address):
            return None
        article = "an" if kind[0] in "aeiou" else "a"
        subject = f"{host} resolves to {address}," if host else f"{address} is"
        return f"{subject} {article} {kind} address; allow it in Settings spec.outbound.allowNetworks or {ALLOW_ENV}"

    def addresses_refusal(self, addresses: Iterable[Address], host: str | None = None) -> str | None:
        """Why a request may not go to `host` answering `addresses` (every one must pass), else None."""
        for address in addresses:
            refusal = self.address_refusal(address, host)
            if refusal:
                return refusal
        return None


def resolve_host(host: str, port: int) -> list[Address]:
    """Every address `host` resolves to (a literal address: itself). OutboundRefused when none."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        raise Unresolvable(f"{host} does not resolve") from None
    addresses: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise Unresolvable(f"{host} does not resolve")
    return addresses


def static_refusal(url: str, policy: OutboundPolicy) -> str | None:
    """What `herald validate` can tell without the network: malformed, not http(s), or a literal
    address (or localhost) in a refused range. None when the URL may be used."""
    try:
        target = normalize_url(url)
    except OutboundRefused as exc:
        return str(exc)
    if target.host == "localhost" or target.host.endswith(".localhost"):
        return policy.address_refusal(ipaddress.ip_address("127.0.0.1"), target.host)
    address = literal_address(target.host)
    return policy.address_refusal(address) if address is not None else None


@dataclass(frozen=True)
class PinnedRequest:
    """A request aimed at a checked address: pass `url`, `headers` and `extensions` to httpx."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)
    target: NormalizedUrl | None = None


def pin(url: str, policy: OutboundPolicy, addresses: Sequence[Address] | None = None) -> PinnedRequest:
    """Normalize `url`, resolve its host (or take `addresses`, one lookup the caller already made and
    checked otherwise), check every address, and aim the request at the first. OutboundRefused when
    any check fails."""
    target = normalize_url(url)
    if not policy.resolve:
        refusal = static_refusal(target.url, policy)
        if refusal:
            raise OutboundRefused(refusal)
        return PinnedRequest(target.url, target=target)
    if addresses is None:
        addresses = resolve_host(target.host, target.port)
    literal = literal_address(target.host) is not None
    refusal = policy.addresses_refusal(addresses, None if literal else target.host)
    if refusal:
        raise OutboundRefused(refusal)
    chosen = addresses[0]
    if literal:
        return PinnedRequest(target.url, target=target)
    host = f"[{chosen}]" if chosen.version == 6 else str(chosen)
    parts = urlsplit(target.url)
    userinfo, at, host_header = parts.netloc.rpartition("@")
    netloc = userinfo + at + (f"{host}:{parts.port}" if parts.port else host)
    pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
    extensions: dict[str, Any] = {"sni_hostname": target.host} if target.scheme == "https" else {}
    return PinnedRequest(pinned, {"Host": host_header}, extensions, target)
