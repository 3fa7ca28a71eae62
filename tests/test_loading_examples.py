"""The shipped example repo is valid, covers every kind/type, and matches the checked-in JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from reconciler.loading import _new_yaml, _to_plain, collect_files, load_paths
from reconciler.models import PROVIDER_TYPES
from reconciler.schema import drifted_schemas, generate_schemas, schema_filename

ROOT = Path(__file__).resolve().parent.parent


def test_examples_are_valid(example_paths: list[Path]) -> None:
    result = load_paths(example_paths)
    assert [d.format() for d in result.diagnostics] == []
    assert result.ok


def test_examples_cover_every_provider_and_campaign_type(example_paths: list[Path]) -> None:
    state = load_paths(example_paths).state
    assert {p.spec.type for p in state.providers.values()} == set(PROVIDER_TYPES)
    specs = [c.spec for c in state.campaigns.values()]
    schedules = {k for s in specs if s.schedule for k in ("once", "dates", "cron", "every") if getattr(s.schedule, k)}
    triggers = {k for s in specs if s.trigger for k in ("event", "inaction", "eventDate") if getattr(s.trigger, k)}
    assert schedules == {"once", "dates", "cron", "every"}
    assert triggers == {"event", "inaction", "eventDate"}
    assert any(p.spec.type == "twilio" and p.spec.messagingServiceSid for p in state.providers.values())
    assert any(p.spec.type == "generic_http" and p.spec.batching for p in state.providers.values())
    assert state.default_group() is not None
    assert state.segments and state.settings.metadata.name == "global"


def test_schemas_have_not_drifted() -> None:
    assert drifted_schemas(ROOT / "schemas") == [], "run `herald schema` and commit schemas/"


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, schema in generate_schemas().items():
        (tmp_path / name).write_text(json.dumps(schema))
    assert sorted(drifted_schemas(tmp_path)) == sorted(generate_schemas())


def _example_documents() -> list[tuple[str, dict[str, object]]]:
    files, problems = collect_files([ROOT / "providers", ROOT / "campaigns"])
    assert not problems
    docs = []
    for source in files:
        for tree in _new_yaml().load_all(source.content.decode()):
            docs.append((source.path, _to_plain(tree, [10**6])))
    return docs


@pytest.mark.parametrize(("path", "document"), _example_documents(),
                         ids=lambda v: v if isinstance(v, str) else str(v.get("metadata")))
def test_example_validates_against_json_schema(path: str, document: dict[str, object]) -> None:
    schema = json.loads((ROOT / "schemas" / schema_filename(str(document["kind"]))).read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(document)]
    assert errors == []


def test_json_schema_rejects_literal_secret_and_unknown_field() -> None:
    schema = json.loads((ROOT / "schemas" / "provider.json").read_text())
    doc = {"apiVersion": "herald/v1", "kind": "Provider", "metadata": {"name": "x"},
           "spec": {"type": "vonage", "apiKey": "k", "apiSecret": "literal", "from": "Herald"}}
    validator = jsonschema.Draft202012Validator(schema)
    assert not validator.is_valid(doc)
    doc["spec"] = {"type": "vonage", "apiKey": "k", "apiSecret": {"secretRef": {"env": "S"}}, "from": "Herald"}
    assert validator.is_valid(doc)
    doc["spec"]["colour"] = "blue"  # type: ignore[index]
    assert not validator.is_valid(doc)
