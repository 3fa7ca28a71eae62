"""docs/reference.md: the field reference, rendered from the combined JSON Schema (itself generated from
the models), so it cannot say anything the schema does not. `herald schema --check` reports drift."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from .models import KINDS
from .models.common import (
    CLOCK_PATTERN,
    DURATION_PATTERN,
    NON_NEGATIVE_DURATION_PATTERN,
    POSITIVE_DURATION_PATTERN,
)
from .models.schema_rules import CRON_PATTERN, LOCAL_DATETIME_PATTERN

HEADER = """# Field reference

Generated from the models by `herald schema` (do not edit; `herald schema --check` fails when it is
out of date). Every field below is also in `schemas/herald.json`, which editors use for hover help,
completion and errors (README, "Editor setup").
"""


def render_reference(schema: dict[str, Any], validate_only: dict[str, str]) -> str:
    defs = schema["$defs"]
    lines = [HEADER, "## Kinds", ""]
    lines += [f"- [{kind}](#{kind.lower()})" for kind in KINDS]
    for model in _models_in_order(defs):
        lines += ["", f"## {model}" if model in KINDS else f"### {model}", ""]
        lines += _model_section(model, defs[model])
    lines += ["", "## Checked only by `herald validate`", "",
              "A JSON Schema sees one document at a time; these checks need the other documents, the "
              "environment, the tz database or the template engine:", ""]
    lines += [f"- **{name}**: {text}" for name, text in validate_only.items()]
    return "\n".join(lines) + "\n"


def _models_in_order(defs: dict[str, Any]) -> list[str]:
    """Each kind followed by the models it uses, depth first, each model once."""
    seen: list[str] = []

    def visit(name: str) -> None:
        if name in seen or "properties" not in defs.get(name, {}):
            return
        seen.append(name)
        for ref in _refs(defs[name]):
            visit(ref)

    for kind in KINDS:
        visit(kind)
    return seen


def _refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        ref = value.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            yield ref.removeprefix("#/$defs/")
        for item in value.values():
            yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


def _model_section(name: str, definition: dict[str, Any]) -> list[str]:
    lines = []
    if definition.get("description") and name not in KINDS:
        lines += [definition["description"].split("\n\n")[0], ""]
    lines += ["| Field | Type | Required | Default | Constraints | Description |", "|---|---|---|---|---|---|"]
    required = set(definition.get("required", []))
    for field, prop in definition["properties"].items():
        default = "" if prop.get("default") in (None, [], {}) else f"`{_cell(_json(prop['default']))}`"
        lines.append(f"| `{field}` | {_type(prop)} | {'yes' if field in required else ''} | {default} | "
                     f"{_cell(_constraints(prop))} | {_cell(prop.get('description', ''))} |")
    return lines


_WORDS = (("minimum", ">= {}"), ("exclusiveMinimum", "> {}"), ("maximum", "<= {}"), ("exclusiveMaximum", "< {}"),
          ("minLength", "at least {} chars"), ("maxLength", "at most {} chars"), ("minItems", "at least {} items"),
          ("maxItems", "at most {} items"), ("uniqueItems", "no repeats"))
MAX_PATTERN_SHOWN = 48


def _constraints(prop: dict[str, Any]) -> str:
    """Ranges, lengths, sizes and short patterns of a field (or of its non-null alternative)."""
    facts: list[str] = []
    for option in [prop, *prop.get("anyOf", [])]:
        for key, template in _WORDS:
            if key in option and option[key] is not False:
                facts.append("non-empty" if (key, option[key]) == ("minLength", 1) else template.format(option[key]))
        pattern = option.get("pattern")
        if pattern and len(pattern) <= MAX_PATTERN_SHOWN:
            facts.append(f"`{pattern}`")
    return ", ".join(dict.fromkeys(facts))


def _type(prop: dict[str, Any]) -> str:
    if "$ref" in prop:
        target = prop["$ref"].removeprefix("#/$defs/")
        return "zone name" if target == "IanaZone" else f"[{target}](#{target.lower()})"
    if "const" in prop:
        return f"`{_json(prop['const'])}`"
    if "enum" in prop:
        return " \\| ".join(f"`{v}`" for v in prop["enum"] if v is not None)
    options = [o for o in prop.get("anyOf", prop.get("oneOf", [])) if o.get("type") != "null"]
    if options:
        return " or ".join(_type(o) for o in options)
    kind = prop.get("type")
    if kind == "array":
        return f"list of {_type(prop.get('items', {}))}"
    if kind == "object" and "additionalProperties" in prop and isinstance(prop["additionalProperties"], dict):
        return f"map of {_type(prop['additionalProperties'])}"
    if kind == "object" and "allOf" in prop:
        return "object (by `" + prop.get("required", ["type"])[0] + "`)"
    if kind == "string" and "pattern" in prop:
        return NAMED_PATTERNS.get(prop["pattern"], "string (pattern)")
    return str(kind or "any")


NAMED_PATTERNS = {
    LOCAL_DATETIME_PATTERN: "date-time (offset optional)",
    CRON_PATTERN: "cron expression",
    POSITIVE_DURATION_PATTERN: "duration (> 0)",
    NON_NEGATIVE_DURATION_PATTERN: "duration (>= 0)",
    DURATION_PATTERN: "duration (signed)",
    CLOCK_PATTERN: "clock time HH:MM",
}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
