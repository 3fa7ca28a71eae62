"""JSON Schema fragments that mirror the models' cross-field validators (for editors; see schemas/).

The models stay the authority: these fragments only describe, in standard JSON Schema keywords
(`oneOf`, `anyOf`, `not`, `if`/`then`), what a model validator enforces, so an editor reports the
mistake while it is typed, on the line of the field at fault where the rule allows. A field counts as
given when it is present and not null (the models treat an explicit null like an absent key).
"""

from __future__ import annotations

from typing import Any

JsonSchema = dict[str, Any]

LOCAL_DATETIME_PATTERN = (
    r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3])(:[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?)?( ?(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?))?)?$"
)
"""ISO 8601 date or date-time in the years 1970-2999; the offset is optional (local time)."""


def _cron_field(value: str) -> str:
    element = rf"(\*|{value}(-{value})?)(/[1-9][0-9]*)?"
    return rf"{element}(,{element})*"


_MINUTE = r"[0-5]?[0-9]"
_HOUR = r"([01]?[0-9]|2[0-3])"
_DAY = r"(0?[1-9]|[12][0-9]|3[01]|L)"
_MONTH = r"(0?[1-9]|1[0-2]|[Jj][Aa][Nn]|[Ff][Ee][Bb]|[Mm][Aa][Rr]|[Aa][Pp][Rr]|[Mm][Aa][Yy]|[Jj][Uu][Nn]|" \
         r"[Jj][Uu][Ll]|[Aa][Uu][Gg]|[Ss][Ee][Pp]|[Oo][Cc][Tt]|[Nn][Oo][Vv]|[Dd][Ee][Cc])"
_WEEKDAY = r"([0-7]|L[0-7]|[0-7]#[1-5]|[Ss][Uu][Nn]|[Mm][Oo][Nn]|[Tt][Uu][Ee]|[Ww][Ee][Dd]|[Tt][Hh][Uu]|" \
           r"[Ff][Rr][Ii]|[Ss][Aa][Tt])"
CRON_PATTERN = (
    r"^\s*(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + r"\s+".join([_cron_field(_MINUTE), _cron_field(_HOUR), rf"(\?|{_cron_field(_DAY)})",
                   _cron_field(_MONTH), rf"(\?|{_cron_field(_WEEKDAY)})"])
    + rf"(\s+{_cron_field(_MINUTE)})?)\s*$"
)
"""Five cron fields with their ranges (minute 0-59, hour 0-23, day 1-31 or L, month 1-12 or jan-dec,
weekday 0-7 or sun-sat, L5 and 5#3), an optional sixth field of seconds, or an @alias: what croniter
accepts in the usual forms; croniter (herald validate) remains the final word."""


def given(field: str) -> JsonSchema:
    """The object has `field` with a non-null value."""
    return {"type": "object", "required": [field], "properties": {field: {"not": {"type": "null"}}}}


def exactly_one_of(*fields: str) -> JsonSchema:
    return {"oneOf": [given(field) for field in fields]}


def any_of(*fields: str) -> JsonSchema:
    return {"anyOf": [given(field) for field in fields]}


def none_of(*fields: str) -> JsonSchema:
    """None of `fields` may appear. Said per field (`false`), so an editor marks the field's own line
    ("Property day is not allowed"); stricter than the models only for an explicit null."""
    return {"type": "object", "properties": {field: False for field in fields}}


def when(field: str, values: list[Any], then: JsonSchema, *, default_matches: bool = False) -> JsonSchema:
    """`then` applies when `field` is one of `values` (or absent, if `default_matches`)."""
    condition: JsonSchema = {"type": "object", "properties": {field: {"enum": values}}}
    if not default_matches:
        condition["required"] = [field]
    return {"if": condition, "then": then}


def rules(*fragments: JsonSchema) -> JsonSchema:
    """json_schema_extra for a model: every fragment must hold."""
    return {"allOf": list(fragments)}
