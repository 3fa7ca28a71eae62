"""The SQL both backends share. Statements use `?` placeholders; the PostgreSQL adapter rewrites them.

A backend supplies a transaction (`_transaction`) yielding a `Tx`, the conversions of timestamps and
JSON to and from its column types, and its row-locking clause for claims.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ..clock import Clock, SystemClock
from ..secrets import redact
from .base import (
    COUNTED_STATUSES,
    RECEIPT_STATUSES,
    AppliedObject,
    AppliedState,
    ApplyOutcome,
    AuditEntry,
    AuditQuery,
    AuditRecord,
    ChangeSet,
    DeliveryCount,
    HealthProblem,
    ObjectWrite,
    OutboxItem,
    OutboxRow,
    Override,
    Run,
    RunStatus,
    ScheduleMark,
    SendResult,
    StaleStateError,
    StateStore,
    StoreError,
    Timer,
)

IN_CHUNK = 500
FINAL_RECEIPTS = ("delivered", "failed", "undelivered")

_RUN_TS = ("scheduled_for", "lease_until", "created_at", "updated_at")
_OUTBOX_TS = ("not_before", "expires_at", "lease_until", "delivery_updated_at", "created_at", "updated_at",
              "sent_at")
_TIMER_TS = ("fire_at", "lease_until", "created_at", "updated_at")


class Tx(Protocol):
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    def one(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None: ...

    def run(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def many(self, sql: str, seq: Sequence[Sequence[Any]]) -> int: ...


def _chunks(values: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def _marks(count: int) -> str:
    return ", ".join("?" for _ in range(count))


class _Where:
    """Optional filters of a query: conditions are AND-ed, None/empty values are left out."""

    def __init__(self) -> None:
        self.clauses: list[str] = ["1 = 1"]
        self.params: list[Any] = []

    def equals(self, column: str, value: Any) -> _Where:
        return self.when(value is not None, f"{column} = ?", value)

    def any_of(self, column: str, values: Sequence[Any]) -> _Where:
        return self.when(bool(values), f"{column} IN ({_marks(len(values))})", *values)

    def when(self, condition: bool, clause: str, *params: Any) -> _Where:
        if condition:
            self.clauses.append(clause)
            self.params.extend(params)
        return self

    @property
    def sql(self) -> str:
        return " AND ".join(self.clauses)


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    return str(value)


def canonical_json(value: Any) -> str:
    """Compact JSON with sorted keys: equal values give equal text (and equal hashes)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def _git_paused(spec: Mapping[str, Any]) -> bool:
    inner = spec.get("spec")
    return bool(inner.get("paused", False)) if isinstance(inner, Mapping) else False


