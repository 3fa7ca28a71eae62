"""The audience store: users and events, queried with compiled segment rules.

Two engines share this logic and differ only in connections, bulk loading and a few SQL functions:
DuckDB (embedded default, columnar — fast analytical segment queries on one machine) and PostgreSQL
(production, shared by several daemons). Open one with `open_audience_store(url)`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Literal

from ..models.segment import PropertyPredicate
from .compiler import MEMBER_COLUMNS, ColumnType, Compiler, Dialect, Fragment, Rule, frag, join, param, wrap
from .records import EventRecord, Member, UserRecord

Order = Literal["none", "id", "random", "created"]  # none: engine order, no sort (least memory)
DEFAULT_BATCH = 1000
CONVERSION_CHUNK = 5000  # (key, user, sent_at) pairs per conversion query
CONSENT_CHUNK = 500  # user ids per send-time consent query
PAIR_COLUMNS: tuple[tuple[str, ColumnType], ...] = (
    ("pair_key", "text"), ("user_id", "text"), ("window_start", "timestamptz"), ("window_end", "timestamptz"))


class AudienceStoreError(RuntimeError):
    """The store cannot be opened or used (locked file, unreachable database, bad URL)."""


EventKey = tuple[str, str, str]  # (user_id, name, client event id): stored at most once


def event_key(record: EventRecord) -> EventKey | None:
    return None if record.id is None else (record.user_id, record.name, record.id)


@dataclass(frozen=True)
class EventWrite:
    """What write_events did, per given record in order: the record as it is stored (a duplicate
    carries the ts its first copy was stored with) and whether it was a duplicate (not stored again)."""

    events: list[EventRecord]
    duplicate: list[bool]

    @property
    def stored(self) -> int:
        return self.duplicate.count(False)


@dataclass(frozen=True)
class ReachSample:
    """Keep only users whose per-(campaign, user) hash falls under `percent` (stable across runs)."""

    campaign: str
    percent: float


@dataclass(frozen=True)
class AudienceQuery:
    rules: Rule | None
    now: datetime
    sample: ReachSample | None = None
    order: Order = "none"
    seed: int | None = None
    limit: int | None = None
    user_id: str | None = None


@dataclass(frozen=True)
class StoreStats:
    users: int
    reachable: int
    opted_out: int
    invalid_phone: int
    events: int


def merge_user_records(records: Iterable[UserRecord]) -> list[UserRecord]:
    """Collapse repeated ids in one batch: later values win, property patches accumulate."""
    merged: dict[str, UserRecord] = {}
    for record in records:
        earlier = merged.get(record.id)
        if earlier is None:
            merged[record.id] = record
            continue
        given = {name: getattr(record, name) for name in ("phone", "phone_valid", "timezone", "country",
                                                          "created_at", "opted_out")
                 if getattr(record, name) is not None}
        merged[record.id] = replace(earlier, **given, properties={**earlier.properties, **record.properties})
    return list(merged.values())


class AudienceStore(ABC):
    """Users and events. Thread-safe; streams (iter_members) may run alongside other calls."""

    dialect: Dialect

    def __init__(self) -> None:
        self.compiler = Compiler(self.dialect)

    # -- engine specifics ---------------------------------------------------------------
    @abstractmethod
    def _fetchall(self, query: Fragment) -> list[tuple[Any, ...]]: ...

    @abstractmethod
    def _stream(self, query: Fragment, batch_size: int) -> Iterator[list[tuple[Any, ...]]]: ...

    @abstractmethod
    def _merge_users(self, records: Sequence[UserRecord], now: datetime) -> None: ...

    @abstractmethod
    def _append_events(self, records: Sequence[EventRecord]) -> dict[EventKey, datetime]:
        """Atomically store every record without a client id and every record whose key is not stored
        yet; return the stored ts of each key that was (its record is not stored again). The records'
        keys are distinct."""

    @abstractmethod
    def close(self) -> None: ...

    def _decode_properties(self, value: Any) -> dict[str, Any]:
        if isinstance(value, str):
            decoded = json.loads(value)
            return decoded if isinstance(decoded, dict) else {}
        return value if isinstance(value, dict) else {}

    def __enter__(self) -> AudienceStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- writes -------------------------------------------------------------------------
    def upsert_users(self, records: Iterable[UserRecord], *, now: datetime) -> int:
        """Insert new users, update given fields of known ones (property patch: null removes a key).

        `now` is the created_at of new users that do not state one.
        """
        batch = merge_user_records(records)
        if batch:
            self._merge_users(batch, now)
        return len(batch)

    def insert_events(self, records: Iterable[EventRecord]) -> int:
        """Store events; returns how many were stored (see write_events for client ids)."""
        return self.write_events(records).stored

    def write_events(self, records: Iterable[EventRecord]) -> EventWrite:
        """Store events, each client event id at most once per user and event name: a record whose
        (user_id, name, id) is already stored, or appears earlier in `records`, is a duplicate and is
        not stored again. Records without an id are always stored. All or nothing."""
        batch = list(records)
        first: dict[EventKey, int] = {}
        for index, record in enumerate(batch):
            key = event_key(record)
            if key is not None:
                first.setdefault(key, index)
        unique = [r for i, r in enumerate(batch) if (key := event_key(r)) is None or first[key] == i]
        known = self._append_events(unique) if unique else {}
        events, duplicate = [], []
        for index, record in enumerate(batch):
            key = event_key(record)
            if key is None or (first[key] == index and key not in known):
                events.append(record)
                duplicate.append(False)
                continue
            stored_ts = known.get(key, batch[first[key]].ts)
            events.append(replace(record, ts=stored_ts))
            duplicate.append(True)
        return EventWrite(events, duplicate)

    # -- audience queries ---------------------------------------------------------------
    def _from(self, query: AudienceQuery) -> Fragment:
        """FROM … WHERE … for a query (reach sample and single-user filters included)."""
        condition = self.compiler.audience_from(query.rules, query.now, query.user_id)
        if query.sample is not None and query.sample.percent < 100:
            from .semantics import reach_threshold

            condition = wrap("{} AND {} < {}", condition, self.compiler.reach_bucket(query.sample.campaign),
                             param(reach_threshold(query.sample.percent)))
        return condition

    def count(self, rules: Rule | None, now: datetime) -> int:
        """Users that qualify (reachable: subscribed, valid phone) for `rules` at `now`."""
        return self.count_query(AudienceQuery(rules, now))

    def count_query(self, query: AudienceQuery) -> int:
        rows = self._fetchall(wrap("SELECT count(*) {}", self._from(query)))
        return int(rows[0][0])

    def reach_counts(self, rules: Rule | None, now: datetime, sample: ReachSample | None) -> tuple[int, int]:
        """(qualifying users, of those in the reach sample) in one pass."""
        source = self._from(AudienceQuery(rules, now))
        if sample is None or sample.percent >= 100:
            total = int(self._fetchall(wrap("SELECT count(*) {}", source))[0][0])
            return total, total
        from .semantics import reach_threshold

        bucket = self.compiler.reach_bucket(sample.campaign)
        query = wrap("SELECT count(*), count(*) FILTER (WHERE {} < {}) {}",
                     bucket, param(reach_threshold(sample.percent)), source)
        total, sampled = self._fetchall(query)[0]
        return int(total), int(sampled or 0)

    def _order(self, query: AudienceQuery) -> Fragment | None:
        if query.order == "none":
            return None
        by_id = self.dialect.byte_order(Fragment("u.id"))
        if query.order == "random":
            if query.seed is None:
                raise ValueError("a random order needs a seed")
            return wrap("{}, {}", self.compiler.subset_order(query.seed), by_id)
        if query.order == "created":
            return wrap("u.created_at NULLS LAST, {}", by_id)
        return by_id

    def member_query(self, query: AudienceQuery) -> Fragment:
        sql = wrap(f"SELECT {MEMBER_COLUMNS} {{}}", self._from(query))
        order = self._order(query)
        if order is not None:
            sql = wrap("{} ORDER BY {}", sql, order)
        if query.limit is not None:
            sql = wrap("{} LIMIT {}", sql, param(max(0, query.limit)))
        return sql

    def iter_members(self, rules: Rule | None, now: datetime, *, batch_size: int = DEFAULT_BATCH,
                     order: Order = "none") -> Iterator[list[Member]]:
        """Stream qualifying users in batches; memory stays bounded by batch_size.

        The default order is the engine's (no sort, so a million members stream in little memory);
        order="id" sorts by user id (byte order) at the cost of a sort in the engine."""
        return self.iter_query(AudienceQuery(rules, now, order=order), batch_size=batch_size)

    def iter_query(self, query: AudienceQuery, *, batch_size: int = DEFAULT_BATCH) -> Iterator[list[Member]]:
        if query.limit is not None and query.limit <= 0:
            return
        for rows in self._stream(self.member_query(query), batch_size):
            yield [self._member(row) for row in rows]

    def _member(self, row: tuple[Any, ...], reachable: bool = True) -> Member:
        user_id, phone, timezone, country, properties, created_at = row[:6]
        return Member(user_id=user_id, phone=phone or "", timezone=timezone, country=country,
                      properties=self._decode_properties(properties), created_at=created_at,
                      reachable=reachable)

    def user_qualifies(self, rules: Rule | None, user_id: str, now: datetime,
                       sample: ReachSample | None = None) -> bool:
        """Is one user (reachable and in the reach sample) in the audience? For live triggers."""
        return self.count_query(AudienceQuery(rules, now, sample=sample, user_id=user_id)) > 0

    def get_user(self, user_id: str) -> Member | None:
        rows = self._fetchall(frag(f"SELECT {MEMBER_COLUMNS}, (u.opted_out = FALSE AND u.phone_valid = TRUE) "
                                   "FROM users u WHERE u.id = ?", user_id))
        if not rows:
            return None
        return self._member(rows[0], reachable=bool(rows[0][6]))

    # -- events -------------------------------------------------------------------------
    def count_events(self, user_id: str, name: str, *, now: datetime, since: datetime | None = None,
                     where: Sequence[PropertyPredicate] = ()) -> int:
        """How often `user_id` did `name` in [since, now], with optional property filters."""
        condition = self.compiler.event_filter(name, now, since, where)
        rows = self._fetchall(wrap("SELECT count(*) FROM events e WHERE e.user_id = {} AND {}",
                                   param(user_id), condition))
        return int(rows[0][0])

    def converted_keys(self, pairs: Iterable[tuple[str, str, datetime]], event: str, within: timedelta,
                       where: Sequence[PropertyPredicate], now: datetime, *,
                       chunk_size: int = CONVERSION_CHUNK) -> set[str]:
        """Keys of the (key, user_id, sent_at) pairs whose user did `event` (matching `where`) in
        [sent_at, min(sent_at + within, now)] — one query per `chunk_size` pairs.

        Exactly `count_events(user_id, event, since=sent_at, now=window_end, where=where) > 0` per
        pair (relative `where` filters are judged at the window's end); a pair whose window has not
        opened yet (end not after sent_at) never converts."""
        found: set[str] = set()
        chunk: list[tuple[str, str, datetime, datetime]] = []
        for key, user_id, sent_at in pairs:
            window_end = min(now, sent_at + within)
            if window_end <= sent_at:
                continue
            chunk.append((key, user_id, sent_at, window_end))
            if len(chunk) >= chunk_size:
                found.update(self._converted_chunk(chunk, event, where))
                chunk = []
        if chunk:
            found.update(self._converted_chunk(chunk, event, where))
        return found

    def _converted_chunk(self, chunk: Sequence[tuple[str, str, datetime, datetime]], event: str,
                         where: Sequence[PropertyPredicate]) -> list[str]:
        columns = [list(column) for column in zip(*chunk, strict=True)]
        source = self.dialect.unnest("p", PAIR_COLUMNS, columns)
        return [str(row[0]) for row in self._fetchall(self.compiler.converted(source, event, where))]

    def events_for(self, user_id: str, name: str, since: datetime | None, *, now: datetime,
                   limit: int = 1000) -> list[EventRecord]:
        condition = self.compiler.event_filter(name, now, since, ())
        rows = self._fetchall(wrap("SELECT e.user_id, e.name, e.ts, e.properties FROM events e "
                                   "WHERE e.user_id = {} AND {} ORDER BY e.ts LIMIT {}",
                                   param(user_id), condition, param(limit)))
        return [EventRecord(r[0], r[1], r[2], self._decode_properties(r[3])) for r in rows]

    # -- consent ------------------------------------------------------------------------
    def users_by_phone(self, phone: str) -> list[str]:
        """Ids of the users whose stored (E.164) phone is `phone`, in id order."""
        rows = self._fetchall(frag("SELECT u.id FROM users u WHERE u.phone = ? ORDER BY u.id", phone))
        return [str(row[0]) for row in rows]

    def unreachable(self, user_ids: Iterable[str]) -> dict[str, str]:
        """Of these users, those who may not be messaged now: {id: "opted_out" | "invalid_phone"}.

        Read at send time, so a consent change made after a message was queued is honoured. Unknown
        ids (live-event users never ingested) are not listed: nothing says they refused."""
        ids = sorted(set(user_ids))
        found: dict[str, str] = {}
        for start in range(0, len(ids), CONSENT_CHUNK):
            chunk = ids[start:start + CONSENT_CHUNK]
            query = wrap("SELECT u.id, u.opted_out, u.phone_valid FROM users u WHERE u.id IN ({}) "
                         "AND (u.opted_out OR NOT u.phone_valid)", join(", ", (param(i) for i in chunk)))
            for user_id, opted_out, _valid in self._fetchall(query):
                found[str(user_id)] = "opted_out" if opted_out else "invalid_phone"
        return found

    def consent_changes(self, records: Sequence[UserRecord]) -> list[tuple[str, str | None, bool]]:
        """(user id, phone, opted_out) for each record whose `opted_out` differs from the stored value
        (a new user counts when it arrives opted out): what an upsert of `records` would change.
        One query whatever the count (the ids bound as one array: a bulk ingest asks per batch)."""
        given = {r.id: r for r in merge_user_records(r for r in records if r.opted_out is not None)}
        stored: dict[str, tuple[str | None, bool]] = {}
        if given:
            query = frag("SELECT u.id, u.phone, u.opted_out FROM users u "
                         "WHERE u.id IN (SELECT unnest(CAST(? AS TEXT[])))", sorted(given))
            stored.update({str(row[0]): (row[1], bool(row[2])) for row in self._fetchall(query)})
        changes = []
        for user_id, record in given.items():
            before = stored.get(user_id)
            if (before is None and record.opted_out) or (before is not None and before[1] != record.opted_out):
                changes.append((user_id, record.phone or (before[0] if before else None), bool(record.opted_out)))
        return changes

    def set_opted_out(self, user_ids: Iterable[str], opted_out: bool, *, now: datetime) -> int:
        """Opt these (stored) users out or back in at once; returns how many were changed."""
        return self.upsert_users([UserRecord(id=i, opted_out=opted_out) for i in dict.fromkeys(user_ids)], now=now)

    def stats(self) -> StoreStats:
        row = self._fetchall(Fragment(
            "SELECT count(*), count(*) FILTER (WHERE opted_out = FALSE AND phone_valid = TRUE), "
            "count(*) FILTER (WHERE opted_out), count(*) FILTER (WHERE phone_valid = FALSE) FROM users"))[0]
        events = self._fetchall(Fragment("SELECT count(*) FROM events"))[0][0]
        return StoreStats(int(row[0]), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0), int(events))

    def sql_for(self, query: AudienceQuery) -> tuple[str, tuple[Any, ...]]:
        """The member query as the engine receives it (for debugging and tests)."""
        return self.compiler.finish(self.member_query(query))


def open_audience_store(url: str) -> AudienceStore:
    """duckdb:///relative/path, duckdb:////absolute/path, duckdb:///:memory:, or postgresql://…"""
    if url.startswith("duckdb:"):
        from .duckdb_store import DuckDBAudienceStore

        return DuckDBAudienceStore.from_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres_store import PostgresAudienceStore

        return PostgresAudienceStore(url)
    raise AudienceStoreError("audience store URL must start with duckdb:/// or postgresql:// "
                             f"(got {url.split(':', 1)[0]}:…)")


