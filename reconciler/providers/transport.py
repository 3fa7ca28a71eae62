"""An httpx transport backed by aiohttp's connection pool.

Adapters speak httpx (requests are built and answers read as httpx objects), but httpcore + h11 cost
about 2 ms of CPU per request on this class of machine, which caps one worker near 400 msg/s.
aiohttp's C-accelerated HTTP/1.1 client does the same exchange for a fraction of that, so the shared
client sends through it when aiohttp is installed. Timeouts and transport failures are mapped back to
httpx's exception classes so error classification is the same with either transport: a connect
failure or connect timeout (nothing written) becomes ConnectError/ConnectTimeout, a timeout once
connected ReadTimeout, any other failure RemoteProtocolError (the last two leave the send in doubt).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import httpx

HOP_BY_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 100, keepalive_seconds: float = 30.0) -> None:
        self.max_connections = max_connections
        self.keepalive_seconds = keepalive_seconds
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for_loop(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=self.max_connections,
                                             keepalive_timeout=self.keepalive_seconds, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                                  skip_auto_headers=("User-Agent", "Accept-Encoding"),
                                                  trust_env=False)
            self._loop = loop
        return self._session

    @staticmethod
    def _timeout(request: httpx.Request) -> aiohttp.ClientTimeout:
        timeouts = request.extensions.get("timeout", {})
        connect = timeouts.get("connect")
        return aiohttp.ClientTimeout(total=None, sock_connect=connect, connect=timeouts.get("pool"),
                                     sock_read=timeouts.get("read"))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_for_loop()
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
            raise httpx.ConnectError(str(exc), request=request) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(f"{type(exc).__name__}: {exc}", request=request) from exc
        return httpx.Response(status, headers=raw_headers, content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


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
