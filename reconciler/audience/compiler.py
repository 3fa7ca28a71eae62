"""Segment rules → SQL with bound parameters, for DuckDB and PostgreSQL.

One compiler; a Dialect supplies the few expressions that differ (JSON access, casts, hashing).
Fragments are written with `?` placeholders and converted for psycopg (`%s`) at the end, so SQL text
never contains a literal `%` or `?` of its own. Operator meanings are documented in semantics.py,
which evaluates the same rules in Python.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ..models.common import INT64_MAX, INT64_MIN, parse_duration
from ..models.segment import (
    AllRule,
    AnyRule,
    EventPredicate,
    EventRule,
    NotRule,
    PropertyPredicate,
    PropertyRule,
)
from .semantics import (
    ISO_PATTERN,
    NUMBER_PATTERN,
    REACH_BUCKETS,
    TEXT_FIELDS,
    TIMESTAMP_FIELDS,
    PredicateError,
    as_timestamp,
    ordered_kind,
    text_form,
)

Rule = AllRule | AnyRule | NotRule | PropertyRule | EventRule
_SAFE_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_0-9]+)*$")
MEMBER_COLUMNS = "u.id, u.phone, u.timezone, u.country, u.properties, u.created_at"
ELIGIBLE = "u.opted_out = FALSE AND u.phone_valid = TRUE"


@dataclass(frozen=True)
class Fragment:
    sql: str
    params: tuple[Any, ...] = ()

    def __add__(self, other: Fragment) -> Fragment:
        return Fragment(self.sql + other.sql, self.params + other.params)


class UnbindableValueError(PredicateError):
    """A value the audience store cannot take as a parameter: an integer outside 64 bits, a float
    that is not finite, a number too large for a float, a moment outside the calendar.

    Validation refuses such values in YAML; this is the compiler's own guard, so a value that got
    past it fails with this error (naming the value), never an OverflowError from a driver."""


def bindable(value: Any) -> Any:
    """`value`, if every store can bind it; else UnbindableValueError."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
        raise UnbindableValueError(f"integer out of the 64-bit range ({value.bit_length()} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise UnbindableValueError(f"number {value} is not finite")
    return value


def as_number(value: Any) -> float:
    """`value` as a finite float, or UnbindableValueError (float() overflows past ~1.8e308)."""
    try:
        number = float(value)
    except OverflowError as exc:
        raise UnbindableValueError(f"number too large to compare ({exc})") from exc
    bindable(number)
    return number


def moment_before(now: datetime, span: timedelta) -> datetime:
    """`now - span`, or UnbindableValueError when that leaves the calendar."""
    try:
        return now - span
    except OverflowError as exc:
        raise UnbindableValueError(f"{now.isoformat()} minus {span} is outside the calendar") from exc


def frag(text: str, *params: Any) -> Fragment:
    if text.count("?") != len(params):
        raise AssertionError(f"placeholder count mismatch in {text!r}")
    return Fragment(text, tuple(bindable(p) for p in params))


def wrap(template: str, *parts: Fragment) -> Fragment:
    """Fill each `{}` in `template` with a fragment, keeping parameters in order."""
    pieces = template.split("{}")
    if len(pieces) != len(parts) + 1:
        raise AssertionError(f"slot count mismatch in {template!r}")
    result = Fragment(pieces[0])
    for part, tail in zip(parts, pieces[1:], strict=True):
        result = result + part + Fragment(tail)
    return result


def param(value: Any) -> Fragment:
    """One bound parameter, to place with wrap(); UnbindableValueError if no store can hold it."""
    return Fragment("?", (bindable(value),))


def join(separator: str, parts: Iterable[Fragment]) -> Fragment:
    items = list(parts)
    result = Fragment("")
    for index, part in enumerate(items):
        result = result + (Fragment(separator) if index else Fragment("")) + part
    return result


def _literal(text: str) -> str:
    """A SQL string literal for our own constants (regex patterns) — never for user input."""
    if "'" in text or "?" in text or "%" in text:
        raise AssertionError("constant contains a quote or placeholder character")
    return f"'{text}'"


JsonKind = Literal["string", "array", "object"]
ColumnType = Literal["text", "timestamptz"]
Moment = datetime | Fragment  # a fixed instant, or a per-row SQL expression (a column of a VALUES-like source)


class Dialect:
    name = "base"

    def json_text(self, column: str, path: str) -> Fragment:
        raise NotImplementedError

    def json_kind(self, column: str, path: str, kinds: Sequence[JsonKind]) -> Fragment:
        raise NotImplementedError

    def json_array_has_text(self, column: str, path: str, value: str) -> Fragment:
        raise NotImplementedError

    def regex(self, expr: Fragment, pattern: str) -> Fragment:
        raise NotImplementedError

    def to_double(self, expr: Fragment) -> Fragment:
        raise NotImplementedError

    def to_timestamp(self, expr: Fragment) -> Fragment:
        raise NotImplementedError

    def byte_order(self, expr: Fragment) -> Fragment:
        return expr

    def hash32(self, expr: Fragment) -> Fragment:
        raise NotImplementedError

    def unnest(self, alias: str, columns: Sequence[tuple[str, ColumnType]],
               arrays: Sequence[Sequence[Any]]) -> Fragment:
        """A table `alias(columns…)` from equally long arrays, one bound array parameter per column:
        the query text stays the same whatever the number of rows."""
        raise NotImplementedError

    def finish(self, fragment: Fragment) -> tuple[str, tuple[Any, ...]]:
        return fragment.sql, fragment.params


class DuckDBDialect(Dialect):
    name = "duckdb"
    _KIND_NAMES = {"string": ("VARCHAR",), "array": ("ARRAY",), "object": ("OBJECT",)}

    @staticmethod
    def _path(path: str) -> str:
        return "$." + ".".join(f'"{part}"' for part in path.split("."))

    def json_text(self, column: str, path: str) -> Fragment:
        return frag(f"json_extract_string({column}, ?)", self._path(path))

    def json_kind(self, column: str, path: str, kinds: Sequence[JsonKind]) -> Fragment:
        names = [name for kind in kinds for name in self._KIND_NAMES[kind]]
        marks = ", ".join("?" for _ in names)
        return frag(f"json_type({column}, ?) IN ({marks})", self._path(path), *names)

    def json_array_has_text(self, column: str, path: str, value: str) -> Fragment:
        return frag(f"list_contains(json_extract_string({column}, ?), ?)", self._path(path) + "[*]", value)

    def regex(self, expr: Fragment, pattern: str) -> Fragment:
        return wrap(f"regexp_full_match({{}}, {_literal(pattern)})", expr)

    def to_double(self, expr: Fragment) -> Fragment:
        return wrap("TRY_CAST({} AS DOUBLE)", expr)

    def to_timestamp(self, expr: Fragment) -> Fragment:
        return wrap("TRY_CAST({} AS TIMESTAMPTZ)", expr)

    def hash32(self, expr: Fragment) -> Fragment:
        return wrap("CAST(('0x' || substr(md5({}), 1, 8)) AS BIGINT)", expr)

    _TYPES: dict[ColumnType, str] = {"text": "VARCHAR", "timestamptz": "TIMESTAMPTZ"}

    def unnest(self, alias: str, columns: Sequence[tuple[str, ColumnType]],
               arrays: Sequence[Sequence[Any]]) -> Fragment:
        # several unnest() in one SELECT list advance together (row i of every array)
        items = [frag(f"unnest(?::{self._TYPES[kind]}[]) AS {name}", list(values))
                 for (name, kind), values in zip(columns, arrays, strict=True)]
        return wrap(f"(SELECT {{}}) AS {alias}", join(", ", items))


class PostgresDialect(Dialect):
    name = "postgres"
    _KIND_NAMES = {"string": "string", "array": "array", "object": "object"}

    def json_text(self, column: str, path: str) -> Fragment:
        return frag(f"({column} #>> ?::text[])", path.split("."))

    def json_kind(self, column: str, path: str, kinds: Sequence[JsonKind]) -> Fragment:
        marks = ", ".join("?" for _ in kinds)
        return frag(f"jsonb_typeof({column} #> ?::text[]) IN ({marks})", path.split("."),
                    *(self._KIND_NAMES[k] for k in kinds))

    def json_array_has_text(self, column: str, path: str, value: str) -> Fragment:
        return frag(f"EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof({column} #> ?::text[])"
                    f" = 'array' THEN {column} #> ?::text[] END) AS element WHERE element = ?)",
                    path.split("."), path.split("."), value)

    def regex(self, expr: Fragment, pattern: str) -> Fragment:
        return wrap(f"({{}} ~ {_literal(pattern)})", expr)

    def to_double(self, expr: Fragment) -> Fragment:
        return wrap("CAST({} AS double precision)", expr)

    def to_timestamp(self, expr: Fragment) -> Fragment:
        return wrap("herald_try_timestamptz({})", expr)

    def byte_order(self, expr: Fragment) -> Fragment:
        return wrap('({} COLLATE "C")', expr)

    def hash32(self, expr: Fragment) -> Fragment:
        return wrap("CAST(CAST(('x' || substr(md5({}), 1, 8)) AS bit(32)) AS bigint)", expr)

    def unnest(self, alias: str, columns: Sequence[tuple[str, ColumnType]],
               arrays: Sequence[Sequence[Any]]) -> Fragment:
        items = [frag(f"?::{kind}[]", list(values)) for (_, kind), values in zip(columns, arrays, strict=True)]
        names = ", ".join(name for name, _ in columns)
        return wrap(f"unnest({{}}) AS {alias}({names})", join(", ", items))

    def finish(self, fragment: Fragment) -> tuple[str, tuple[Any, ...]]:
        return fragment.sql.replace("?", "%s"), fragment.params


DUCKDB = DuckDBDialect()
POSTGRES = PostgresDialect()

TRUE = Fragment("TRUE")
FALSE = Fragment("FALSE")


@dataclass(frozen=True)
class FieldRef:
    """Where a predicate's value lives: a JSON property, a text column or a timestamp column."""

    kind: Literal["json", "text", "timestamp"]
    column: str
    path: str = ""

    def present(self, d: Dialect) -> Fragment:
        if self.kind == "json":
            return wrap("{} IS NOT NULL", d.json_text(self.column, self.path))
        return Fragment(f"{self.column} IS NOT NULL")

    def text(self, d: Dialect) -> Fragment:
        if self.kind == "json":
            return d.json_text(self.column, self.path)
        if self.kind == "text":
            return Fragment(self.column)
        raise PredicateError("created_at compares with dates")

    def is_scalar(self, d: Dialect) -> Fragment:
        if self.kind == "json":
            return wrap("NOT COALESCE({}, FALSE)", d.json_kind(self.column, self.path, ("array", "object")))
        return TRUE

    def is_kind(self, d: Dialect, kind: JsonKind) -> Fragment:
        if self.kind == "json":
            return d.json_kind(self.column, self.path, (kind,))
        return TRUE if kind == "string" else FALSE

    def number(self, d: Dialect) -> Fragment:
        text = self.text(d)
        return wrap("CASE WHEN {} THEN {} END", d.regex(text, NUMBER_PATTERN), d.to_double(text))

    def timestamp(self, d: Dialect) -> Fragment:
        if self.kind == "timestamp":
            return Fragment(self.column)
        text = self.text(d)
        return wrap("CASE WHEN {} THEN {} END", d.regex(text, ISO_PATTERN), d.to_timestamp(text))


def user_field(name: str) -> FieldRef:
    if name in TEXT_FIELDS:
        return FieldRef("text", f"u.{name}")
    if name in TIMESTAMP_FIELDS:
        return FieldRef("timestamp", f"u.{name}")
    return FieldRef("json", "u.properties", _checked_path(name))


def event_field(name: str) -> FieldRef:
    return FieldRef("json", "e.properties", _checked_path(name))


def _checked_path(name: str) -> str:
    if not _SAFE_PATH.match(name):
        raise PredicateError(f"invalid property name {name!r}")
    return name


def _could_be_container(text: str | None) -> bool:
    """Could this text equal / prefix the JSON text of an array or object? Only then is the
    (costly) scalar-type guard needed: JSON text of a container starts with '[' or '{'."""
    return text is None or text == "" or text[0] in "[{"


def _moment(now: Moment) -> Fragment:
    return now if isinstance(now, Fragment) else param(now)


def _cutoff(now: Moment, ago: timedelta) -> Fragment:
    """`now - ago`: computed here for a fixed instant, in SQL (interval arithmetic, UTC) per row."""
    if isinstance(now, Fragment):
        return wrap("({} - {})", now, param(ago))
    return param(moment_before(now, ago))


def _timestamp_value(value: Any, op: str) -> datetime:
    moment = as_timestamp(value)
    if moment is None:
        raise PredicateError(f"'{op}' needs an ISO 8601 date (got {value!r})")
    return moment


class Compiler:
    def __init__(self, dialect: Dialect) -> None:
        self.d = dialect

    # -- property predicates ------------------------------------------------------------
    def predicate(self, pred: PropertyPredicate, field: FieldRef, now: Moment) -> Fragment:
        if pred.op in ("ne", "not_in", "not_exists"):
            positive = {"ne": "eq", "not_in": "in", "not_exists": "exists"}[pred.op]
            inner = self.predicate(pred.model_copy(update={"op": positive}), field, now)
            return wrap("(NOT {})", inner)
        return wrap("COALESCE(({}), FALSE)", self._positive(pred, field, now))

    def _positive(self, pred: PropertyPredicate, field: FieldRef, now: Moment) -> Fragment:
        op, value, d = pred.op, pred.value, self.d
        if op == "exists":
            return field.present(d)
        if op == "eq":
            return self._in(field, [value])
        if op == "in":
            assert isinstance(value, list)
            return self._in(field, value)
        if op in ("gt", "gte", "lt", "lte"):
            return self._ordered(field, op, value)
        if op == "between":
            assert isinstance(value, list)
            return wrap("({} AND {})", self._ordered(field, "gte", value[0]), self._ordered(field, "lte", value[1]))
        if op in ("before", "after"):
            sign = "<" if op == "before" else ">"
            return wrap(f"{{}} {sign} {{}}", field.timestamp(d), param(_timestamp_value(value, op)))
        if op in ("within_last", "more_than_ago"):
            cutoff, moment = _cutoff(now, parse_duration(str(value))), _moment(now)
            ts = field.timestamp(d)
            if op == "within_last":
                return wrap("({} >= {} AND {} <= {})", ts, cutoff, ts, moment)
            return wrap("{} < {}", ts, cutoff)
        if field.kind == "timestamp":
            raise PredicateError(f"'{op}' does not apply to created_at")
        if op == "contains":
            return self._contains(field, value)
        if op == "starts_with":
            prefix = str(text_form(value))
            compared = wrap("starts_with({}, {})", field.text(d), param(prefix))
            if _could_be_container(prefix):
                compared = wrap("({} AND {})", field.is_scalar(d), compared)
            return compared
        raise PredicateError(f"unknown operator {op!r}")

    def _in(self, field: FieldRef, values: list[Any]) -> Fragment:
        d = self.d
        if field.kind == "timestamp":
            stamps = [_timestamp_value(v, "eq") for v in values]
            return wrap("{} IN ({})", field.timestamp(d), join(", ", map(param, stamps)))
        numbers = [as_number(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        texts = [text_form(v) for v in values if isinstance(v, str | bool)]
        parts: list[Fragment] = []
        if numbers:
            parts.append(wrap("{} IN ({})", field.number(d), join(", ", map(param, numbers))))
        if texts:
            compared = wrap("{} IN ({})", field.text(d), join(", ", map(param, texts)))
            if any(_could_be_container(t) for t in texts):
                compared = wrap("({} AND {})", field.is_scalar(d), compared)
            parts.append(compared)
        return wrap("({})", join(" OR ", parts))

    def _ordered(self, field: FieldRef, op: str, value: Any) -> Fragment:
        sign = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[op]
        kind = ordered_kind(value, field.kind == "timestamp")
        d = self.d
        if kind == "number":
            return wrap(f"{{}} {sign} {{}}", field.number(d), param(as_number(value)))
        if kind == "timestamp":
            return wrap(f"{{}} {sign} {{}}", field.timestamp(d), param(_timestamp_value(value, op)))
        return wrap(f"({{}} AND {{}} {sign} {{}})", field.is_kind(d, "string"), d.byte_order(field.text(d)),
                    param(str(value)))

    def _contains(self, field: FieldRef, value: Any) -> Fragment:
        needle = text_form(value)
        d = self.d
        if field.kind == "text":
            return wrap("strpos({}, {}) > 0", field.text(d), param(needle))
        substring = wrap("strpos({}, {}) > 0", field.text(d), param(needle))
        element = d.json_array_has_text(field.column, field.path, str(needle))
        return wrap("CASE WHEN {} THEN {} WHEN {} THEN {} ELSE FALSE END",
                    field.is_kind(d, "string"), substring, field.is_kind(d, "array"), element)

    # -- rules --------------------------------------------------------------------------
    def rule(self, rule: Rule, now: datetime, joins: list[Fragment], user_id: str | None = None) -> Fragment:
        """A boolean SQL expression over `users u`; event predicates add LEFT JOINs to `joins`
        (or, for a query about one known user, count that user's events directly)."""
        if isinstance(rule, AllRule):
            return wrap("({})", join(" AND ", [self.rule(r, now, joins, user_id) for r in rule.all]))
        if isinstance(rule, AnyRule):
            return wrap("({})", join(" OR ", [self.rule(r, now, joins, user_id) for r in rule.any]))
        if isinstance(rule, NotRule):
            return wrap("(NOT {})", self.rule(rule.not_, now, joins, user_id))
        if isinstance(rule, PropertyRule):
            return self.predicate(rule.property, user_field(rule.property.name), now)
        if isinstance(rule, EventRule):
            if user_id is not None:
                return self.user_event(rule.event, now, user_id)
            return self.event(rule.event, now, joins)
        raise PredicateError(f"unknown rule {type(rule).__name__}")

    def event_filter(self, name: str, now: datetime, since: datetime | None,
                     where: Sequence[PropertyPredicate]) -> Fragment:
        """Conditions on `events e`: this name, up to now, after `since`, matching `where`."""
        parts = [frag("e.name = ?", name), frag("e.ts <= ?", now)]
        if since is not None:
            parts.append(frag("e.ts >= ?", since))
        parts.extend(self.predicate(p, event_field(p.name), now) for p in where)
        return join(" AND ", parts)

    def converted(self, pairs: Fragment, name: str, where: Sequence[PropertyPredicate]) -> Fragment:
        """Keys of `pairs` (pair_key, user_id, window_start, window_end) whose user did `name` in
        [window_start, window_end] matching `where` — each row judged as count_events(…, since=
        window_start, now=window_end) judges it, so relative filters are relative to window_end."""
        until = Fragment("p.window_end")
        parts = [Fragment("e.user_id = p.user_id"), frag("e.name = ?", name),
                 Fragment("e.ts >= p.window_start"), Fragment("e.ts <= p.window_end")]
        parts.extend(self.predicate(p, event_field(p.name), until) for p in where)
        return wrap("SELECT p.pair_key FROM {} WHERE EXISTS (SELECT 1 FROM events e WHERE {})",
                    pairs, join(" AND ", parts))

    def event(self, pred: EventPredicate, now: datetime, joins: list[Fragment]) -> Fragment:
        """Users whose count of matching events is in [atLeast, atMost].

        Compiled as a LEFT JOIN to the per-user counts (one row per user, so no duplicates) and an
        IS [NOT] NULL test: it composes under and/or/not, and both engines run it as a hash join
        that can spill — unlike NOT IN, which PostgreSQL can only hash when it fits in work_mem.
        """
        since = moment_before(now, pred.within) if pred.within is not None else None
        matching = self.event_filter(pred.name, now, since, pred.where)
        low, high = pred.min_count, pred.atMost
        if low == 0 and high is None:
            return TRUE
        alias = f"ev{len(joins)}"
        if low == 0:
            assert high is not None
            having, test = frag("count(*) > ?", high), "IS NULL"  # users who did it too often
        else:
            having, test = frag("count(*) >= ?", low), "IS NOT NULL"
            if high is not None:
                having = having + frag(" AND count(*) <= ?", high)
        joins.append(wrap(f"LEFT JOIN (SELECT e.user_id FROM events e WHERE {{}} GROUP BY e.user_id "
                          f"HAVING {{}}) {alias} ON {alias}.user_id = u.id", matching, having))
        return Fragment(f"({alias}.user_id {test})")

    def user_event(self, pred: EventPredicate, now: datetime, user_id: str) -> Fragment:
        """The same test for one known user: count its events (an index lookup on PostgreSQL)."""
        since = moment_before(now, pred.within) if pred.within is not None else None
        matching = self.event_filter(pred.name, now, since, pred.where)
        low, high = pred.min_count, pred.atMost
        count = wrap("(SELECT count(*) FROM events e WHERE e.user_id = {} AND {})", param(user_id), matching)
        if high is None:
            return wrap("({} >= {})", count, param(low))
        return wrap("({} BETWEEN {} AND {})", count, param(low), param(high))

    # -- whole queries ------------------------------------------------------------------
    def audience_from(self, rule: Rule | None, now: datetime, user_id: str | None = None) -> Fragment:
        """`FROM users u [LEFT JOIN …] WHERE <reachable> AND <rule>`; callers may append `AND …`.

        With `user_id`, the query is about that one user (live triggers)."""
        joins: list[Fragment] = []
        condition = Fragment(ELIGIBLE)
        if user_id is not None:
            condition = wrap("{} AND u.id = {}", condition, param(user_id))
        if rule is not None:
            condition = wrap("{} AND {}", condition, self.rule(rule, now, joins, user_id))
        return wrap("FROM users u {} WHERE {}", join(" ", joins), condition)

    def reach_bucket(self, campaign: str) -> Fragment:
        hashed = self.d.hash32(frag("(? || ':' || u.id)", campaign))
        return wrap("mod({}, {})", hashed, param(REACH_BUCKETS))

    def subset_order(self, seed: int) -> Fragment:
        return self.d.byte_order(frag("md5(? || ':' || u.id)", str(seed)))

    def finish(self, fragment: Fragment) -> tuple[str, tuple[Any, ...]]:
        return self.d.finish(fragment)