class SqlStateStore(StateStore):
    """StateStore on any SQL backend that offers ON CONFLICT, RETURNING and a claim lock clause."""

    dialect = "sql"
    claim_lock = ""  # e.g. " FOR UPDATE OF o SKIP LOCKED"
    row_lock = ""  # e.g. " FOR UPDATE"

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    # -- backend hooks
    @abstractmethod
    def _transaction(self, write: bool) -> AbstractContextManager[Tx]: ...

    @abstractmethod
    def _ts(self, value: datetime | None) -> Any: ...

    @abstractmethod
    def _dt(self, value: Any) -> datetime | None: ...

    @abstractmethod
    def _js(self, value: Any) -> Any: ...

    @abstractmethod
    def _obj(self, value: Any) -> Any: ...

    def _now(self) -> Any:
        return self._ts(self.clock.now())

    def _req_dt(self, value: Any) -> datetime:
        result = self._dt(value)
        assert result is not None
        return result

    # -- decoding
    def _decode(self, row: Mapping[str, Any], ts: Sequence[str], js: Sequence[str]) -> dict[str, Any]:
        out = dict(row)
        for col in ts:
            out[col] = self._dt(out[col])
        for col in js:
            out[col] = self._obj(out[col])
        return out

    def _object(self, row: Mapping[str, Any]) -> AppliedObject:
        data = self._decode(row, ("applied_at", "created_at"), ("spec",))
        data["paused"] = bool(data["paused"])
        return AppliedObject(**data)

    def _run(self, row: Mapping[str, Any]) -> Run:
        return Run(**self._decode(row, _RUN_TS, ("counts",)))

    def _outbox(self, row: Mapping[str, Any]) -> OutboxRow:
        return OutboxRow(**self._decode(row, _OUTBOX_TS, ("context",)))

    def _timer(self, row: Mapping[str, Any]) -> Timer:
        return Timer(**self._decode(row, _TIMER_TS, ("context",)))

    def _redacted_json(self, value: Any) -> Any:
        return self._js(json.loads(redact(canonical_json(value))))

    # ------------------------------------------------------------ applied desired state
    def applied_state(self) -> AppliedState:
        with self._transaction(write=False) as tx:
            head = tx.one("SELECT version, commit_sha, applied_at, store_id FROM applied_state WHERE id = 1")
            objects = tx.rows("SELECT * FROM applied_objects ORDER BY kind, name")
            overrides = tx.rows("SELECT * FROM overrides ORDER BY kind, name")
        assert head is not None
        return AppliedState(
            version=head["version"],
            commit_sha=head["commit_sha"],
            applied_at=self._dt(head["applied_at"]),
            store_id=head["store_id"],
            objects={(r["kind"], r["name"]): self._object(r) for r in objects},
            overrides={(r["kind"], r["name"]): self._override(r) for r in overrides},
        )

    def _override(self, row: Mapping[str, Any]) -> Override:
        return Override(kind=row["kind"], name=row["name"], paused=bool(row["paused"]), actor=row["actor"],
                        reason=row["reason"], created_at=self._req_dt(row["created_at"]))

    def applied_version(self) -> int:
        with self._transaction(write=False) as tx:
            head = tx.one("SELECT version FROM applied_state WHERE id = 1")
        assert head is not None
        return int(head["version"])

    def get_object(self, kind: str, name: str) -> AppliedObject | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT * FROM applied_objects WHERE kind = ? AND name = ?", (kind, name))
        return self._object(row) if row else None

    def spec_by_hash(self, spec_hash: str) -> dict[str, Any] | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT spec FROM spec_versions WHERE spec_hash = ?", (spec_hash,))
        return self._obj(row["spec"]) if row else None

    def apply_changes(self, changes: ChangeSet) -> ApplyOutcome:
        at = self._ts(changes.applied_at)
        cancelled = [0, 0, 0]
        with self._transaction(write=True) as tx:
            head = tx.one("SELECT version FROM applied_state WHERE id = 1" + self.row_lock)
            assert head is not None
            if head["version"] != changes.base_version:
                raise StaleStateError(changes.base_version, int(head["version"]))
            version = head["version"] + 1 if changes.bump_version else head["version"]
            self._write_objects(tx, changes.writes, changes.commit_sha, at, version)
            for key in changes.clear_overrides:
                tx.run("DELETE FROM overrides WHERE kind = ? AND name = ?", key)
            for delete in changes.deletes:
                tx.run("DELETE FROM applied_objects WHERE kind = ? AND name = ?", (delete.kind, delete.name))
                tx.run("DELETE FROM overrides WHERE kind = ? AND name = ?", (delete.kind, delete.name))
                if delete.kind == "Campaign":
                    for index, count in enumerate(self._cancel_campaign(tx, delete.name, "campaign deleted")):
                        cancelled[index] += count
            if changes.bump_version:
                tx.run("UPDATE applied_state SET version = ?, commit_sha = ?, applied_at = ? WHERE id = 1",
                       (version, changes.commit_sha, at))
            self._insert_audit(tx, changes.audit)
        return ApplyOutcome(version=version, cancelled_outbox=cancelled[0], cancelled_runs=cancelled[1],
                            cancelled_timers=cancelled[2], audit_entries=len(changes.audit))

    def _write_objects(self, tx: Tx, writes: Sequence[ObjectWrite], commit_sha: str | None, at: Any,
                       version: int) -> None:
        """Upsert in batches (one round trip per batch on PostgreSQL); created_at is kept on update."""
        if not writes:
            return
        tx.many(
            "INSERT INTO applied_objects (kind, name, spec, spec_hash, commit_sha, applied_at, version,"
            " created_at, paused) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (kind, name) DO UPDATE SET spec = excluded.spec, spec_hash = excluded.spec_hash,"
            " commit_sha = excluded.commit_sha, applied_at = excluded.applied_at, version = excluded.version,"
            " paused = excluded.paused",
            [(w.kind, w.name, self._js(w.spec), w.spec_hash, commit_sha, at, version, at, int(w.paused))
             for w in writes])
        tx.many(
            "INSERT INTO spec_versions (spec_hash, kind, name, spec, commit_sha, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (spec_hash) DO NOTHING",
            [(w.spec_hash, w.kind, w.name, self._js(w.spec), commit_sha, at) for w in writes])

    def _cancel_campaign(self, tx: Tx, campaign: str, reason: str) -> tuple[int, int, int]:
        now = self._now()
        outbox = tx.run(
            "UPDATE outbox SET status = 'cancelled', skip_reason = ?, updated_at = ?"
            " WHERE campaign = ? AND status = 'pending'", (reason, now, campaign))
        runs = tx.run(
            "UPDATE runs SET status = 'cancelled', reason = ?, claimed_by = NULL, lease_until = NULL,"
            " updated_at = ? WHERE campaign = ? AND status IN ('planned', 'materializing')",
            (reason, now, campaign))
        timers = tx.run(
            "UPDATE timers SET status = 'cancelled', updated_at = ? WHERE campaign = ? AND status = 'pending'",
            (now, campaign))
        tx.run("DELETE FROM schedule_marks WHERE campaign = ?", (campaign,))
        return outbox, runs, timers

    def set_override(self, kind: str, name: str, paused: bool, *, actor: str, reason: str | None,
                     audit: AuditRecord) -> tuple[int, bool]:
        with self._transaction(write=True) as tx:
            head = tx.one("SELECT version FROM applied_state WHERE id = 1" + self.row_lock)
            obj = tx.one("SELECT spec, paused FROM applied_objects WHERE kind = ? AND name = ?", (kind, name))
            assert head is not None
            if obj is None:
                raise StoreError(f"{kind} '{name}' has not been applied")
            if bool(obj["paused"]) == paused:
                return int(head["version"]), False
            if _git_paused(self._obj(obj["spec"])) == paused:
                tx.run("DELETE FROM overrides WHERE kind = ? AND name = ?", (kind, name))
            else:
                tx.run(
                    "INSERT INTO overrides (kind, name, paused, actor, reason, created_at) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (kind, name) DO UPDATE SET paused = excluded.paused, actor = excluded.actor,"
                    " reason = excluded.reason, created_at = excluded.created_at",
                    (kind, name, int(paused), actor, reason, self._now()))
            tx.run("UPDATE applied_objects SET paused = ? WHERE kind = ? AND name = ?", (int(paused), kind, name))
            version = int(head["version"]) + 1
            tx.run("UPDATE applied_state SET version = ? WHERE id = 1", (version,))
            self._append_audit(tx, [audit])
        return version, True

    # ------------------------------------------------------------ runs
    def create_run(self, campaign: str, scheduled_for: datetime, *, spec_hash: str, commit_sha: str | None,
                   seed: int, tz_bucket: str = "", status: RunStatus = "planned",
                   reason: str | None = None) -> tuple[Run, bool]:
        now = self._now()
        with self._transaction(write=True) as tx:
            created = tx.run(
                "INSERT INTO runs (campaign, spec_hash, commit_sha, scheduled_for, tz_bucket, status, seed,"
                " reason, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (campaign, scheduled_for, tz_bucket) DO NOTHING",
                (campaign, spec_hash, commit_sha, self._ts(scheduled_for), tz_bucket, status, seed, reason,
                 now, now))
            row = tx.one("SELECT * FROM runs WHERE campaign = ? AND scheduled_for = ? AND tz_bucket = ?",
                         (campaign, self._ts(scheduled_for), tz_bucket))
        assert row is not None
        return self._run(row), created == 1

    def get_run(self, run_id: int) -> Run | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT * FROM runs WHERE id = ?", (run_id,))
        return self._run(row) if row else None

    def list_runs(self, campaign: str | None = None, statuses: Sequence[str] = (), limit: int = 100) -> list[Run]:
        where = _Where().equals("campaign", campaign).any_of("status", statuses)
        sql = f"SELECT * FROM runs WHERE {where.sql} ORDER BY scheduled_for DESC, id DESC LIMIT ?"
        with self._transaction(write=False) as tx:
            rows = tx.rows(sql, (*where.params, limit))
        return [self._run(r) for r in rows]

    def claim_runs(self, worker_id: str, now: datetime, lease: timedelta, limit: int = 10) -> list[Run]:
        rows = self._claim_due("runs", "scheduled_for", "planned", "materializing", worker_id, now, lease, limit)
        return sorted((self._run(r) for r in rows), key=lambda r: (r.scheduled_for, r.id))

    def _claim_due(self, table: str, due_column: str, waiting: str, claimed: str, worker_id: str,
                   now: datetime, lease: timedelta, limit: int) -> list[Any]:
        """Claim rows that are due (`waiting` with due_column <= now) or whose claim lease expired."""
        at = self._ts(now)
        with self._transaction(write=True) as tx:
            return tx.rows(
                f"UPDATE {table} SET status = '{claimed}', claimed_by = ?, lease_until = ?, updated_at = ?"
                f" WHERE id IN (SELECT o.id FROM {table} o WHERE (o.status = '{waiting}' AND o.{due_column} <= ?)"
                f" OR (o.status = '{claimed}' AND o.lease_until <= ?)"
                f" ORDER BY o.{due_column}, o.id LIMIT ?" + self.claim_lock + ") RETURNING *",
                (worker_id, self._ts(now + lease), at, at, at, limit))

    def update_run(self, run_id: int, *, status: RunStatus | None = None, targeted: int | None = None,
                   enqueued: int | None = None, counts: Mapping[str, Any] | None = None,
                   reason: str | None = None, worker_id: str | None = None) -> Run | None:
        sets, params = ["updated_at = ?"], [self._now()]
        for column, value in (("status", status), ("targeted", targeted), ("enqueued", enqueued),
                              ("reason", reason)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if counts is not None:
            sets.append("counts = ?")
            params.append(self._js(dict(counts)))
        if status is not None and status != "materializing":
            sets.append("claimed_by = NULL, lease_until = NULL")
        where = "id = ?"
        params.append(run_id)
        if worker_id is not None:
            where += " AND status = 'materializing' AND claimed_by = ?"
            params.append(worker_id)
        with self._transaction(write=True) as tx:
            row = tx.one(f"UPDATE runs SET {', '.join(sets)} WHERE {where} RETURNING *", params)
        return self._run(row) if row else None

    def finish_runs(self) -> list[int]:
        with self._transaction(write=True) as tx:
            rows = tx.rows(
                "UPDATE runs SET status = 'done', updated_at = ? WHERE status = 'sending' AND NOT EXISTS"
                " (SELECT 1 FROM outbox o WHERE o.run_id = runs.id AND o.status IN ('pending', 'claimed'))"
                " RETURNING id", (self._now(),))
        return sorted(int(r["id"]) for r in rows)

    def last_run_time(self, campaign: str) -> datetime | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT max(scheduled_for) AS latest FROM runs WHERE campaign = ?", (campaign,))
        return self._dt(row["latest"]) if row else None

    # ------------------------------------------------------------ scheduler bookkeeping
    def schedule_marks(self, campaigns: Sequence[str] | None = None) -> dict[str, ScheduleMark]:
        with self._transaction(write=False) as tx:
            if campaigns is None:
                rows = tx.rows("SELECT * FROM schedule_marks")
            else:
                rows = []
                for chunk in _chunks(list(campaigns)):
                    rows += tx.rows(f"SELECT * FROM schedule_marks WHERE campaign IN ({_marks(len(chunk))})", chunk)
        marks = (ScheduleMark(**self._decode(r, ("watermark", "next_due_at", "updated_at"), ())) for r in rows)
        return {m.campaign: m for m in marks}

    def set_schedule_mark(self, campaign: str, *, watermark: datetime | None,
                          next_due_at: datetime | None) -> None:
        with self._transaction(write=True) as tx:
            tx.run("INSERT INTO schedule_marks (campaign, watermark, next_due_at, updated_at) VALUES (?, ?, ?, ?)"
                   " ON CONFLICT (campaign) DO UPDATE SET watermark = excluded.watermark,"
                   " next_due_at = excluded.next_due_at, updated_at = excluded.updated_at",
                   (campaign, self._ts(watermark), self._ts(next_due_at), self._now()))

    def due_campaigns(self, now: datetime) -> list[str]:
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT campaign FROM schedule_marks WHERE next_due_at <= ?"
                           " ORDER BY next_due_at, campaign", (self._ts(now),))
        return [r["campaign"] for r in rows]

    # ------------------------------------------------------------ outbox
    def enqueue(self, items: Sequence[OutboxItem]) -> int:
        if not items:
            return 0
        now = self._now()
        with self._transaction(write=True) as tx:
            cancelled = self._cancelled_runs(tx, {i.run_id for i in items if i.run_id is not None})
            params = [
                (i.idempotency_key, i.run_id, i.campaign, i.spec_hash, i.user_id, i.phone,
                 self._js(dict(i.context)), self._ts(i.not_before), self._ts(i.expires_at), i.status,
                 i.skip_reason, i.limit_day, now, now)
                for i in items if i.run_id not in cancelled
            ]
            if not params:
                return 0
            return tx.many(
                "INSERT INTO outbox (idempotency_key, run_id, campaign, spec_hash, user_id, phone, context,"
                " not_before, expires_at, status, skip_reason, limit_day, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                params)

    def _cancelled_runs(self, tx: Tx, run_ids: set[int]) -> set[int]:
        """Runs cancelled (campaign deleted) must not gain messages. Locking the run rows orders this
        enqueue against a concurrent delete, whose cancel then sees the rows inserted here."""
        cancelled = set()
        for run_id in sorted(run_ids):
            row = tx.one("SELECT status FROM runs WHERE id = ?" + self.row_lock, (run_id,))
            if row is not None and row["status"] == "cancelled":
                cancelled.add(run_id)
        return cancelled

    def claim(self, worker_id: str, limit: int, now: datetime, lease: timedelta) -> list[OutboxRow]:
        at = self._ts(now)
        with self._transaction(write=True) as tx:
            rows = tx.rows(
                "UPDATE outbox SET status = 'claimed', claimed_by = ?, lease_until = ?,"
                " claim_count = claim_count + 1, updated_at = ?"
                " WHERE id IN (SELECT o.id FROM outbox o WHERE"
                " ((o.status = 'pending' AND o.not_before <= ?) OR (o.status = 'claimed' AND o.lease_until <= ?))"
                " AND (o.expires_at IS NULL OR o.expires_at > ?)"
                " AND NOT EXISTS (SELECT 1 FROM applied_objects a"
                " WHERE a.kind = 'Campaign' AND a.name = o.campaign AND a.paused = 1)"
                " ORDER BY o.not_before, o.id LIMIT ?" + self.claim_lock + ") RETURNING *",
                (worker_id, self._ts(now + lease), at, at, at, at, limit))
        return sorted((self._outbox(r) for r in rows), key=lambda r: (r.not_before, r.id))

    def complete(self, worker_id: str, results: Sequence[SendResult]) -> list[int]:
        for result in results:
            if result.status not in ("sent", "failed"):
                raise ValueError(f"a send result is 'sent' or 'failed', not {result.status!r}")
        now = self._now()
        with self._transaction(write=True) as tx:
            accepted = self._record_results(tx, worker_id, results, now)
            if accepted:
                self._match_early_receipts(tx, accepted)
        return accepted

    def _record_results(self, tx: Tx, worker_id: str, results: Sequence[SendResult], now: Any) -> list[int]:
        """Write outcomes of rows still claimed by worker_id; the ids written."""
        accepted: list[int] = []
        for result in results:
            changed = tx.run(
                "UPDATE outbox SET status = ?, provider = ?, provider_message_id = ?,"
                " attempts = attempts + ?, last_error = ?, segments = ?, cost = ?, sent_at = ?,"
                " doubt_settled = coalesce(?, doubt_settled), doubt = coalesce(?, doubt),"
                " claimed_by = NULL, lease_until = NULL, updated_at = ?"
                " WHERE id = ? AND status = 'claimed' AND claimed_by = ?",
                (result.status, result.provider, result.provider_message_id, result.attempts,
                 redact(result.error) if result.error else None, result.segments, result.cost,
                 now if result.status == "sent" else None, result.doubt_settled, result.doubt, now, result.outbox_id,
                 worker_id))
            if changed:
                accepted.append(result.outbox_id)
        return accepted

    def _match_early_receipts(self, tx: Tx, outbox_ids: Sequence[int]) -> None:
        """A receipt can arrive before the worker records the send; attach it now."""
        for chunk in _chunks(list(outbox_ids)):
            early = tx.rows(
                "SELECT r.id AS receipt_id, r.status, r.error_code, r.received_at, o.id AS outbox_id"
                " FROM receipts r JOIN outbox o ON o.provider = r.provider"
                " AND o.provider_message_id = r.provider_message_id"
                f" WHERE r.outbox_id IS NULL AND o.id IN ({_marks(len(chunk))}) ORDER BY r.id", chunk)
            for receipt in early:
                tx.run("UPDATE receipts SET outbox_id = ? WHERE id = ?", (receipt["outbox_id"], receipt["receipt_id"]))
                self._apply_receipt(tx, receipt["outbox_id"], receipt["status"], receipt["error_code"],
                                    receipt["received_at"])

    def _apply_receipt(self, tx: Tx, outbox_id: int, status: str, error_code: str | None, at: Any) -> None:
        # A final status (delivered/failed/undelivered) is never replaced by an intermediate 'sent'.
        guard = "" if status in FINAL_RECEIPTS else " AND (delivery_status IS NULL OR delivery_status = 'sent')"
        tx.run("UPDATE outbox SET delivery_status = ?, delivery_error_code = ?, delivery_updated_at = ?,"
               " updated_at = ? WHERE id = ?" + guard, (status, error_code, at, at, outbox_id))

    def release(self, worker_id: str, ids: Sequence[int], *, retry_at: datetime | None = None,
                error: str | None = None) -> int:
        now = self._now()
        total = 0
        with self._transaction(write=True) as tx:
            for chunk in _chunks(list(ids)):
                sets = ("status = 'pending', claimed_by = NULL, lease_until = NULL,"
                        " released_claims = claim_count, updated_at = ?")
                params: list[Any] = [now]
                if retry_at is not None:
                    sets += ", not_before = ?"
                    params.append(self._ts(retry_at))
                if error is not None:
                    sets += ", last_error = ?"
                    params.append(redact(error))
                total += tx.run(
                    f"UPDATE outbox SET {sets} WHERE id IN ({_marks(len(chunk))})"
                    " AND status = 'claimed' AND claimed_by = ?", (*params, *chunk, worker_id))
        return total

    def release_in_doubt(self, worker_id: str, doubts: Mapping[int, str], *, retry_at: datetime) -> int:
        now, total = self._now(), 0
        with self._transaction(write=True) as tx:
            for outbox_id, doubt in doubts.items():
                total += tx.run(
                    "UPDATE outbox SET status = 'pending', claimed_by = NULL, lease_until = NULL,"
                    " released_claims = claim_count, doubt = ?, doubt_settled = NULL, last_error = ?,"
                    " not_before = ?, updated_at = ? WHERE id = ? AND status = 'claimed' AND claimed_by = ?",
                    (redact(doubt), "in doubt: " + redact(str(json.loads(doubt).get("reason", ""))),
                     self._ts(retry_at), now, outbox_id, worker_id))
        return total

    def mark_attempted(self, keys: Sequence[str]) -> int:
        total = 0
        with self._transaction(write=True) as tx:
            for chunk in _chunks(list(keys)):
                total += tx.run(
                    f"UPDATE outbox SET attempted_claim = claim_count WHERE idempotency_key IN ({_marks(len(chunk))})"
                    " AND status = 'claimed' AND attempted_claim <> claim_count", chunk)
        return total

    def skip_in_doubt(self, worker_id: str, ids: Sequence[int], reason: str, *, doubt: str | None = None) -> int:
        now, total = self._now(), 0
        with self._transaction(write=True) as tx:
            for chunk in _chunks(list(ids)):
                total += tx.run(
                    "UPDATE outbox SET status = 'skipped', skip_reason = ?, doubt_settled = 'skipped',"
                    " doubt = coalesce(?, doubt), claimed_by = NULL, lease_until = NULL, updated_at = ?"
                    f" WHERE id IN ({_marks(len(chunk))}) AND status = 'claimed' AND claimed_by = ?",
                    (redact(reason), doubt, now, *chunk, worker_id))
        return total

    def in_doubt_counts(self, *, campaign: str | None = None, run_id: int | None = None) -> dict[str, int]:
        where = _Where().when(True, "doubt IS NOT NULL").equals("campaign", campaign).equals("run_id", run_id)
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT coalesce(doubt_settled, 'unsettled') AS how, count(*) AS n FROM outbox"
                           f" WHERE {where.sql} GROUP BY coalesce(doubt_settled, 'unsettled')", where.params)
        return {str(r["how"]): int(r["n"]) for r in rows}

    def skip(self, ids: Sequence[int], reason: str, *, worker_id: str | None = None) -> int:
        now = self._now()
        total = 0
        owner = " OR (status = 'claimed' AND claimed_by = ?)" if worker_id is not None else ""
        with self._transaction(write=True) as tx:
            for chunk in _chunks(list(ids)):
                params: list[Any] = [reason, now, *chunk]
                if worker_id is not None:
                    params.append(worker_id)
                total += tx.run(
                    "UPDATE outbox SET status = 'skipped', skip_reason = ?, claimed_by = NULL, lease_until = NULL,"
                    f" updated_at = ? WHERE id IN ({_marks(len(chunk))}) AND (status = 'pending'{owner})",
                    params)
        return total

    def expire(self, now: datetime) -> int:
        at = self._ts(now)
        with self._transaction(write=True) as tx:
            return tx.run(
                "UPDATE outbox SET status = 'expired', claimed_by = NULL, lease_until = NULL, updated_at = ?"
                " WHERE expires_at IS NOT NULL AND expires_at <= ?"
                " AND (status = 'pending' OR (status = 'claimed' AND lease_until <= ?))",
                (self._now(), at, at))

    def cancel_pending(self, campaign: str, run_id: int | None = None) -> int:
        sql = "UPDATE outbox SET status = 'cancelled', updated_at = ? WHERE campaign = ? AND status = 'pending'"
        params: list[Any] = [self._now(), campaign]
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        with self._transaction(write=True) as tx:
            return tx.run(sql, params)

    def health_problems(self, now: datetime, *, failed_since: datetime, stuck_after: timedelta,
                        limit: int = 20) -> list[HealthProblem]:
        stale = self._ts(now - stuck_after)
        with self._transaction(write=False) as tx:
            failed = tx.rows("SELECT id, campaign, reason FROM runs WHERE status = 'failed' AND updated_at >= ?"
                             " ORDER BY updated_at DESC, id DESC LIMIT ?", (self._ts(failed_since), limit))
            stuck = {table: tx.one(f"SELECT count(*) AS n FROM {table} WHERE status = ? AND lease_until < ?",
                                   (claimed, stale))
                     for table, claimed in (("runs", "materializing"), ("outbox", "claimed"), ("timers", "claimed"))}
        problems = [HealthProblem("run", f"{r['campaign']} run {r['id']}", f"failed: {r['reason']}") for r in failed]
        for table, row in stuck.items():
            count = int(row["n"]) if row else 0
            if count:
                problems.append(HealthProblem(table.rstrip("s"), f"{count} claimed",
                                              f"claim lease ended over {int(stuck_after.total_seconds())} s ago"
                                              " and nobody took them over"))
        return problems

    def queue_depth(self) -> int:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT count(*) AS n FROM outbox WHERE status IN ('pending', 'claimed')")
        return int(row["n"]) if row else 0

    def outbox_status_counts(self) -> dict[str, int]:
        with self._transaction(write=False) as tx:
            rows = tx.rows("SELECT status, count(*) AS n FROM outbox GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

    def get_outbox(self, ids: Sequence[int]) -> list[OutboxRow]:
        found: list[OutboxRow] = []
        with self._transaction(write=False) as tx:
            for chunk in _chunks(list(ids)):
                rows = tx.rows(f"SELECT * FROM outbox WHERE id IN ({_marks(len(chunk))})", chunk)
                found.extend(self._outbox(r) for r in rows)
        return sorted(found, key=lambda r: r.id)

    def list_outbox(self, *, run_id: int | None = None, campaign: str | None = None,
                    statuses: Sequence[str] = (), limit: int = 1000) -> list[OutboxRow]:
        where = _Where().equals("run_id", run_id).equals("campaign", campaign).any_of("status", statuses)
        with self._transaction(write=False) as tx:
            rows = tx.rows(f"SELECT * FROM outbox WHERE {where.sql} ORDER BY id LIMIT ?", (*where.params, limit))
        return [self._outbox(r) for r in rows]

    def find_by_provider_message_id(self, provider: str, provider_message_id: str) -> OutboxRow | None:
        with self._transaction(write=False) as tx:
            row = self._find_sent(tx, provider, provider_message_id)
        return self._outbox(row) if row else None

    def _find_sent(self, tx: Tx, provider: str, message_id: str) -> dict[str, Any] | None:
        row = tx.one("SELECT * FROM outbox WHERE provider = ? AND provider_message_id = ? ORDER BY id DESC LIMIT 1",
                     (provider, message_id))
        if row is not None:
            return row
        # Receipt endpoints may know the provider type ("twilio") rather than its name ("twilio-us"):
        # fall back to the message id alone when exactly one message carries it.
        rows = tx.rows("SELECT * FROM outbox WHERE provider_message_id = ? LIMIT 2", (message_id,))
        return rows[0] if len(rows) == 1 else None

    def record_receipt(self, provider: str, provider_message_id: str, status: str,
                       error_code: str | None, raw: Any) -> bool:
        normalized = status.lower()
        if normalized not in RECEIPT_STATUSES:
            raise ValueError(f"receipt status must be one of {', '.join(RECEIPT_STATUSES)} (got {status!r})")
        now = self._now()
        with self._transaction(write=True) as tx:
            row = self._find_sent(tx, provider, provider_message_id)
            outbox_id = row["id"] if row else None
            tx.run(
                "INSERT INTO receipts (provider, provider_message_id, status, error_code, raw, outbox_id,"
                " received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (provider, provider_message_id, normalized, error_code, self._redacted_json(raw), outbox_id, now))
            if outbox_id is not None:
                self._apply_receipt(tx, outbox_id, normalized, error_code, now)
        return outbox_id is not None

    # ------------------------------------------------------------ counts
    def sent_count(self, user_ids: Sequence[str], since: datetime, *, campaign: str | None = None,
                   until: datetime | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        where = self._window(since, until, campaign)
        with self._transaction(write=False) as tx:
            for chunk in _chunks(list(dict.fromkeys(user_ids))):
                rows = tx.rows(
                    f"SELECT user_id, count(*) AS n FROM outbox WHERE user_id IN ({_marks(len(chunk))})"
                    f" AND {where.sql} GROUP BY user_id", (*chunk, *where.params))
                counts.update({r["user_id"]: int(r["n"]) for r in rows})
        return counts

    def _window(self, since: datetime | None, until: datetime | None, campaign: str | None, *,
                day: str | None = None, created_since: datetime | None = None) -> _Where:
        """Counted rows (sent, claimed, pending) with send time in [since, until) — both bounds: a
        message queued for a later day is not "today" — of limit day `day`, queued since `created_since`."""
        return (_Where().any_of("status", COUNTED_STATUSES)
                .when(since is not None, "coalesce(sent_at, not_before) >= ?", self._ts(since))
                .when(until is not None, "coalesce(sent_at, not_before) < ?", self._ts(until))
                .equals("campaign", campaign)
                .equals("limit_day", day)
                .when(created_since is not None, "created_at >= ?", self._ts(created_since)))

    def campaign_sent_count(self, campaign: str, since: datetime | None = None,
                            until: datetime | None = None, *, day: str | None = None,
                            created_since: datetime | None = None) -> int:
        where = self._window(since, until, campaign, day=day, created_since=created_since)
        with self._transaction(write=False) as tx:
            row = tx.one(f"SELECT count(*) AS n FROM outbox WHERE {where.sql}", where.params)
        return int(row["n"]) if row else 0

    def campaign_cost(self, campaign: str, since: datetime | None = None, run_id: int | None = None) -> float:
        sql = "SELECT coalesce(sum(cost), 0) AS total FROM outbox WHERE campaign = ? AND status = 'sent'"
        params: list[Any] = [campaign]
        if since is not None:
            sql += " AND sent_at >= ?"
            params.append(self._ts(since))
        if run_id is not None:
            sql += " AND run_id = ?"
            params.append(run_id)
        with self._transaction(write=False) as tx:
            row = tx.one(sql, params)
        return float(row["total"]) if row else 0.0

    # ------------------------------------------------------------ timers
    def add_timer(self, campaign: str, user_id: str, fire_at: datetime, key: str,
                  context: Mapping[str, Any] | None = None) -> bool:
        now = self._now()
        with self._transaction(write=True) as tx:
            return tx.run(
                "INSERT INTO timers (campaign, user_id, key, fire_at, context, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (campaign, key) DO NOTHING",
                (campaign, user_id, key, self._ts(fire_at), self._js(dict(context or {})), now, now)) == 1

    def cancel_timers(self, campaign: str, user_id: str, key_prefix: str | None = None,
                      fire_between: tuple[datetime, datetime] | None = None) -> int:
        sql = ("UPDATE timers SET status = 'cancelled', updated_at = ?"
               " WHERE campaign = ? AND user_id = ? AND status = 'pending'")
        params: list[Any] = [self._now(), campaign, user_id]
        if key_prefix:
            sql += " AND key LIKE ? ESCAPE '\\'"
            params.append(_like_prefix(key_prefix))
        if fire_between is not None:
            sql += " AND fire_at >= ? AND fire_at <= ?"
            params += [self._ts(fire_between[0]), self._ts(fire_between[1])]
        with self._transaction(write=True) as tx:
            return tx.run(sql, params)

    def due_timers(self, worker_id: str, now: datetime, limit: int, lease: timedelta) -> list[Timer]:
        rows = self._claim_due("timers", "fire_at", "pending", "claimed", worker_id, now, lease, limit)
        return sorted((self._timer(r) for r in rows), key=lambda t: (t.fire_at, t.id))

    def _finish_timers(self, worker_id: str, ids: Sequence[int], status: str) -> int:
        total = 0
        with self._transaction(write=True) as tx:
            for chunk in _chunks(list(ids)):
                total += tx.run(
                    "UPDATE timers SET status = ?, claimed_by = NULL, lease_until = NULL, updated_at = ?"
                    f" WHERE id IN ({_marks(len(chunk))}) AND status = 'claimed' AND claimed_by = ?",
                    (status, self._now(), *chunk, worker_id))
        return total

    def complete_timers(self, worker_id: str, ids: Sequence[int]) -> int:
        return self._finish_timers(worker_id, ids, "fired")

    def release_timers(self, worker_id: str, ids: Sequence[int]) -> int:
        return self._finish_timers(worker_id, ids, "pending")

    # ------------------------------------------------------------ reports
    def delivery_counts(self, *, campaign: str | None = None, run_id: int | None = None,
                        since: datetime | None = None) -> list[DeliveryCount]:
        where = (_Where().equals("campaign", campaign).equals("run_id", run_id)
                 .when(since is not None, "created_at >= ?", since and self._ts(since)))
        columns = "campaign, run_id, provider, status, delivery_status, skip_reason"
        with self._transaction(write=False) as tx:
            rows = tx.rows(f"SELECT {columns}, count(*) AS n FROM outbox WHERE {where.sql}"
                           f" GROUP BY {columns}", where.params)
        counts = [DeliveryCount(campaign=r["campaign"], run_id=r["run_id"], provider=r["provider"],
                                status=r["status"], delivery_status=r["delivery_status"],
                                skip_reason=r["skip_reason"], count=int(r["n"])) for r in rows]
        return sorted(counts, key=lambda c: (c.campaign, c.run_id or 0, c.provider or "", c.status,
                                             c.delivery_status or "", c.skip_reason or ""))

    # ------------------------------------------------------------ bookkeeping and coordination
    def kv_get(self, key: str) -> Any | None:
        with self._transaction(write=False) as tx:
            row = tx.one("SELECT value FROM kv WHERE key = ?", (key,))
        return self._obj(row["value"]) if row else None

    def kv_set(self, key: str, value: Any) -> None:
        with self._transaction(write=True) as tx:
            tx.run("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key)"
                   " DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                   (key, self._redacted_json(value), self._now()))

    def try_lease(self, name: str, owner: str, now: datetime, ttl: timedelta) -> bool:
        with self._transaction(write=True) as tx:
            return tx.run(
                "INSERT INTO leases (name, owner, lease_until) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE"
                " SET owner = excluded.owner, lease_until = excluded.lease_until"
                " WHERE leases.owner = excluded.owner OR leases.lease_until <= ?",
                (name, owner, self._ts(now + ttl), self._ts(now))) == 1

    def release_lease(self, name: str, owner: str) -> bool:
        with self._transaction(write=True) as tx:
            return tx.run("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner)) == 1

    # ------------------------------------------------------------ audit
    def append_audit(self, records: Sequence[AuditRecord]) -> list[int]:
        with self._transaction(write=True) as tx:
            return self._append_audit(tx, records)

    def append_audit_bulk(self, records: Sequence[AuditRecord]) -> None:
        with self._transaction(write=True) as tx:
            self._insert_audit(tx, records)

    def _audit_params(self, record: AuditRecord) -> tuple[Any, ...]:
        return (self._ts(record.at), redact(record.actor), record.action, record.kind, record.name,
                record.commit_sha, self._redacted_json(dict(record.details)))

    def _insert_audit(self, tx: Tx, records: Sequence[AuditRecord]) -> None:
        if records:
            tx.many("INSERT INTO audit (at, actor, action, kind, name, commit_sha, details)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)", [self._audit_params(r) for r in records])

    def _append_audit(self, tx: Tx, records: Sequence[AuditRecord]) -> list[int]:
        ids: list[int] = []
        for record in records:
            row = tx.one(
                "INSERT INTO audit (at, actor, action, kind, name, commit_sha, details)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id", self._audit_params(record))
            assert row is not None
            ids.append(int(row["id"]))
        return ids

    def query_audit(self, query: AuditQuery) -> list[AuditEntry]:
        if query.commit and len(query.commit) < 4:
            raise ValueError("a commit prefix needs at least 4 characters")
        where = (_Where()
                 .when(query.campaign is not None, "kind = 'Campaign' AND name = ?", query.campaign)
                 .equals("kind", query.kind).equals("name", query.name)
                 .when(bool(query.commit), "commit_sha LIKE ? ESCAPE '\\'",
                       query.commit and _like_prefix(query.commit.lower()))
                 .any_of("action", query.actions)
                 .when(query.since is not None, "at >= ?", query.since and self._ts(query.since))
                 .when(query.until is not None, "at < ?", query.until and self._ts(query.until)))
        order = "DESC" if query.newest_first else "ASC"
        with self._transaction(write=False) as tx:
            rows = tx.rows(f"SELECT * FROM audit WHERE {where.sql} ORDER BY id {order} LIMIT ?",
                           (*where.params, query.limit))
        return [AuditEntry(**self._decode(r, ("at",), ("details",))) for r in rows]


def utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"naive datetime {value.isoformat()} given to the state store; use UTC-aware times")
    return value.astimezone(UTC)
