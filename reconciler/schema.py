"""JSON Schemas, the field reference and the HTTP API description, generated from the code.

`herald schema` writes them (schemas/*.json, docs/reference.md, schemas/openapi.json) and
`herald schema --check` lists the ones that drifted. Invariants:

- Every schema uses standard JSON Schema 2020-12 keywords only (plus the annotation
  `markdownDescription`, which editors read and validators ignore), so strict ajv compiles them.
- Pydantic's `discriminator` keyword is replaced by `if`/`then` on the tag, and every field carries
  `description`, `examples` and `markdownDescription` (reconciler/schema_docs.py).
- `herald.json` holds every kind and selects one by `kind`: one `"**/*.yaml"` mapping covers every
  document of every file. The checks a schema cannot make are listed in VALIDATE_ONLY_CHECKS and in
  each schema's description.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import SchemaSerializer, core_schema

from .models import KINDS
from .models.common import ZONE_SCHEMA_MARK
from .schema_docs import field_docs

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://herald.dev/schemas/"
COMBINED_SCHEMA = "herald.json"
OPENAPI_FILE = "openapi.json"
REFERENCE_DOC = Path("docs") / "reference.md"

VALIDATE_ONLY_CHECKS: dict[str, str] = {
    "references": "names refer to existing objects: a group's providers, a campaign's providerGroup and "
                  "segment; a campaign without providerGroup needs a default group",
    "unique-names": "names are unique per kind, and there is at most one Settings document",
    "one-default-group": "at most one ProviderGroup is the default",
    "country-routed-once": "a country is routed by one group only, and is a known region",
    "phone-number": "a sender number in E.164 form is a real, valid number",
    "cron-parses": "cron expressions parse with croniter (the schema checks the form and field ranges)",
    "end-after-start": "a campaign's end lies after its start (in the campaign timezone)",
    "at-least-at-most": "an event predicate's atLeast does not exceed its atMost",
    "duration-maximum": "durations are at most 3650d (10 years)",
    "integer-range": "predicate values are 64-bit integers or finite numbers",
    "templates": "Liquid templates parse and use only variables the audience can supply; providers that "
                 "need a template id get one",
    "generic-http-batching": "batched generic HTTP requests personalize only per-recipient places",
    "literal-credentials": "headers that look like credentials use a secretRef",
    "secrets-and-urls": "header secretRefs are in Settings secrets.allow, no secretRef names HERALD_*, "
                        "file secrets stay inside HERALD_SECRETS_DIR, outbound URLs reach only allowed "
                        "addresses",
    "yaml-limits": "YAML limits: duplicate keys, aliases, nesting depth, file size and encoding",
}
"""What only `herald validate` checks: a schema cannot see other documents, the environment, the tz
database or the template engine. tests/test_schema_editor.py proves each entry with a document the
combined schema accepts and `herald validate` rejects."""

_VALIDATE_ONLY_TEXT = "Checked only by `herald validate`: " + "; ".join(VALIDATE_ONLY_CHECKS.values()) + "."

class _Generator(GenerateJsonSchema):
    """Pydantic's generator, minus the non-standard bits: no `discriminator`, no per-field titles."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        """Defaults from a default_factory too (shown on hover), serialized as the field serializes them."""
        generated = super().default_schema(schema)
        factory = schema.get("default_factory")
        if factory is None or schema.get("default_factory_takes_data"):
            return generated
        value = SchemaSerializer(schema["schema"]).to_python(factory(), mode="json", by_alias=True)  # type: ignore[call-arg]
        return {**generated, "default": value}

    def tagged_union_schema(self, schema: core_schema.TaggedUnionSchema) -> JsonSchemaValue:
        generated = super().tagged_union_schema(schema)
        discriminator = generated.pop("discriminator", None)
        if not discriminator or "mapping" not in discriminator:
            return generated
        return select_by(discriminator["propertyName"], discriminator["mapping"])


def select_by(tag: str, mapping: dict[str, str]) -> JsonSchemaValue:
    """Choose a subschema by the value of `tag` with if/then (standard keywords, precise editor errors)."""
    return {
        "type": "object",
        "required": [tag],
        "properties": {tag: {"enum": list(mapping)}},
        "allOf": [{"if": {"type": "object", "properties": {tag: {"const": value}}, "required": [tag]},
                   "then": {"$ref": ref}} for value, ref in mapping.items()],
    }


