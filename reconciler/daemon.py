"""`herald run`: the long-running reconciler daemon.

It polls git (and syncs at once on a verified webhook), reconciles, ticks the scheduler, runs the
delivery workers, and serves: /healthz, /metrics, /webhook/git, /v1/events + /v1/users (live
ingest), /receipts/{provider} and the dashboard. SIGTERM/SIGINT stop it gracefully: the current
batch finishes and is recorded; anything unfinished stays claimed until its lease ends and another
worker (or this daemon after restart) sends it with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from . import consent
from .audience.readers import duckdb_path, snapshot_path
from .audience.records import EventRecord
from .engine import LAST_ERROR_KEY, Engine
from .health import health_report
from .http.events import event_routes
from .http.inbound import inbound_routes
from .http.openapi import openapi_endpoint
from .http.proxies import PublicUrl, normalize_public_url, parse_networks
from .http.receipts import Receipt, receipt_routes
from .http.security import (
    BodyIncomplete,
    BodyTooLarge,
    RequestTargetGuard,
    bearer_token_ok,
    github_signature_ok,
    read_limited_body,
    unauthorized,
)

LOG = logging.getLogger("herald.daemon")


@dataclass
class DaemonOptions:
    host: str = "127.0.0.1"
    port: int = 8080
    poll_interval: float = 30.0
    tick_interval: float = 1.0
    webhook_secret: str | None = None
    public_base_url: str | None = None
    trusted_proxies: str | None = None  # CIDRs whose Forwarded / X-Forwarded-* headers are believed


class Daemon:
    def __init__(self, engine: Engine, options: DaemonOptions) -> None:
        self.engine = engine
        self.options = options
        self.stopping = asyncio.Event()
        self.sync_now = asyncio.Event()
        self.started = asyncio.Event()
        self._last_sync: float | None = None  # None: sync at the first step, whatever the loop clock reads
        self._snapshot_lock = asyncio.Lock()
        self.public = PublicUrl(base=normalize_public_url(options.public_base_url),
                                trusted=parse_networks(options.trusted_proxies))
        self.app = Starlette(routes=self.routes(), middleware=[Middleware(RequestTargetGuard)])

    # ------------------------------------------------------------ HTTP

    def routes(self) -> list[BaseRoute]:
        rt = self.engine.rt
        routes: list[BaseRoute] = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/webhook/git", self.git_webhook, methods=["POST"]),
            Route("/admin/sync", self.admin_sync, methods=["POST"]),
            Route("/openapi.json", openapi_endpoint, methods=["GET"]),
            Route("/v1/audience/snapshot", self.audience_snapshot, methods=["POST"]),
            *event_routes(rt.audience, token=rt.config.admin_token, clock=rt.clock, on_events=self.on_events,
                          on_consent=self.on_consent),
            *receipt_routes(self.engine.state, rt.store, clock=rt.clock, public=self.public,
                            on_receipt=self.on_receipt),
            *inbound_routes(self.engine.state, rt, router=self.engine.router, public=self.public),
        ]
        with contextlib.suppress(ImportError):
            from .http.dashboard import dashboard_routes

            routes.append(Mount("/dashboard", routes=dashboard_routes(self.engine)))
        return routes

    async def healthz(self, request: Request) -> Response:
        store = self.engine.rt.store
        try:
            applied = await asyncio.to_thread(store.applied_state)
            last_error = await asyncio.to_thread(store.kv_get, LAST_ERROR_KEY)
            report = await asyncio.to_thread(health_report, self.engine.rt, last_error)
        except Exception as exc:  # the store is down: unhealthy, but say why without a traceback
            return JSONResponse({"status": "error", "error": type(exc).__name__}, status_code=503)
        return JSONResponse({**report, "applied_version": applied.version,
                             "last_applied_commit": applied.commit_sha, "last_error": last_error})

    async def metrics(self, request: Request) -> Response:
        store = self.engine.rt.store
        try:
            depth = await asyncio.to_thread(store.queue_depth)
        except Exception as exc:  # the store is down: a transient 503, like /healthz
            return JSONResponse({"status": "error", "error": type(exc).__name__}, status_code=503)
        self.engine.rt.metrics.queue_depth.set(depth)
        lag = self.engine.reconcile_lag()
        if lag is not None:
            self.engine.rt.metrics.reconcile_lag.set(lag)
        return Response(self.engine.rt.metrics.render(), media_type="text/plain; version=0.0.4")

    async def git_webhook(self, request: Request) -> Response:
        """GitHub-style push webhook: X-Hub-Signature-256 must match HERALD_WEBHOOK_SECRET."""
        if not self.options.webhook_secret:
            return JSONResponse({"error": "webhook secret not configured"}, status_code=403)
        try:
            body = await read_limited_body(request, 262_144)
        except BodyTooLarge as exc:
            return JSONResponse({"error": str(exc)}, status_code=413)
        except BodyIncomplete as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if not github_signature_ok(self.options.webhook_secret, body, request.headers.get("x-hub-signature-256")):
            return JSONResponse({"error": "bad signature"}, status_code=403)
        self.sync_now.set()
        return JSONResponse({"status": "sync scheduled"}, status_code=202)

    async def admin_sync(self, request: Request) -> Response:
        if not bearer_token_ok(request, self.engine.rt.config.admin_token):
            return unauthorized()
        self.sync_now.set()
        return JSONResponse({"status": "sync scheduled"}, status_code=202)

    async def audience_snapshot(self, request: Request) -> Response:
        """A consistent copy of the embedded (DuckDB) audience store for read commands in other
        processes (reconciler.audience.readers); 404 for stores others can open themselves."""
        if not bearer_token_ok(request, self.engine.rt.config.admin_token):
            return unauthorized()
        audience = self.engine.rt.audience
        path = duckdb_path(self.engine.rt.config.audience_url)
        if path is None or not hasattr(audience, "snapshot_to"):
            return JSONResponse({"error": "the audience store can be read directly"}, status_code=404)
        target = os.path.abspath(snapshot_path(path))
        try:
            async with self._snapshot_lock:
                await asyncio.to_thread(audience.snapshot_to, target)
        except Exception as exc:
            LOG.error("audience snapshot failed: %s", type(exc).__name__)
            return JSONResponse({"error": "snapshot failed"}, status_code=503)
        return JSONResponse({"path": target, "at": self.engine.rt.clock.now().isoformat()})

    async def on_consent(self, changes: list[tuple[str, str | None, bool]]) -> None:
        """Opt-outs and opt-ins that arrived with user records (POST /v1/users): audited, source ingest."""
        await asyncio.to_thread(consent.record_ingested, self.engine.rt, changes)

    async def on_receipt(self, provider: str, receipt: Receipt) -> None:
        """Consent: a receipt whose error code means "opted out" (Twilio 21610) opts the recipient out."""
        await asyncio.to_thread(consent.opt_out_from_receipt, self.engine.rt, self.engine.state, provider,
                                receipt.error_code, receipt.raw)

    async def on_events(self, events: list[EventRecord]) -> None:
        outcomes = await asyncio.to_thread(self.engine.on_events, events)
        LOG.debug("live events handled: %s", dict(outcomes))

    # ------------------------------------------------------------ loop

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        server = _QuietServer(uvicorn.Config(self.app, host=self.options.host, port=self.options.port,
                                             log_level="warning", lifespan="off", access_log=False,
                                             proxy_headers=False))  # HERALD_TRUSTED_PROXIES decides
        serving = asyncio.create_task(server.serve())
        try:
            await self._loop()
        finally:
            server.should_exit = True
            await serving
            await self.engine.aclose()
            LOG.info("stopped")

    def stop(self) -> None:
        LOG.info("shutting down: finishing the current batch")
        self.stopping.set()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        self.started.set()
        retry_sync = False
        while not self.stopping.is_set():
            due = (self._last_sync is None or loop.time() - self._last_sync >= self.options.poll_interval
                   or self.sync_now.is_set() or retry_sync)
            if due:
                self.sync_now.clear()
                self._last_sync = loop.time()
            try:
                _, outcome = await self.engine.step(sync=due)
            except Exception:
                LOG.exception("engine step failed; retrying")
                self.engine.rt.metrics.reconcile_errors.labels(stage="step").inc()
                outcome = None
            # Another daemon was syncing: it may have read the branch before the push that asked for
            # this sync, so sync again at the next step rather than wait for the next poll.
            retry_sync = due and self.engine.sync_busy
            if outcome is not None and outcome.claimed:
                continue  # more may be waiting: go again without sleeping
            await self._sleep(self.options.tick_interval)

    async def _sleep(self, seconds: float) -> None:
        stop = asyncio.create_task(self.stopping.wait())
        sync = asyncio.create_task(self.sync_now.wait())
        _, pending = await asyncio.wait({stop, sync}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the daemon owns SIGTERM/SIGINT and shuts down in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def webhook_secret_from_env(environ: dict[str, Any] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("HERALD_WEBHOOK_SECRET") or None
