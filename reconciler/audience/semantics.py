"""What each predicate operator means, evaluated in Python.

The SQL compiler (compiler.py) implements exactly these rules in the store; live triggers evaluate a
single incoming event here. Tests run the same cases through both to keep them in step.

Rules, for a stored value `v` and a predicate value `x`:
- a missing key and a JSON null are both "absent"; every operator except ne / not_in / not_exists is
  false on an absent value (ne, not_in and not_exists are the negations of eq, in and exists).
- eq / in: a number `x` compares numerically (v may be a JSON number or a numeric string); a string
  or boolean `x` compares with the text form of `v` (true/false for booleans).
- gt / gte / lt / lte / between: numeric for a number `x`; for an ISO date string `x` both sides are
  read as timestamps; any other string compares as text (byte order).
- before / after: timestamps (an ISO value without offset is UTC); within_last / more_than_ago:
  relative to the `now` passed in.
- contains: substring of a string value, or an element (by text form) of an array value.
- starts_with: prefix of the text form of a scalar value.
- built-in user fields (id, phone, timezone, country) are text; created_at is a timestamp, so every
  operator on it reads the predicate value as a date.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from ..models.campaign import EventMatch
from ..models.common import parse_duration
from ..models.segment import PropertyPredicate

# Written without '?' so the same text can sit in SQL next to '?' placeholders.
NUMBER_PATTERN = r"^-{0,1}[0-9]+(\.[0-9]+){0,1}([eE][-+]{0,1}[0-9]+){0,1}$"
ISO_PATTERN = (r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6}){0,1}){0,1}"
               r"(Z|[+-][0-9]{2}(:{0,1}[0-9]{2}){0,1}){0,1}){0,1}$")
_NUMBER = re.compile(NUMBER_PATTERN)
_ISO = re.compile(ISO_PATTERN)
REACH_BUCKETS = 1_000_000
TEXT_FIELDS = ("id", "phone", "timezone", "country")
TIMESTAMP_FIELDS = ("created_at",)


class PredicateError(ValueError):
    """A predicate that cannot mean anything (e.g. 'before' with a non-date value)."""


def text_form(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"))


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return _float(value)
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        return float(value)
    return None


def _float(value: int | float) -> float:
    """float(value), never OverflowError: an integer past the float range is +-infinity (a stored
    property may hold one; comparing it must not fail the live hook for that user)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def as_timestamp(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not _ISO.fullmatch(value):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def is_iso_date(value: Any) -> bool:
    return isinstance(value, str) and as_timestamp(value) is not None


def lookup(properties: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path (nested objects), or None when absent."""
    node: Any = properties
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _scalar(value: Any) -> bool:
    return not isinstance(value, list | dict)


def _eq(stored: Any, wanted: Any, timestamp_field: bool) -> bool:
    if timestamp_field:
        return _timestamps(stored, wanted, "eq")
    if isinstance(wanted, int | float) and not isinstance(wanted, bool):
        number = as_number(stored)
        return number is not None and number == _float(wanted)
    return _scalar(stored) and text_form(stored) == text_form(wanted)


def _timestamps(stored: Any, wanted: Any, op: str) -> bool:
    left, right = as_timestamp(stored), as_timestamp(wanted)
    if right is None:
        raise PredicateError(f"'{op}' on a date needs an ISO 8601 value (got {wanted!r})")
    if left is None:
        return False
    return _compare(left, right, op)


def _compare(left: Any, right: Any, op: str) -> bool:
    if op in ("eq", "before"):
        return bool(left == right) if op == "eq" else bool(left < right)
    if op == "after":
        return bool(left > right)
    return {
        "gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right,
    }[op]


def ordered_kind(wanted: Any, timestamp_field: bool) -> str:
    """How gt/gte/lt/lte/between compare: 'number', 'timestamp' or 'text'."""
    if timestamp_field:
        if not is_iso_date(wanted):
            raise PredicateError(f"created_at compares with ISO 8601 dates (got {wanted!r})")
        return "timestamp"
    if isinstance(wanted, bool):
        raise PredicateError("booleans cannot be ordered; use eq")
    if isinstance(wanted, int | float):
        return "number"
    return "timestamp" if is_iso_date(wanted) else "text"


def _ordered(stored: Any, wanted: Any, op: str, timestamp_field: bool) -> bool:
    kind = ordered_kind(wanted, timestamp_field)
    if kind == "number":
        left_n = as_number(stored)
        return left_n is not None and _compare(left_n, _float(wanted), op)
    if kind == "timestamp":
        return _timestamps(stored, wanted, op)
    if not isinstance(stored, str):
        return False
    return _compare(stored.encode(), str(wanted).encode(), op)


def _contains(stored: Any, wanted: Any) -> bool:
    needle = text_form(wanted)
    if isinstance(stored, str):
        return needle is not None and needle in stored
    if isinstance(stored, list):
        return any(_scalar(item) and text_form(item) == needle for item in stored)
    return False


def predicate_holds(pred: PropertyPredicate, stored: Any, now: datetime | None, *,
                    timestamp_field: bool = False) -> bool:
    """Evaluate one predicate against the stored value (None when absent)."""
    op, wanted = pred.op, pred.value
    if op == "exists":
        return stored is not None
    if op == "not_exists":
        return stored is None
    if op in ("ne", "not_in"):
        positive = pred.model_copy(update={"op": "eq" if op == "ne" else "in"})
        return not predicate_holds(positive, stored, now, timestamp_field=timestamp_field)
    if stored is None:
        return False
    if op == "eq":
        return _eq(stored, wanted, timestamp_field)
    if op == "in":
        assert isinstance(wanted, list)
        return any(_eq(stored, item, timestamp_field) for item in wanted)
    if op in ("gt", "gte", "lt", "lte"):
        return _ordered(stored, wanted, op, timestamp_field)
    if op == "between":
        assert isinstance(wanted, list)
        low, high = wanted
        return _ordered(stored, low, "gte", timestamp_field) and _ordered(stored, high, "lte", timestamp_field)
    if op in ("before", "after"):
        return _timestamps(stored, wanted, op)
    if op in ("within_last", "more_than_ago"):
        if now is None:
            raise PredicateError(f"'{op}' needs the current time")
        moment = as_timestamp(stored)
        if moment is None:
            return False
        cutoff = now - parse_duration(str(wanted))
        return cutoff <= moment <= now if op == "within_last" else moment < cutoff
    if timestamp_field:
        raise PredicateError(f"'{op}' does not apply to created_at")
    if op == "contains":
        return _contains(stored, wanted)
    if op == "starts_with":
        text = text_form(stored)
        return _scalar(stored) and text is not None and text.startswith(str(wanted))
    raise PredicateError(f"unknown operator {op!r}")


def properties_match(where: list[PropertyPredicate], properties: Mapping[str, Any],
                     now: datetime | None) -> bool:
    return all(predicate_holds(p, lookup(properties, p.name), now) for p in where)


def event_matches(match: EventMatch, name: str, properties: Mapping[str, Any],
                  now: datetime | None = None) -> bool:
    """Does one incoming event satisfy a trigger's event match (name and `where` filters)?

    `now` (from the Clock) is needed only by relative date filters (within_last / more_than_ago).
    """
    if match.name != name:
        return False
    return properties_match(match.where, properties, now)


def user_field_value(field: str, user: Mapping[str, Any]) -> Any:
    """A user predicate's stored value from a flat user dict (built-ins at the top, rest in properties)."""
    if field in TEXT_FIELDS or field in TIMESTAMP_FIELDS:
        return user.get(field)
    return lookup(user.get("properties") or {}, field)


def reach_bucket(campaign: str, user_id: str) -> int:
    """A stable per (campaign, user) number in [0, REACH_BUCKETS); the SQL computes the same."""
    digest = hashlib.md5(f"{campaign}:{user_id}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % REACH_BUCKETS


def reach_threshold(percent: float) -> int:
    return round(percent * REACH_BUCKETS / 100)


def in_reach_sample(campaign: str, user_id: str, percent: float) -> bool:
    """Is this user in the campaign's reach sample? The same users stay in it across runs."""
    return percent >= 100 or reach_bucket(campaign, user_id) < reach_threshold(percent)


def subset_key(seed: int, user_id: str) -> str:
    """Sort key of the seeded random subset order (equal to the SQL's)."""
    return hashlib.md5(f"{seed}:{user_id}".encode(), usedforsecurity=False).hexdigest()


def window_start(now: datetime, within: timedelta | None) -> datetime | None:
    return None if within is None else now - within
