"""The reconcile engine of one daemon process, steppable so tests can drive it with a FakeClock.

One step: sync git (when due) → reconcile (load, validate, plan, apply) → schedule due runs →
materialize claimed runs → fire due inaction timers → expire stale messages → deliver the outbox →
close finished runs. Every part is idempotent and coordinated through the state store, so several
engines (daemons) can share one PostgreSQL store.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from . import audit
from .apply import ApplyRefused, ApplyResult, desired_from_applied, reconcile
from .audience.records import EventRecord
from .delivery import BatchOutcome, DeliveryWorker, drain
from .gitsource import GitSource, GitSourceError
from .linked import LinkedContentFetcher, LinkedUrlPolicy
from .live import fire_due_timers, handle_events
from .loading import DesiredState
from .notify import Notifier, NotifyConfig, outcome_from_apply, repository_from_remote
from .providers.group import GroupRouter
from .ratelimit import SendRateGuard, make_rate_limiter
from .runs import MaterializeResult, materialize_due_runs, schedule_tick
from .runtime import Runtime
from .scheduling import deliveries_paused
from .secrets import redact
from .store.base import AppliedState

LOG = logging.getLogger("herald.engine")
SCHEDULER_LEASE = "scheduler"
GIT_LEASE = "git-poll"
LAST_ERROR_KEY = "daemon:last_error"


@dataclass
class TickResult:
    created_runs: int = 0
    materialized: list[MaterializeResult] = field(default_factory=list)
    timers: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    finished_runs: list[int] = field(default_factory=list)


def claim_size(state: DesiredState, configured: int) -> int:
    """Rows a delivery worker claims at once: the configured size (`herald run --claim-batch`), raised to
    the largest batch a batching provider takes, so such a provider is sent full batches (claims of 200
    split a 500-recipient batch into requests of 200)."""
    sizes = [batching.size for provider in state.providers.values()
             if (batching := getattr(provider.spec, "batching", None)) is not None and batching.enabled]
    return max([configured, *sizes])


class Engine:
    def __init__(self, rt: Runtime, source: GitSource | None = None, *, workers: int = 4,
                 batch_size: int = 200, environ: dict[str, str] | None = None,
                 linked_policy: LinkedUrlPolicy | None = None, allow_prune: bool = False,
                 router_concurrency: int = 64, override_freeze: bool = False) -> None:
        self.rt = rt
        self.source = source
        self.worker_count = workers
        self.batch_size = batch_size
        self.environ = environ
        self.allow_prune = allow_prune
        self.override_freeze = override_freeze  # apply inside freeze windows too (audited per commit)
        self.router_concurrency = router_concurrency
        self.linked = LinkedContentFetcher(clock=rt.clock, policy=linked_policy or LinkedUrlPolicy(),
                                           settings=lambda: self.state.settings)  # allow-lists of the applied state
        self.state = DesiredState()  # updated in place so HTTP routes always see the current objects
        self._version: int | None = None
        self._applied = AppliedState.empty()
        self._router: GroupRouter | None = None
        self.last_sync_error: str | None = None
        self.sync_busy = False  # the last sync found another daemon syncing (the caller may ask again)
        self.last_reconciled_at: datetime | None = None  # last successful git → apply reconcile
        env = os.environ if environ is None else environ
        self.limiter = make_rate_limiter(rt.config.state_url, env.get("HERALD_REDIS_URL") or None,
                                         metrics=rt.metrics)
        self.notifier = Notifier(rt.store, lambda: NotifyConfig.from_settings(self.state.settings),
                                 clock=rt.clock, environ=env, owner=rt.worker_id)
        self.rt.alerts = self.notifier  # owner alerts: log + webhook, once per campaign and run

    # ------------------------------------------------------------ git → applied state

    def sync(self) -> ApplyResult | None:
        """Read the branch head and reconcile it. Errors keep the last applied state running.

        The git lease is held only while syncing (one reconcile at a time across daemons) and released
        at once, so a push webhook or /admin/sync that reaches any daemon is acted on at once (holding it
        for the whole coordination lease made such a request a no-op on every other daemon for 30 s)."""
        if self.source is None:
            return None
        self.sync_busy = not self.rt.store.try_lease(GIT_LEASE, self.rt.worker_id, self.rt.clock.now(),
                                                     self.rt.leases.coordination)
        if self.sync_busy:
            return None
        try:
            return self._sync_leased()
        finally:
            self.rt.store.release_lease(GIT_LEASE, self.rt.worker_id)

    def _sync_leased(self) -> ApplyResult | None:
        assert self.source is not None
        try:
            snapshot = self.source.read()
        except GitSourceError as exc:
            self._sync_failed("git", str(exc))
            return None
        try:
            result = reconcile(self.rt.store, snapshot, clock=self.rt.clock, actor=self.rt.actor,
                               allow_prune=self.allow_prune, source=self.source.display,
                               override_freeze=self.override_freeze)
        except ApplyRefused as exc:
            self._sync_failed("apply", str(exc))
            self._notify(snapshot.sha, exc)
            return None
        except Exception as exc:  # a bug in loading/planning must not stop ticking and delivering
            LOG.exception("reconcile crashed; keeping the last applied state")
            self._sync_failed("reconcile", redact(f"{type(exc).__name__}: {exc}"))
            self._notify(snapshot.sha, exc)
            return None
        self._notify(snapshot.sha, result)
        self.last_sync_error = None
        self.rt.store.kv_set(LAST_ERROR_KEY, None)
        self.last_reconciled_at = self.rt.clock.now()
        self.rt.metrics.reconcile_lag.set(0)
        if result.commit_sha:
            self.rt.metrics.set_last_applied(result.commit_sha)
        return result

    def reconcile_lag(self) -> float | None:
        """Seconds since the last successful reconcile (None before the first)."""
        if self.last_reconciled_at is None:
            return None
        return max(0.0, (self.rt.clock.now() - self.last_reconciled_at).total_seconds())

    def _notify(self, sha: str, result: ApplyResult | BaseException) -> None:
        """Commit status + webhook, once per (commit, result) across polls, restarts and daemons."""
        assert self.source is not None
        self.refresh()  # notification settings come from the applied Settings
        repository = repository_from_remote(self.source.location) if self.source.remote else None
        self.notifier.notify_commit(outcome_from_apply(sha, result, repository=repository))

    def _sync_failed(self, stage: str, message: str) -> None:
        self.rt.metrics.reconcile_errors.labels(stage=stage).inc()
        if self.last_sync_error != message:
            LOG.error("reconcile failed (%s): %s; keeping the last applied state", stage, message)
            if stage != "apply":  # apply refusals are audited by apply itself, once per commit
                self.rt.store.append_audit([audit.audit_record(
                    audit.ERROR, at=self.rt.clock.now(), actor=self.rt.actor,
                    details={"stage": stage, "message": message})])
        self.last_sync_error = message
        self.rt.store.kv_set(LAST_ERROR_KEY, {"stage": stage, "message": message,
                                              "at": self.rt.clock.now().isoformat()})

    def refresh(self) -> tuple[AppliedState, DesiredState]:
        """The applied state as models, rebuilt only when the applied-state version moved."""
        version = self.rt.store.applied_version()
        if version != self._version:
            applied = self.rt.store.applied_state()
            fresh = desired_from_applied(applied)
            for name in ("providers", "groups", "campaigns", "segments", "settings", "documents"):
                setattr(self.state, name, getattr(fresh, name))
            self._applied = applied
            self._version = applied.version
            if applied.commit_sha:
                self.rt.metrics.set_last_applied(applied.commit_sha)
            self._router_stale = True
        return self._applied, self.state

    # ------------------------------------------------------------ scheduling

    def tick(self) -> TickResult:
        applied, state = self.refresh()
        result = TickResult()
        now = self.rt.clock.now()
        if self.rt.store.try_lease(SCHEDULER_LEASE, self.rt.worker_id, now, self.rt.leases.coordination):
            result.created_runs = len(schedule_tick(self.rt, state, applied))
        result.materialized = materialize_due_runs(self.rt, state, applied)
        result.timers = fire_due_timers(self.rt, state)
        result.expired = self.rt.store.expire(now)
        if result.expired:
            self.rt.metrics.skips.labels(reason="expired").inc(result.expired)
            self.rt.store.append_audit([audit.audit_record(
                audit.EXPIRE, at=now, actor=self.rt.actor,
                details={"messages": result.expired, "reason": "validity ended before sending"})])
        result.finished_runs = self.rt.store.finish_runs()
        self.rt.metrics.queue_depth.set(self.rt.store.queue_depth())
        return result

    def on_events(self, events: Sequence[EventRecord]) -> Counter[str]:
        _, state = self.refresh()
        return handle_events(self.rt, state, events)

    # ------------------------------------------------------------ delivery

    async def router(self) -> GroupRouter:
        if self._router is None or getattr(self, "_router_stale", False):
            if self._router is not None:
                await self._router.aclose()
            self._router = GroupRouter(self.state, self.rt.config, self.rt.clock, environ=self.environ,
                                       max_concurrency=self.router_concurrency,
                                       before_send=SendRateGuard(self.limiter, self.state))
            self._router_stale = False
        return self._router

    async def deliver(self, max_batches: int = 50) -> BatchOutcome:
        if deliveries_paused(self.state.settings, self.rt.clock.now()):
            return BatchOutcome()
        router = await self.router()
        claim = claim_size(self.state, self.batch_size)
        workers = [DeliveryWorker(self.rt, router, self.state, linked=self.linked, batch_size=claim)
                   for _ in range(self.worker_count)]
        return await drain(workers, max_batches=max_batches)

    async def step(self, *, sync: bool = True) -> tuple[TickResult, BatchOutcome]:
        if sync:
            await asyncio.to_thread(self.sync)
        tick = await asyncio.to_thread(self.tick)
        delivered = await self.deliver()
        tick.finished_runs += await asyncio.to_thread(self.rt.store.finish_runs)
        return tick, delivered

    async def aclose(self) -> None:
        if self._router is not None:
            await self._router.aclose()
            self._router = None
        await self.limiter.aclose()
        self.notifier.close()
        self.linked.close()
