"""Building blocks shared by every object kind: metadata, secret references, durations, clock times."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from .schema_rules import CRON_PATTERN, LOCAL_DATETIME_PATTERN, exactly_one_of

API_VERSION = "herald/v1"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class StrictModel(BaseModel):
    """Base for every YAML-facing model: unknown keys are errors, values are not silently coerced."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True, frozen=True)


class Metadata(StrictModel):
    name: str = Field(pattern=NAME_PATTERN, description="Unique per kind; lowercase letters, digits and '-'.")
    labels: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


class SecretRef(StrictModel):
    """Where a credential lives. Exactly one of `env` or `file`."""

    env: str | None = Field(default=None, pattern=ENV_NAME_PATTERN, description="Environment variable name.")
    file: Annotated[str, WithJsonSchema({"type": "string", "pattern": r"\S"})] | None = Field(
        default=None, description="Path of a file holding the secret (e.g. a mounted secret).")

    model_config = ConfigDict(json_schema_extra=exactly_one_of("env", "file"))

    @field_validator("file")
    @classmethod
    def _file_not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("file path must not be empty")
        return value

    def model_post_init(self, __context: Any) -> None:
        if (self.env is None) == (self.file is None):
            raise ValueError("secretRef needs exactly one of 'env' or 'file'")

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"file:{self.file}"


def _reject_literal_secret(value: Any) -> Any:
    if isinstance(value, str | int | float):
        raise ValueError(
            "literal secrets are not allowed; use {secretRef: {env: NAME}} or {secretRef: {file: PATH}}"
        )
    return value


class Secret(StrictModel):
    """A credential given only by reference. `format` wraps the resolved value, e.g. 'Bearer {value}'."""

    secretRef: SecretRef
    format: str = Field(default="{value}", pattern=r"\{value\}")


SecretValue = Annotated[Secret, BeforeValidator(_reject_literal_secret)]


_DURATION_PART = re.compile(r"([0-9]+)(w|d|h|m|s)")
_DURATION_FULL = re.compile(r"^-?([0-9]+(w|d|h|m|s))+$")
_UNIT_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_PATTERN = r"^-?([0-9]+(w|d|h|m|s))+$"
NON_NEGATIVE_DURATION_PATTERN = r"^(-(0+(w|d|h|m|s))+|([0-9]+(w|d|h|m|s))+)$"
POSITIVE_DURATION_PATTERN = r"^(?=[^1-9]*[1-9])([0-9]+(w|d|h|m|s))+$"
"""At least one non-zero digit: what `_positive` accepts, short of the MAX_DURATION bound."""
MAX_DURATION = timedelta(days=3650)
"""The longest duration any field takes (10 years): far inside timedelta's and datetime's range, so
`now ± duration` never overflows; every duration field is checked against it."""
MAX_DURATION_TEXT = "3650d (10 years)"


def parse_duration(text: str) -> timedelta:
    """Parse '5m', '2h30m', '30d', '-1d' into a timedelta; at most MAX_DURATION either way."""
    cleaned = text.strip()
    if not _DURATION_FULL.match(cleaned):
        raise ValueError(f"invalid duration {_clip(text)}; use e.g. 30s, 5m, 2h30m, 7d, 2w")
    parts = _DURATION_PART.findall(cleaned)
    # No unit holds more than 10 years in 12 digits: longer numbers are refused before int() (which
    # also refuses texts of over 4,300 digits, with a message about Python, not durations).
    if any(len(number.lstrip("0")) > 12 for number, _ in parts):
        raise ValueError(f"duration {_clip(text)} is longer than the maximum of {MAX_DURATION_TEXT}")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {_clip(text)} is longer than the maximum of {MAX_DURATION_TEXT}")
    return timedelta(seconds=-seconds if cleaned.startswith("-") else seconds)


