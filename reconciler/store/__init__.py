"""The state store: applied desired state, runs, outbox, timers, audit and daemon coordination.

`open_state_store(url)` picks the backend from the URL:
  sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory:  -> SqliteStateStore
  postgresql://... or postgres://...                                            -> PostgresStateStore
Stores migrate their schema when they open.
"""

from __future__ import annotations

from pathlib import Path

from ..clock import Clock
from .base import (
    COUNTED_STATUSES,
    OUTBOX_STATUSES,
    RECEIPT_STATUSES,
    RUN_STATUSES,
    AppliedObject,
    AppliedState,
    ApplyOutcome,
    AuditEntry,
    AuditQuery,
    AuditRecord,
    ChangeSet,
    DeliveryCount,
    HealthProblem,
    ObjectDelete,
    ObjectWrite,
    OutboxItem,
    OutboxRow,
    Override,
    Run,
    ScheduleMark,
    SendResult,
    StaleStateError,
    StateStore,
    StoreError,
    StoreNotFoundError,
    Timer,
    idempotency_key,
)


def sqlite_path(url: str) -> Path | None:
    """The file behind a sqlite:/// URL (None for other URLs)."""
    if not url.startswith("sqlite:///"):
        return None
    return Path(url.removeprefix("sqlite:///"))


def open_state_store(url: str, *, clock: Clock | None = None, create: bool = True,
                     max_connections: int | None = None) -> StateStore:
    """Open (and migrate) the store at `url`.

    With create=False a missing SQLite file raises StoreNotFoundError instead of being created,
    so `herald plan` in CI can plan against an empty applied state without leaving a file behind.
    """
    path = sqlite_path(url)
    if path is not None:
        from .sqlite import SqliteStateStore

        return SqliteStateStore(path, clock=clock, create=create)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import DEFAULT_MAX_CONNECTIONS, PostgresStateStore

        return PostgresStateStore(url, clock=clock, max_connections=max_connections or DEFAULT_MAX_CONNECTIONS)
    raise StoreError(f"unsupported state store URL {url.split('://')[0]}://...; use sqlite:/// or postgresql://")


__all__ = [
    "COUNTED_STATUSES",
    "OUTBOX_STATUSES",
    "RECEIPT_STATUSES",
    "RUN_STATUSES",
    "AppliedObject",
    "AppliedState",
    "ApplyOutcome",
    "AuditEntry",
    "AuditQuery",
    "AuditRecord",
    "ChangeSet",
    "DeliveryCount",
    "HealthProblem",
    "ObjectDelete",
    "ObjectWrite",
    "OutboxItem",
    "OutboxRow",
    "Override",
    "Run",
    "ScheduleMark",
    "SendResult",
    "StaleStateError",
    "StateStore",
    "StoreError",
    "StoreNotFoundError",
    "Timer",
    "idempotency_key",
    "open_state_store",
    "sqlite_path",
]
