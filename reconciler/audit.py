"""The append-only audit log: who did what, to which object, because of which commit.

Entries are only ever added. The store has no update or delete path for them, and both backends
reject UPDATE/DELETE on the table with a trigger (PostgreSQL also rejects TRUNCATE). Details are
redacted (reconciler.secrets.redact) before they are written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from .clock import Clock
from .secrets import redact
from .store.base import AuditEntry, AuditQuery, AuditRecord, StateStore

# Actions Herald itself writes; other areas may add their own (lowercase words with '_').
PLAN = "plan"
APPLY = "apply"
APPLY_REFUSED = "apply_refused"
APPLY_HELD = "apply_held"  # a freeze window holds the commit; it applies when the window ends
FREEZE_OVERRIDE = "freeze_override"  # applied during a freeze window with --override-freeze
CREATE = "create"
UPDATE = "update"
DELETE = "delete"
PAUSE = "pause"
RESUME = "resume"
RUN_STARTED = "run_started"
RUN_BLOCKED = "run_blocked"
RUN_FAILED = "run_failed"
SEND = "send"
SKIP = "skip"
EXPIRE = "expire"
ERROR = "error"
KNOWN_ACTIONS = (PLAN, APPLY, APPLY_REFUSED, APPLY_HELD, FREEZE_OVERRIDE, CREATE, UPDATE, DELETE, PAUSE, RESUME,
                 RUN_STARTED, RUN_BLOCKED, RUN_FAILED, SEND, SKIP, EXPIRE, ERROR)

_ACTION = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def audit_record(action: str, *, at: datetime, actor: str, kind: str | None = None, name: str | None = None,
                 commit_sha: str | None = None, details: Mapping[str, Any] | None = None) -> AuditRecord:
    """A new entry, checked; hand it to AuditLog.record or put it in an apply's ChangeSet."""
    if not _ACTION.match(action):
        raise ValueError(f"audit action must be a lowercase word such as 'apply' (got {action!r})")
    if at.tzinfo is None:
        raise ValueError("audit times must be timezone-aware")
    return AuditRecord(at=at, actor=actor, action=action, kind=kind, name=name, commit_sha=commit_sha,
                       details=dict(details or {}))


class AuditLog:
    """Write and read audit entries through a state store."""

    def __init__(self, store: StateStore, clock: Clock, actor: str = "herald") -> None:
        self.store = store
        self.clock = clock
        self.actor = actor

    def record(self, action: str, *, kind: str | None = None, name: str | None = None,
               commit_sha: str | None = None, details: Mapping[str, Any] | None = None,
               actor: str | None = None) -> int:
        entry = audit_record(action, at=self.clock.now(), actor=actor or self.actor, kind=kind, name=name,
                             commit_sha=commit_sha, details=details)
        return self.store.append_audit([entry])[0]

    def query(self, *, campaign: str | None = None, commit: str | None = None, actions: Sequence[str] = (),
              kind: str | None = None, name: str | None = None, since: datetime | None = None,
              until: datetime | None = None, limit: int = 1000, newest_first: bool = False) -> list[AuditEntry]:
        return self.store.query_audit(AuditQuery(
            campaign=campaign, commit=commit, actions=tuple(actions), kind=kind, name=name, since=since,
            until=until, limit=limit, newest_first=newest_first))


def entry_to_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "at": entry.at.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "kind": entry.kind,
        "name": entry.name,
        "commit": entry.commit_sha,
        "details": entry.details,
    }


def render_json(entries: Sequence[AuditEntry]) -> str:
    return redact(json.dumps([entry_to_dict(e) for e in entries], indent=2, ensure_ascii=False))


def _summary(details: Mapping[str, Any], width: int = 70) -> str:
    text = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False, sort_keys=True)}" for k, v in details.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def render_table(entries: Sequence[AuditEntry]) -> str:
    if not entries:
        return "no audit entries"
    header = ("TIME", "ACTOR", "ACTION", "OBJECT", "COMMIT", "DETAILS")
    rows = [header] + [
        (
            e.at.strftime("%Y-%m-%d %H:%M:%SZ"),
            e.actor,
            e.action,
            f"{e.kind}/{e.name}" if e.kind and e.name else (e.name or "-"),
            (e.commit_sha or "-")[:10],
            _summary(e.details),
        )
        for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in rows]
    return redact("\n".join(line.rstrip() for line in lines))
