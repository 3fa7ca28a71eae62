"""What the engine's steps share: the stores, the clock, alerts and metrics of one daemon process."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta

from .alerts import AlertSink, LogAlertSink
from .audience.store import AudienceStore
from .clock import Clock, SystemClock
from .config import RuntimeConfig
from .metrics import Metrics
from .store.base import StateStore

RUN_LEASE = timedelta(minutes=5)
OUTBOX_LEASE = timedelta(minutes=2)
TIMER_LEASE = timedelta(minutes=2)
COORDINATION_LEASE = timedelta(seconds=30)  # the scheduler tick and the git poll


@dataclass(frozen=True)
class Leases:
    """How long claimed work stays with its claimer. After a crash this is how long its runs, messages
    and timers wait before another worker (or the restarted daemon) takes them over."""

    run: timedelta = RUN_LEASE
    outbox: timedelta = OUTBOX_LEASE
    timer: timedelta = TIMER_LEASE
    coordination: timedelta = COORDINATION_LEASE

    @classmethod
    def uniform(cls, seconds: float) -> Leases:
        """Every lease the same length (`herald run --lease`)."""
        span = timedelta(seconds=seconds)
        return cls(run=span, outbox=span, timer=span, coordination=span)


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Runtime:
    store: StateStore
    audience: AudienceStore
    clock: Clock = field(default_factory=SystemClock)
    config: RuntimeConfig = field(default_factory=RuntimeConfig)
    worker_id: str = field(default_factory=new_worker_id)
    metrics: Metrics = field(default_factory=Metrics)
    alerts: AlertSink = field(default_factory=LogAlertSink)
    actor: str = "daemon"
    leases: Leases = field(default_factory=Leases)
