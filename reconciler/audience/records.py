"""Users, events and audience members: the records that flow into and out of the audience store.

Parsing is shared by file ingest (JSONL/CSV) and the live HTTP endpoints, so a record means the same
thing whichever way it arrives. Bad input raises RecordError with a message fit to show the sender.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from ..models.common import INT64_MAX, INT64_MIN

MAX_ID_LENGTH = 256
MAX_EVENT_NAME_LENGTH = 200
MAX_PROPERTIES_BYTES = 65_536
MAX_VALUE_DEPTH = 32  # nesting levels inside one record (its properties' objects and arrays)
USER_FIELDS = ("id", "phone", "timezone", "country", "created_at", "opted_out", "subscribed", "properties")
EVENT_FIELDS = ("id", "user_id", "name", "ts", "properties")
# Timestamps Herald accepts (ts, created_at): what every store and datetime arithmetic (ts ± a
# campaign's durations) can hold, with room to spare. Anything outside is refused per record.
EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
LATEST_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class RecordError(ValueError):
    """One input record is unusable; the message says why (never includes secrets)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """A user as given by one input record. None means "not given": an upsert keeps the stored value.

    `properties` is a patch: keys given replace stored ones, a None value removes the key.
    """

    id: str
    phone: str | None = None
    phone_valid: bool | None = None
    timezone: str | None = None
    country: str | None = None
    created_at: datetime | None = None
    opted_out: bool | None = None
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event. `id` is the client's event id (None when not given): the store keeps one event per
    (user_id, name, id), so a retried event with an id is stored once."""

    user_id: str
    name: str
    ts: datetime
    properties: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Member:
    """A selected user, as the scheduler, renderer and router need it."""

    user_id: str
    phone: str
    timezone: str | None
    country: str | None
    properties: dict[str, Any]
    created_at: datetime | None = None
    reachable: bool = True  # False only from get_user(): opted out or no valid phone


def parse_user(obj: Any) -> UserRecord:
    """Validate one user object. Unknown top-level keys become properties."""
    if not isinstance(obj, Mapping):
        raise RecordError("a user must be a JSON object")
    check_storable(obj)
    user_id = _identifier(obj.get("id"), "id")
    country = _country(obj.get("country"))
    phone, phone_valid, phone_country = _phone(obj.get("phone"), country)
    return UserRecord(
        id=user_id,
        phone=phone,
        phone_valid=phone_valid,
        timezone=_timezone(obj.get("timezone")),
        country=country or phone_country,
        created_at=_optional_timestamp(obj.get("created_at"), "created_at"),
        opted_out=_opted_out(obj),
        properties=_properties(obj, USER_FIELDS),
    )


def parse_event(obj: Any, *, now: datetime | None = None) -> EventRecord:
    """Validate one event object; `ts` defaults to `now` when given (live ingest), else it is required."""
    if not isinstance(obj, Mapping):
        raise RecordError("an event must be a JSON object")
    check_storable(obj)
    user_id = _identifier(obj.get("user_id"), "user_id")
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise RecordError("'name' is required and must be a non-empty string")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise RecordError(f"'name' is longer than {MAX_EVENT_NAME_LENGTH} characters")
    ts = _optional_timestamp(obj.get("ts"), "ts")
    if ts is None:
        if now is None:
            raise RecordError("'ts' is required (ISO 8601 timestamp)")
        ts = now
    client_id = None if obj.get("id") in (None, "") else _identifier(obj.get("id"), "id")
    return EventRecord(user_id=user_id, name=name, ts=ts, properties=_properties(obj, EVENT_FIELDS), id=client_id)


def check_storable(record: Mapping[str, Any]) -> None:
    """RecordError unless every store can hold and compare every value of `record`: no NUL character
    (PostgreSQL text and jsonb refuse it), no lone surrogate (not UTF-8: no store can encode it), no
    integer outside 64 bits (PostgreSQL could not cast a 400-digit number to double precision, and
    every numeric predicate on that property then failed for all users), and at most
    MAX_VALUE_DEPTH levels of nesting. Iterative, so any depth is safe to check."""
    stack: list[tuple[Any, str, int]] = [(record, "", 0)]
    while stack:
        value, top, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value, top)
            continue
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            raise RecordError(f"{_short(top)} holds an integer outside the 64-bit range; send it as a string")
        if not isinstance(value, Mapping | list):
            continue
        if depth > MAX_VALUE_DEPTH:
            raise RecordError(f"{_short(top)} nests deeper than {MAX_VALUE_DEPTH} levels")
        if isinstance(value, list):
            stack.extend((child, top, depth + 1) for child in value)
            continue
        for key, child in value.items():
            where = str(key) if not top else f"properties.{key}" if top == "properties" and depth == 1 else top
            if isinstance(key, str):
                _check_text(key, where)
            stack.append((child, where, depth + 1))


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise RecordError(f"{_short(where)} contains a NUL character (\\u0000)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{_short(where)} contains a lone surrogate (invalid Unicode)") from None


def _identifier(value: Any, key: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError(f"'{key}' is required and must be a string")
    text = str(value).strip()
    if not text:
        raise RecordError(f"'{key}' must not be empty")
    if len(text) > MAX_ID_LENGTH:
        raise RecordError(f"'{key}' is longer than {MAX_ID_LENGTH} characters")
    return text


def _country(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _COUNTRY.match(value.strip().upper()):
        raise RecordError(f"'country' must be an ISO 3166 alpha-2 code such as US (got {_short(value)})")
    return value.strip().upper()


def _phone(value: Any, country: str | None) -> tuple[str | None, bool | None, str | None]:
    """E.164 when valid; an invalid number is kept as given but flagged so it is never selected."""
    if value is None or value == "":
        return None, None, None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RecordError("'phone' must be a string")
    raw = str(value).strip()
    try:
        parsed = phonenumbers.parse(raw, country)
    except phonenumbers.NumberParseException:
        return raw, False, None
    if not phonenumbers.is_valid_number(parsed):
        return raw, False, None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164, True, phonenumbers.region_code_for_number(parsed)


def _timezone(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise RecordError("'timezone' must be an IANA zone name such as Europe/Paris")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long for a file name
        raise RecordError(f"unknown time zone {_short(value)}") from None
    return value


def parse_timestamp(value: Any) -> datetime:
    """ISO 8601 (an offset-less value is UTC) or epoch seconds."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        try:
            moment = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"epoch seconds out of range: {value}") from None
    elif isinstance(value, str):
        moment = datetime.fromisoformat(value.strip())
    else:
        raise ValueError("expected an ISO 8601 timestamp")
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _optional_timestamp(value: Any, key: str) -> datetime | None:
    if value is None or value == "":
        return None
    try:
        moment = parse_timestamp(value)
    except ValueError:
        raise RecordError(f"'{key}' is not an ISO 8601 timestamp (got {_short(value)})") from None
    if not EARLIEST_TIMESTAMP <= moment < LATEST_TIMESTAMP:
        raise RecordError(f"'{key}' is out of range: {_short(value)} is not between "
                          f"{EARLIEST_TIMESTAMP:%Y-%m-%d} and {LATEST_TIMESTAMP:%Y-%m-%d}")
    return moment


def _opted_out(obj: Mapping[str, Any]) -> bool | None:
    for key, invert in (("opted_out", False), ("subscribed", True)):
        value = obj.get(key)
        if value is None or value == "":
            continue
        if isinstance(value, str) and value.lower() in ("true", "false"):
            value = value.lower() == "true"
        if not isinstance(value, bool):
            raise RecordError(f"'{key}' must be true or false (got {_short(value)})")
        return (not value) if invert else value
    return None


def _properties(obj: Mapping[str, Any], reserved: tuple[str, ...]) -> dict[str, Any]:
    given = obj.get("properties")
    if given is not None and not isinstance(given, Mapping):
        raise RecordError("'properties' must be a JSON object")
    props = {str(k): v for k, v in obj.items() if k not in reserved}
    props.update({str(k): v for k, v in (given or {}).items()})
    try:
        size = len(json.dumps(props, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError):
        raise RecordError("properties must be plain JSON values (no NaN or Infinity)") from None
    if size > MAX_PROPERTIES_BYTES:
        raise RecordError(f"properties take {size} bytes; the limit is {MAX_PROPERTIES_BYTES}")
    return props


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
