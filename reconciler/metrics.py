"""Prometheus metrics for the daemon, on a registry of our own (tests can create several daemons)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.queue_depth = Gauge("herald_outbox_queue_depth", "Messages waiting in the outbox", registry=r)
        self.sends = Counter("herald_sends_total", "Send attempts by provider and status",
                             ["provider", "status"], registry=r)
        self.skips = Counter("herald_skips_total", "Messages not sent, by reason", ["reason"], registry=r)
        self.reconcile_lag = Gauge("herald_reconcile_lag_seconds",
                                   "Seconds since the last successful reconcile", registry=r)
        self.clock_skew = Gauge("herald_clock_skew_seconds",
                                "This host's clock minus the shared store's (PostgreSQL); 0 on SQLite", registry=r)
        self.health_problems = Gauge("herald_health_problems", "Units /healthz names as degraded, by unit",
                                     ["unit"], registry=r)
        self.last_applied = Gauge("herald_last_applied_commit_info", "Last applied commit (label)",
                                  ["commit"], registry=r)
        self.reconcile_errors = Counter("herald_reconcile_errors_total", "Failed reconciles by stage",
                                        ["stage"], registry=r)
        self.send_wait = Histogram("herald_send_wait_seconds", "Time a message waited in the outbox",
                                   registry=r, buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600))
        self.rate_limit_wait = Counter("herald_rate_limit_wait_seconds_total",
                                       "Seconds workers waited for send-rate tokens", ["bucket"], registry=r)
        self.runs = Counter("herald_runs_total", "Campaign runs by outcome", ["outcome"], registry=r)
        self.consent_changes = Counter("herald_consent_changes_total", "Consent changes recorded, by source "
                                       "(keyword, provider_error, api, ingest) and change (opt_out, opt_in)",
                                       ["source", "change"], registry=r)
        self.live_event_failures = Counter("herald_live_event_failures_total",
                                           "Live events (unit=event) or timer tries (unit=timer) a campaign "
                                           "could not handle", ["campaign", "unit"], registry=r)

    def set_last_applied(self, commit: str) -> None:
        self.last_applied.clear()
        self.last_applied.labels(commit=commit).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
