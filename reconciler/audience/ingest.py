"""Load users and events from JSONL or CSV files into the audience store.

Files are read row by row and written in batches, so memory stays bounded whatever the file size.
A bad row never stops the load and is never dropped silently: it is reported with its line number.

CSV: the header names the columns. Built-in columns (id, phone, timezone, country, created_at,
opted_out/subscribed for users; user_id, name, ts for events) are read as text; `properties` may
hold a JSON object; any other column (a `properties.` prefix is stripped) becomes a property whose
value is inferred: true/false, integers, decimals, JSON objects/arrays, otherwise text. Empty cells
are absent.

Consent: given `on_consent`, a users ingest reports every opt-out state the file changes (a stored
user whose `opted_out` flips, or a new user arriving opted out) with the line that changed it, once per
batch and only after that batch is stored; rows that state no consent cost no extra query.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TextIO

from .records import EVENT_FIELDS, USER_FIELDS, RecordError, parse_event, parse_user
from .store import AudienceStore, AudienceStoreError

Kind = Literal["users", "events"]
Format = Literal["jsonl", "csv"]
DEFAULT_BATCH_SIZE = 5000
MAX_KEPT_ERRORS = 1000
MAX_LINE_BYTES = 1_048_576
_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_DECIMAL = re.compile(r"^-?(0|[1-9][0-9]*)\.[0-9]+$")
_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes kept by errors="surrogateescape"
NOT_UTF8 = "row is not valid UTF-8"

csv.field_size_limit(MAX_LINE_BYTES)


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


@dataclass(frozen=True)
class ConsentRow:
    """One stored user's opt-out state changed by the file's row at `line` (the batch's last row for
    that user that states it)."""

    user_id: str
    phone: str | None
    opted_out: bool
    line: int


ConsentHook = Callable[[list[ConsentRow]], None]


@dataclass
class IngestReport:
    kind: Kind
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    invalid_phones: int = 0
    errors: list[RowError] = field(default_factory=list)  # the first MAX_KEPT_ERRORS

    def reject(self, line: int, message: str) -> None:
        self.rejected += 1
        if len(self.errors) < MAX_KEPT_ERRORS:
            self.errors.append(RowError(line, message))


def detect_format(path: str | Path, given: str | None = None) -> Format:
    if given in ("jsonl", "csv"):
        return given  # type: ignore[return-value]
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


def infer_cell(text: str) -> Any:
    """A CSV cell's value for a property column."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if _INT.match(text):
        return int(text)
    if _DECIMAL.match(text):
        return float(text)
    if text[:1] in "{[":
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON (or too large or deep to decode): text
            return text
    return text


def read_jsonl(handle: TextIO) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object or RecordError) for each non-blank line."""
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            yield number, RecordError(f"line is longer than {MAX_LINE_BYTES} bytes")
            continue
        if _UNDECODABLE.search(line):
            yield number, RecordError(NOT_UTF8)
            continue
        yield number, _decode_json_line(line)


def _decode_json_line(line: str) -> Any:
    """The decoded line, or RecordError: bad syntax, a number of over 4,300 digits (json refuses to
    convert it with a ValueError), or nesting deep enough to exhaust the decoder's recursion."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        return RecordError(f"invalid JSON: {exc.msg} at column {exc.colno}")
    except ValueError:
        return RecordError("invalid JSON: a number has more than 4300 digits")
    except RecursionError:
        return RecordError("invalid JSON: values are nested too deeply")


def read_csv(handle: TextIO, kind: Kind) -> Iterator[tuple[int, Any]]:
    builtins = set(USER_FIELDS if kind == "users" else EVENT_FIELDS) - {"properties"}
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        yield 1, RecordError(f"unreadable CSV header: {exc}")
        return
    columns = [name.strip() for name in header]
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield reader.line_num, RecordError(f"unreadable CSV row: {exc}")
            continue
        line = reader.line_num
        if not any(cell.strip() for cell in cells):
            continue
        if any(_UNDECODABLE.search(cell) for cell in cells):
            yield line, RecordError(NOT_UTF8)
            continue
        if len(cells) != len(columns):
            yield line, RecordError(f"expected {len(columns)} cells, found {len(cells)}")
            continue
        yield line, _csv_object(columns, cells, builtins)


def _csv_object(columns: list[str], cells: list[str], builtins: set[str]) -> Any:
    obj: dict[str, Any] = {}
    properties: dict[str, Any] = {}
    for column, cell in zip(columns, cells, strict=True):
        if cell == "":
            continue
        if column in builtins:
            obj[column] = cell
        elif column == "properties":
            given = _decode_json_line(cell)
            if isinstance(given, RecordError):
                return RecordError(f"the properties cell is not a JSON object ({given})")
            if not isinstance(given, dict):
                return RecordError("the properties cell is not a JSON object")
            properties.update(given)
        else:
            properties[column.removeprefix("properties.")] = infer_cell(cell)
    obj["properties"] = properties
    return obj


def read_rows(path: str | Path, kind: Kind, fmt: Format, handle: TextIO) -> Iterator[tuple[int, Any]]:
    return read_csv(handle, kind) if fmt == "csv" else read_jsonl(handle)


Progress = Callable[[IngestReport], None]


