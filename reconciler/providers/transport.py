"""An httpx transport backed by aiohttp's connection pool.

Adapters speak httpx (requests are built and answers read as httpx objects), but httpcore + h11 cost
about 2 ms of CPU per request on this class of machine, which caps one worker near 400 msg/s.
aiohttp's C-accelerated HTTP/1.1 client does the same exchange for a fraction of that, so the shared
client sends through it when aiohttp is installed. Timeouts and transport failures are mapped back to
httpx's exception classes so error classification is the same with either transport: a connect
failure or connect timeout (nothing written) becomes ConnectError/ConnectTimeout, a timeout once
connected ReadTimeout, any other failure RemoteProtocolError (the last two leave the send in doubt).

Outbound URL policy: a request carrying an OutboundPolicy in `request.extensions[OUTBOUND_POLICY]`
(generic HTTP providers whose URL comes from the desired state) goes through a session of its own
for that policy, whose resolver (CheckedResolver) resolves the host and checks EVERY address with the
policy before aiohttp connects; aiohttp then connects only to the addresses the resolver returned,
so a second DNS answer cannot swap in another address. A literal-address host (which aiohttp does not
resolve) is checked here before the request. Answers are cached for OUTBOUND_DNS_SECONDS per host
(aiohttp's DNS cache, per policy session; refusals are not cached). A refusal raises OutboundBlocked
(a ConnectError: nothing was sent). Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from .. import outbound
from ..outbound import OutboundPolicy
from .base import OUTBOUND_POLICY, OutboundBlocked

HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})
OUTBOUND_DNS_SECONDS = 30  # how long a checked answer is reused per host (aiohttp's DNS cache)
_NUMERIC = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV


class _Refused(OSError):
    """Raised by CheckedResolver; aiohttp wraps OSErrors from resolvers in ClientConnectorDNSError."""


class CheckedResolver(AbstractResolver):
    """Resolves with outbound.resolve_host (in a thread) and returns the addresses only when every one
    passes `policy`; otherwise raises, so aiohttp never connects to a refused address."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self.policy = policy

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        try:
            addresses = await asyncio.to_thread(outbound.resolve_host, host, port)
        except outbound.Unresolvable as exc:
            raise OSError(str(exc)) from None  # a DNS failure: not connected, may be retried
        refusal = self.policy.addresses_refusal(addresses, host)
        if refusal:
            raise _Refused(refusal)
        results = [ResolveResult(hostname=host, host=str(a), port=port, proto=0, flags=_NUMERIC,
                                 family=socket.AF_INET6 if a.version == 6 else socket.AF_INET)
                   for a in addresses]
        wanted = [r for r in results if family in (socket.AF_UNSPEC, r["family"])]
        if not wanted:
            raise OSError(f"{host} has no address of the requested family")
        return wanted

    async def close(self) -> None:
        return None


@functools.lru_cache(maxsize=4096)
def literal_refusal(policy: OutboundPolicy, host: str) -> str | None:
    """The policy's refusal of a literal-address host (None: allowed, or a name for the resolver)."""
    address = outbound.literal_address(host)
    return policy.address_refusal(address) if address is not None else None


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 100, keepalive_seconds: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._sessions: dict[OutboundPolicy | None, aiohttp.ClientSession] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for(self, policy: OutboundPolicy | None) -> aiohttp.ClientSession:
        """The session for this event loop and policy (None: no policy, the provider's own API)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._sessions = {}  # another loop's sessions cannot be used (or closed) from this one
            self._loop = loop
        session = self._sessions.get(policy)
        if session is None or session.closed:
            session = self._sessions[policy] = self._new_session(policy)
        return session

    def _new_session(self, policy: OutboundPolicy | None) -> aiohttp.ClientSession:
        options: dict[str, Any] = {"ttl_dns_cache": 300}
        if policy is not None:
            options = {"ttl_dns_cache": OUTBOUND_DNS_SECONDS, "resolver": CheckedResolver(policy)}
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections,
                                         keepalive_timeout=self.keepalive_seconds, **options)
        return aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     skip_auto_headers=("User-Agent", "Accept-Encoding"), trust_env=False)

    @staticmethod
    def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
        timeouts = request.extensions.get("timeout", {})
        connect = timeouts.get("connect")
        return aiohttp.ClientTimeout(total=None, sock_connect=connect, connect=timeouts.get("pool"),
                                     sock_read=timeouts.get("read"))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        policy: OutboundPolicy | None = request.extensions.get(OUTBOUND_POLICY)
        if policy is not None:
            refusal = literal_refusal(policy, request.url.host)
            if refusal:
                raise OutboundBlocked(refusal, request=request)
        session = self._session_for(policy)
        body = await request.aread()
        headers = [(k, v) for k, v in request.headers.multi_items() if k.lower() not in HOP_BY_HOP]
        try:
            async with session.request(request.method, str(request.url), data=body or None, headers=headers,
                                       timeout=self._timeout(request), allow_redirects=False) as answer:
                content = await answer.read()
                raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in answer.raw_headers]
                status = answer.status
        except aiohttp.ConnectionTimeoutError as exc:  # no connection yet: nothing was written
            raise httpx.ConnectTimeout(f"connect timed out: {exc}", request=request) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:  # connected: the request may have arrived
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from exc
        except ValueError as exc:  # an unsendable header (control character): refused before a byte went out
            raise httpx.LocalProtocolError(f"request not sent: {type(exc).__name__}", request=request) from exc
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _Refused):
                raise OutboundBlocked(str(exc.os_error), request=request) from None
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if not session.closed:
                await session.close()


class ProviderClient(httpx.AsyncClient):
    """The shared client for provider adapters: a plain httpx.AsyncClient, except that `send` hands a
    request straight to the transport. Provider APIs need no cookies, redirects or client-level auth
    (adapters set their own Authorization header), and that bookkeeping was a third of the CPU spent
    per message. Streaming sends still take httpx's full path."""

    def __init__(self, transport: httpx.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._direct = transport

    async def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any) -> httpx.Response:
        if stream or kwargs:
            return await super().send(request, stream=stream, **kwargs)
        response = await self._direct.handle_async_request(request)
        response.request = request
        await response.aread()
        return response