def iana_zones() -> list[str]:
    """The zone names the schemas offer, sorted: a list checked in with the package (reconciler/data/
    zones.txt), so generating the schemas gives the same result whatever tzdata release is installed
    (a fresh install picking up a new release made the drift test fail). Refresh it from the installed
    tzdata with `installed_tzdata_zones()` when upgrading; tests check every listed zone still loads."""
    text = resources.files("reconciler").joinpath("data", "zones.txt").read_text(encoding="utf-8")
    return sorted({line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")})


def installed_tzdata_zones() -> list[str]:
    """Zone names of the installed tzdata package: what ZoneInfo finds without a system tz database."""
    text = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return sorted({line.strip() for line in text.splitlines() if line.strip()})


def _iana_zone_def() -> dict[str, Any]:
    return {"type": "string", "enum": iana_zones(), "title": "IanaZone",
            "description": "An IANA time zone name such as Europe/London or America/New_York.",
            "markdownDescription": "An IANA time zone name such as `Europe/London` or `America/New_York` "
                                   "(the tz database's names; `UTC` for none)."}


def schema_filename(kind: str) -> str:
    return "".join("-" + c.lower() if c.isupper() else c for c in kind).lstrip("-") + ".json"


def _kind_schema(kind: str) -> dict[str, Any]:
    """The $defs of one kind (the kind itself included), with overrides and docs on every field."""
    body = KINDS[kind].model_json_schema(mode="validation", schema_generator=_Generator)
    defs = body.pop("$defs", {})
    defs[kind] = body
    defs = _replace_zone_marks(defs)
    if '"#/$defs/IanaZone"' in json.dumps(defs):
        defs["IanaZone"] = _iana_zone_def()
    for name, definition in defs.items():
        for field, prop in definition.get("properties", {}).items():
            prop.update(field_docs(name, field, prop))
    return defs


def _replace_zone_marks(value: Any) -> Any:
    """Every schema marked as a zone name (models.common.ZoneName) becomes a reference to IanaZone."""
    if isinstance(value, dict):
        if value.get("$comment") == ZONE_SCHEMA_MARK:  # keep the field's own keys (default, description)
            return {**{k: v for k, v in value.items() if k not in ("type", "$comment")}, "$ref": "#/$defs/IanaZone"}
        return {key: _replace_zone_marks(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_replace_zone_marks(item) for item in value]
    return value


def generate_schemas() -> dict[str, dict[str, Any]]:
    """File name → schema: one per object kind, and herald.json for every kind (chosen by `kind`)."""
    schemas: dict[str, dict[str, Any]] = {}
    combined: dict[str, Any] = {}
    for kind in KINDS:
        defs = _kind_schema(kind)
        root = defs.pop(kind)
        filename = schema_filename(kind)
        schemas[filename] = {"$schema": SCHEMA_DIALECT, "$id": BASE_ID + filename, **root,
                             "description": _kind_description(root), "$defs": defs}
        for name, definition in {**defs, kind: root}.items():
            if name in combined and combined[name] != definition:
                raise ValueError(f"two kinds define {name} differently; rename one model")
            combined[name] = definition
    schemas[COMBINED_SCHEMA] = _combined(combined)
    return schemas


def _kind_description(root: dict[str, Any]) -> str:
    return f"{root.get('description', root['title'])}\n\n{_VALIDATE_ONLY_TEXT}"


def _combined(defs: dict[str, Any]) -> dict[str, Any]:
    kinds = list(KINDS)
    description = ("Any Herald document (Provider, ProviderGroup, Campaign, Segment, Settings), chosen by "
                   f"`kind`; map it to every YAML file.\n\n{_VALIDATE_ONLY_TEXT}")
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": BASE_ID + COMBINED_SCHEMA,
        "title": "Herald document",
        "description": description,
        "markdownDescription": description,
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": field_docs("*", "apiVersion", {"const": "herald/v1"}) | {"const": "herald/v1"},
            "kind": field_docs("*", "kind", {"enum": kinds}) | {"enum": kinds},
            "metadata": field_docs("*", "metadata", {}) | {"$ref": "#/$defs/Metadata"},
        },
        "allOf": [{"if": {"type": "object", "properties": {"kind": {"const": kind}}, "required": ["kind"]},
                   "then": {"$ref": f"#/$defs/{kind}"}} for kind in kinds],
        "$defs": dict(sorted(defs.items())),
    }


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generated_files(schema_dir: Path, reference: Path = REFERENCE_DOC) -> dict[Path, str]:
    """Every generated file and its text: the schemas, the OpenAPI description and the field reference."""
    from .http.openapi import openapi_document
    from .reference import render_reference

    schemas = generate_schemas()
    files = {schema_dir / name: render_schema(schema) for name, schema in schemas.items()}
    files[schema_dir / OPENAPI_FILE] = render_schema(openapi_document())
    files[reference] = render_reference(schemas[COMBINED_SCHEMA], VALIDATE_ONLY_CHECKS)
    return files


def write_generated(schema_dir: Path, reference: Path = REFERENCE_DOC) -> list[Path]:
    written = []
    for path, text in generated_files(schema_dir, reference).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drifted_files(schema_dir: Path, reference: Path = REFERENCE_DOC) -> list[Path]:
    """Generated files that are missing or differ from what the code generates now."""
    return [path for path, text in generated_files(schema_dir, reference).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


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


def iter_fields(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(model, field, property schema) for every field of every model in a schema's $defs."""
    for model, definition in schema.get("$defs", {}).items():
        for field, prop in definition.get("properties", {}).items():
            yield model, field, prop
