"""JSON Schemas generated from the pydantic models (checked in under schemas/)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .models import KINDS

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def schema_filename(kind: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in kind).lstrip("-") + ".json"


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name → schema, one per object kind."""
    schemas: dict[str, dict[str, Any]] = {}
    for kind, model in KINDS.items():
        body = model.model_json_schema(mode="validation")
        schemas[schema_filename(kind)] = {
            "$schema": SCHEMA_DIALECT,
            "$id": f"https://herald.dev/schemas/{schema_filename(kind)}",
            **body,
        }
    return schemas


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, schema in generate_schemas().items():
        path = directory / filename
        path.write_text(render_schema(schema), encoding="utf-8")
        written.append(path)
    return written


def drifted_schemas(directory: Path) -> list[str]:
    """Names of schema files that are missing or differ from what the models generate."""
    drifted = []
    for filename, schema in generate_schemas().items():
        path = directory / filename
        if not path.exists() or path.read_text(encoding="utf-8") != render_schema(schema):
            drifted.append(filename)
    return drifted