def ingest_stream(store: AudienceStore, rows: Iterator[tuple[int, Any]], kind: Kind, *, now: datetime,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                  on_consent: ConsentHook | None = None) -> IngestReport:
    """Validate rows and write them in batches; `now` is created_at for users that state none.
    `on_consent` (users only) sees each stored batch's consent changes; it must not raise.

    A row never stops the load: a row that fails validation is rejected with its line number, and
    so is a row the store refuses (the batch is then written row by row to find it; batches are all
    or nothing). Only a store that refuses a whole batch row by row is a store failure:
    AudienceStoreError, with the rows before that batch stored.
    """
    report = IngestReport(kind)
    batch: list[tuple[int, Any]] = []

    def flush() -> None:
        if not batch:
            return
        changes = _write_batch(store, kind, batch, report, now, track_consent=on_consent is not None)
        batch.clear()
        if changes and on_consent is not None:
            on_consent(changes)
        if progress is not None:
            progress(report)

    for line, obj in rows:
        report.rows += 1
        if isinstance(obj, RecordError):
            report.reject(line, str(obj))
            continue
        try:
            record = parse_user(obj) if kind == "users" else parse_event(obj)
        except RecordError as exc:
            report.reject(line, str(exc))
            continue
        if kind == "users" and getattr(record, "phone_valid", None) is False:
            report.invalid_phones += 1
        batch.append((line, record))
        if len(batch) >= batch_size:
            flush()
    flush()
    return report


def _write(store: AudienceStore, kind: Kind, records: list[Any], now: datetime) -> None:
    if kind == "users":
        store.upsert_users(records, now=now)
    else:
        store.insert_events(records)


def _store_rows(store: AudienceStore, kind: Kind, rows: list[tuple[int, Any]], now: datetime,
                track_consent: bool) -> list[ConsentRow]:
    """Write rows (all or nothing) and return the consent changes they made, read just before the
    write (one query per 500 users that state `opted_out`)."""
    records = [record for _, record in rows]
    changes = store.consent_changes(records) if track_consent and kind == "users" else []
    _write(store, kind, records, now)
    if not changes:
        return []
    lines = {record.id: line for line, record in rows if record.opted_out is not None}  # later rows win
    return [ConsentRow(user_id, phone, opted_out, lines[user_id]) for user_id, phone, opted_out in changes]


def _write_batch(store: AudienceStore, kind: Kind, batch: list[tuple[int, Any]], report: IngestReport,
                 now: datetime, *, track_consent: bool = False) -> list[ConsentRow]:
    """Write one batch; if the store refuses it, write its rows one by one and reject those refused.
    Returns the consent changes of the rows stored."""
    try:
        changes = _store_rows(store, kind, batch, now, track_consent)
    except Exception as exc:  # a driver's data error: find the row, keep the others
        failure: Exception = exc
    else:
        report.accepted += len(batch)
        return changes
    changes = []
    refused: list[tuple[int, str]] = []
    for line, record in batch:
        try:
            changes.extend(_store_rows(store, kind, [(line, record)], now, track_consent))
        except Exception as exc:  # reported against the row
            refused.append((line, f"the audience store refused the row: {_error_text(exc)}"))
        else:
            report.accepted += 1
    if len(batch) > 1 and len(refused) == len(batch):
        raise AudienceStoreError(f"the audience store refused every row of a batch: {_error_text(failure)}") \
            from failure
    for line, message in refused:
        report.reject(line, message)
    return changes


def _error_text(exc: BaseException) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def ingest_file(store: AudienceStore, path: str | Path, kind: Kind, *, now: datetime, fmt: str | None = None,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: Progress | None = None,
                on_consent: ConsentHook | None = None) -> IngestReport:
    chosen = detect_format(path, fmt)
    with open(path, encoding="utf-8-sig", errors="surrogateescape",
              newline="" if chosen == "csv" else None) as handle:
        return ingest_stream(store, read_rows(path, kind, chosen, handle), kind, now=now,
                             batch_size=batch_size, progress=progress, on_consent=on_consent)


def _snapshot_kind(path: Path) -> Kind | None:
    name = path.name.lower()
    if "user" in name:
        return "users"
    if "event" in name:
        return "events"
    return None


def _split_by_type(rows: Iterator[tuple[int, Any]], wanted: Kind) -> Iterator[tuple[int, Any]]:
    """Rows of one kind from a mixed JSONL file whose lines say "type": "user" or "event"."""
    for line, obj in rows:
        if isinstance(obj, dict):
            kind = obj.get("type")
            if kind not in ("user", "event"):
                if wanted == "users":
                    yield line, RecordError("a mixed snapshot line needs \"type\": \"user\" or \"event\"")
                continue
            if f"{kind}s" != wanted:
                continue
            yield line, {k: v for k, v in obj.items() if k != "type"}
        elif wanted == "users":
            yield line, obj


def load_snapshot(store: AudienceStore, paths: list[Path], *, now: datetime) -> list[tuple[Path, IngestReport]]:
    """Fill `store` from snapshot files: users.* / events.* (JSONL or CSV, also inside a directory),
    or a mixed JSONL whose lines carry "type": "user" | "event". Users load before events."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".csv", ".json"))
                     if path.is_dir() else [path])
    reports: list[tuple[Path, IngestReport]] = []
    kinds: tuple[Kind, Kind] = ("users", "events")
    for kind in kinds:
        for path in files:
            fixed = _snapshot_kind(path)
            if fixed is not None and fixed != kind:
                continue
            fmt = detect_format(path)
            if fixed is None and fmt == "csv":
                if kind == "users":
                    report = IngestReport(kind)
                    report.reject(1, "name a CSV snapshot users*.csv or events*.csv")
                    reports.append((path, report))
                continue
            with open(path, encoding="utf-8-sig", errors="surrogateescape",
                      newline="" if fmt == "csv" else None) as handle:
                rows = read_rows(path, kind, fmt, handle)
                if fixed is None:
                    rows = _split_by_type(rows, kind)
                reports.append((path, ingest_stream(store, rows, kind, now=now)))
    return reports