def _clip(text: str, limit: int = 40) -> str:
    """repr() of a user value, cut short so a hostile value cannot flood a message."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def format_duration(value: timedelta) -> str:
    total = int(value.total_seconds())
    sign, total = ("-", -total) if total < 0 else ("", total)
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return sign + ("".join(parts) or "0s")


def _to_duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    return value


def _within_maximum(value: timedelta) -> timedelta:
    if abs(value) > MAX_DURATION:
        raise ValueError(f"duration {format_duration(value)} is longer than the maximum of {MAX_DURATION_TEXT}")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError(f"duration must be positive (got {format_duration(value)})")
    return _within_maximum(value)


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError(f"duration must not be negative (got {format_duration(value)})")
    return _within_maximum(value)


_DURATION_JSON = PlainSerializer(format_duration, return_type=str, when_used="json")

Duration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    AfterValidator(_positive),
    _DURATION_JSON,
    WithJsonSchema({"type": "string", "pattern": POSITIVE_DURATION_PATTERN,
                    "description": "Positive duration such as 30s, 5m, 2h30m, 7d, 2w; at most 3650d"}),
]
"""A span of time greater than zero and at most MAX_DURATION (windows, validity, TTLs)."""

NonNegativeDuration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    AfterValidator(_not_negative),
    _DURATION_JSON,
    WithJsonSchema({"type": "string", "pattern": NON_NEGATIVE_DURATION_PATTERN,
                    "description": "Duration such as 0s, 30s, 5m, 2h30m, 7d; at most 3650d"}),
]
"""A span of time from zero to MAX_DURATION."""

SignedDuration = Annotated[
    timedelta,
    BeforeValidator(_to_duration),
    AfterValidator(_within_maximum),
    _DURATION_JSON,
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN,
                    "description": "Duration such as 30s, 5m, 2h30m, 7d, or -1d (before); at most 3650d either way"}),
]
"""An offset either way, at most MAX_DURATION in size."""

MAX_COUNT = 1_000_000_000
"""Largest count (users, messages, events) any field takes; far inside every store's integer range."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""What SQLite INTEGER, PostgreSQL bigint and DuckDB BIGINT hold: bound parameters stay inside it."""

CLOCK_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
ClockTime = Annotated[str, Field(pattern=CLOCK_PATTERN, description="24h clock time HH:MM")]

ISO_COUNTRY_PATTERN = r"^[A-Z]{2}$"
CountryCode = Annotated[str, Field(pattern=ISO_COUNTRY_PATTERN, description="ISO 3166-1 alpha-2 code")]


class DocumentBase(StrictModel):
    apiVersion: Literal["herald/v1"]
    metadata: Metadata

    @property
    def name(self) -> str:
        return self.metadata.name


def minutes_of(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


def _to_datetime(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValueError(f"invalid date/time {value!r}; use ISO 8601, e.g. 2026-12-01T10:00:00") from exc
    return value


MIN_YEAR, MAX_YEAR = 1970, 2999
"""Schedule dates lie in these years: far from datetime's ends (year 1 and 9999), so zone
conversion and `± MAX_DURATION` arithmetic never overflow."""


def _sensible_year(value: datetime) -> datetime:
    if not MIN_YEAR <= value.year <= MAX_YEAR:
        raise ValueError(f"date/time {value.isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}")
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(_to_datetime),
    AfterValidator(_sensible_year),
    WithJsonSchema({"type": "string", "pattern": LOCAL_DATETIME_PATTERN,
                    "description": "ISO 8601 date-time (years 1970-2999); without an offset it is read in the "
                                   "campaign timezone"}),
]

CronExpression = Annotated[str, WithJsonSchema({"type": "string", "pattern": CRON_PATTERN})]
"""A cron expression; croniter checks it (herald validate), the schema mirrors the field ranges."""

ZONE_SCHEMA_MARK = "iana-zone"
ZoneName = Annotated[str, WithJsonSchema({"type": "string", "$comment": ZONE_SCHEMA_MARK})]
"""An IANA time zone name; ZoneInfo checks it (herald validate). reconciler/schema.py replaces the
marked schema with a reference to the list of zones (IanaZone)."""
