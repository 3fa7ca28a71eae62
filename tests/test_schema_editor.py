"""Schemas editors can trust (issue 15): what a new user sees in an editor is what `herald validate` says.

- The real yaml-language-server, spoken to over LSP with one `"**/*.yaml"` → schemas/herald.json
  mapping (README "Editor setup"), reports nothing on the example repo (providers/, campaigns/) and
  reports each mistake of tests/editor/mistakes/ on its line, and nothing else.
- Strict ajv (Node) compiles every schema, and agrees on which documents are valid.
- Every field has hover help (description, examples, markdownDescription) and valid examples.
- The schema patterns agree with the code they mirror (croniter, parse_duration, the timestamp parser).
- Parity: each check only `herald validate` makes (reconciler.schema.VALIDATE_ONLY_CHECKS) comes with a
  document the combined schema accepts and `herald validate` rejects.
- The generated files (schemas, OpenAPI, docs/reference.md) have not drifted from the code.

The Node tools come from `.ci/run` (npm into .ci/node) or PATH; without them these tests skip locally
and fail under CI=true.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from croniter import croniter
from ruamel.yaml import YAML
from yaml_lsp import ROOT, YamlLanguageServer, find_tool, schema_settings

from reconciler.loading import load_paths
from reconciler.models.common import parse_duration
from reconciler.models.schema_rules import CRON_PATTERN, LOCAL_DATETIME_PATTERN
from reconciler.schema import (
    COMBINED_SCHEMA,
    OPENAPI_FILE,
    VALIDATE_ONLY_CHECKS,
    drifted_files,
    generated_files,
    iter_fields,
)

SCHEMAS = ROOT / "schemas"
COMBINED = SCHEMAS / COMBINED_SCHEMA
MISTAKES = ROOT / "tests" / "editor" / "mistakes"
MISTAKE_MARK = re.compile(r"#\s*mistake:")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXAMPLE_FILES = sorted([*(ROOT / "providers").rglob("*.yaml"), *(ROOT / "campaigns").rglob("*.yaml")])
MISTAKE_FILES = sorted(MISTAKES.glob("*.yaml"))


def _require(tool: str | None, what: str) -> str:
    if tool is None:
        message = f"{what} is missing: .ci/run installs it (npm install --prefix .ci/node ...)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return tool


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _documents(text: str) -> list[Any]:
    yaml = YAML(typ="safe", pure=True)
    yaml.allow_duplicate_keys = True  # what a JSON Schema sees: the last value of a repeated key
    return [doc for doc in yaml.load_all(text) if doc is not None]


def _plain(value: Any) -> Any:
    """YAML scalars as a JSON validator (and the editor) sees them: timestamps stay text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


@pytest.fixture(scope="module")
def combined() -> dict[str, Any]:
    return json.loads(COMBINED.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validator(combined: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(combined, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


# ---------------------------------------------------------------- yaml-language-server


@pytest.fixture(scope="module")
def lsp() -> Iterator[YamlLanguageServer]:
    server = YamlLanguageServer(_require(find_tool("yaml-language-server"), "yaml-language-server"),
                                schema_settings(COMBINED), ROOT)
    yield server
    server.close()


def _diagnostics(lsp: YamlLanguageServer, path: Path, text: str | None = None) -> list[dict[str, Any]]:
    lsp.open(path.as_uri(), path.read_text(encoding="utf-8") if text is None else text)
    return lsp.diagnostics(path.as_uri())


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=_rel)
def test_examples_get_no_diagnostics(lsp: YamlLanguageServer, path: Path) -> None:
    found = [(d["range"]["start"]["line"] + 1, d["message"]) for d in _diagnostics(lsp, path)]
    assert found == []


@pytest.mark.parametrize("path", MISTAKE_FILES, ids=_rel)
def test_each_mistake_is_reported_on_its_line(lsp: YamlLanguageServer, path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    marked = {number for number, line in enumerate(lines, 1) if MISTAKE_MARK.search(line)}
    reported: dict[int, list[str]] = {}
    for diagnostic in _diagnostics(lsp, path):
        assert diagnostic.get("severity", 1) == 1, diagnostic  # errors, not warnings
        reported.setdefault(diagnostic["range"]["start"]["line"] + 1, []).append(diagnostic["message"])
    missed = {n: lines[n - 1].strip() for n in sorted(marked - set(reported))}
    extra = {n: reported[n] for n in sorted(set(reported) - marked)}
    assert (missed, extra) == ({}, {}), "mistakes not reported / reports on unmarked lines"
    assert marked


@pytest.mark.parametrize(("file", "key", "help_text"), [
    ("campaigns/flash-sale.yaml", "owner", "E-mail of the owner"),
    ("providers/twilio.yaml", "accountSid", "Twilio Account SID"),  # chosen by kind, then by type
])
def test_hover_shows_the_field_help(lsp: YamlLanguageServer, file: str, key: str, help_text: str) -> None:
    path = ROOT / file
    lines = path.read_text(encoding="utf-8").splitlines()
    _diagnostics(lsp, path)
    number = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
    text = json.dumps(lsp.hover(path.as_uri(), number, lines[number].index(key) + 1))
    assert help_text in text and "Example" in text, text


def test_a_modeline_covers_only_its_own_document(tmp_path: Path) -> None:
    """Without any editor setting, a modeline selects the schema for the document it opens, not for the
    documents after `---`: README tells users to repeat it per document (or use the folder mapping)."""
    server = YamlLanguageServer(_require(find_tool("yaml-language-server"), "yaml-language-server"),
                                {"yaml": {"validate": True, "schemaStore": {"enable": False}}}, tmp_path)
    modeline = f"# yaml-language-server: $schema={COMBINED.as_uri()}\n"
    bad = ("apiVersion: herald/v1\nkind: Segment\nmetadata: {name: bad}\nspec:\n"
           "  rules: {property: {name: plan, op: exists, value: x}}\n")
    try:
        once = _diagnostics(server, tmp_path / "once.yaml", modeline + bad + "---\n" + bad)
        each = _diagnostics(server, tmp_path / "each.yaml", modeline + bad + "---\n" + modeline + bad)
        assert [d["range"]["start"]["line"] + 1 for d in once] == [6]
        assert [d["range"]["start"]["line"] + 1 for d in each] == [6, 13]
    finally:
        server.close()


# ---------------------------------------------------------------- ajv


def _ajv(*args: str) -> list[dict[str, Any]]:
    node = _require(find_tool("node"), "node")
    modules = ROOT / ".ci" / "node" / "node_modules"
    env = {**os.environ, "NODE_PATH": os.pathsep.join(filter(None, [str(modules), os.environ.get("NODE_PATH")]))}
    probe = subprocess.run([node, "-e", "require.resolve('ajv/dist/2020'); require.resolve('ajv-formats')"],
                           env=env, capture_output=True)
    _require(None if probe.returncode else node, "ajv and ajv-formats (npm)")
    done = subprocess.run([node, str(ROOT / "tests" / "editor" / "ajv_compile.js"), *args], env=env,
                          capture_output=True, text=True, timeout=60)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_strict_ajv_compiles_every_schema() -> None:
    files = sorted(str(p) for p in SCHEMAS.glob("*.json") if p.name != OPENAPI_FILE)
    results = _ajv(*files)
    assert [r for r in results if not r["ok"]] == []
    assert sorted(r["file"] for r in results) == files and len(files) == 6


def test_ajv_agrees_on_examples_and_mistakes(tmp_path: Path) -> None:
    examples = [_plain(d) for p in EXAMPLE_FILES for d in _documents(p.read_text(encoding="utf-8"))]
    mistakes = [_plain(d) for p in MISTAKE_FILES for d in _documents(p.read_text(encoding="utf-8"))]
    batch = tmp_path / "documents.json"
    batch.write_text(json.dumps(examples + mistakes))
    results = _ajv("--validate", str(COMBINED), str(batch))
    assert [r["valid"] for r in results] == [True] * len(examples) + [False] * len(mistakes)


# ---------------------------------------------------------------- the schemas themselves


def test_every_field_has_hover_help_and_valid_examples_and_defaults(combined: dict[str, Any]) -> None:
    fields = list(iter_fields(combined))
    assert len(fields) > 250
    for model, field, prop in fields:
        assert {"description", "examples", "markdownDescription"} <= set(prop), f"{model}.{field}"
        assert prop["description"].strip() and prop["markdownDescription"].strip(), f"{model}.{field}"
        check = jsonschema.Draft202012Validator({"$defs": combined["$defs"], **prop},
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
        for example in prop["examples"]:
            assert check.is_valid(example), f"{model}.{field}: example {example!r} is invalid"
        if "default" in prop:  # editors insert defaults on completion
            assert check.is_valid(prop["default"]), f"{model}.{field}: default {prop['default']!r} is invalid"


def test_no_discriminator_and_one_mapping_for_every_kind(combined: dict[str, Any]) -> None:
    text = COMBINED.read_text(encoding="utf-8")
    assert '"discriminator"' not in text
    assert combined["properties"]["kind"]["enum"] == ["Provider", "ProviderGroup", "Campaign", "Segment", "Settings"]


def test_each_schema_says_what_only_herald_validate_checks() -> None:
    for path in sorted(SCHEMAS.glob("*.json")):
        if path.name == OPENAPI_FILE:
            continue
        description = json.loads(path.read_text(encoding="utf-8"))["description"]
        assert "Checked only by `herald validate`" in description, path.name
        assert all(text in description for text in VALIDATE_ONLY_CHECKS.values()), path.name


def _campaign(schedule: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": "c"},
            "spec": {"type": "past_behavior", "owner": "a@example.com", "timezone": {"zone": "Europe/London"},
                     "schedule": schedule, "message": {"body": "Hi"}, **spec}}


TWILIO = {"type": "twilio", "accountSid": "AC" + "0" * 32, "authToken": {"secretRef": {"env": "T"}}}


@pytest.mark.parametrize(("document", "valid"), [
    (_campaign({"once": "2026-12-04T10:00:00"}), True),  # local time, no offset
    (_campaign({"dates": ["2026-12-04T10:00:00", "2026-12-05 09:30"]}), True),
    (_campaign({"once": "2026-12-04T10:00:00", "cron": "0 10 * * 5"}), False),
    (_campaign({"cron": "0 25 * * 5"}), False),
    (_campaign({"cron": "0 10 * * 5"}, timezone={"zone": "Europe/Londn"}), False),
    (_campaign({"every": {"unit": "months", "day": 0, "at": "09:00"}}), False),
    (_campaign({"every": {"unit": "months", "day": -1, "at": "09:00"}}), True),
    (_campaign({"cron": "0 10 * * 5"}, validity="-2h"), False),
    (_campaign({"cron": "0 10 * * 5"}, validity="0s"), False),
    (_campaign({"cron": "0 10 * * 5"}, validity="90m"), True),
    ({"apiVersion": "herald/v1", "kind": "Provider", "metadata": {"name": "t"}, "spec": TWILIO}, False),
    ({"apiVersion": "herald/v1", "kind": "Provider", "metadata": {"name": "t"},
      "spec": {**TWILIO, "messagingServiceSid": "MG" + "0" * 32}}, True),
])
def test_issue_cases(validator: jsonschema.Draft202012Validator, document: dict[str, Any], valid: bool) -> None:
    assert validator.is_valid(document) is valid, [e.message for e in validator.iter_errors(document)]


CRON_SAMPLES = ["0 10 * * 5", "*/15 * * * *", "0 9 * * mon-fri", "0 9 * * MON", "0 0 1 jan *", "0 9 L * *",
                "0 9 * * 5#3", "0 9 * * L5", "30 8 1,15 * *", "0 9 * * 0-7", "@daily", "@hourly",
                "0 9 * * 1 30", "  0 9 * * *", "0 9 ? * *", "0 25 * * 5", "60 * * * *", "0 9 32 * *",
                "0 9 * 13 *", "0 9 * * 8", "0 9 0 * *", "H 9 * * *", "0 9 * *", "0 0-23/0 * * *", "", "daily"]


@pytest.mark.parametrize("expression", CRON_SAMPLES)
def test_cron_pattern_agrees_with_croniter(expression: str) -> None:
    assert bool(re.search(CRON_PATTERN, expression)) == croniter.is_valid(expression)


DURATION_SAMPLES = ["30s", "5m", "2h30m", "7d", "2w", "0s", "0m0s", "-1d", "-0s", "1", "h", "5 m", "01m", ""]


@pytest.mark.parametrize("text", DURATION_SAMPLES)
def test_duration_patterns_agree_with_the_parser(combined: dict[str, Any], text: str) -> None:
    def parses(check: Any) -> bool:
        try:
            return check(parse_duration(text))
        except ValueError:
            return False

    validity = combined["$defs"]["CampaignSpec"]["properties"]["validity"]["anyOf"][0]["pattern"]
    max_age = combined["$defs"]["CatchUp"]["properties"]["maxAge"]["pattern"]
    offset = combined["$defs"]["EventDateTrigger"]["properties"]["offset"]["pattern"]
    assert bool(re.search(validity, text)) == parses(lambda d: d.total_seconds() > 0)
    assert bool(re.search(max_age, text)) == parses(lambda d: d.total_seconds() >= 0)
    assert bool(re.search(offset, text)) == parses(lambda d: True)


TIMESTAMP_SAMPLES = ["2026-12-04T10:00:00", "2026-12-04 10:00", "2026-12-04", "2026-12-04T10:00:00.5",
                     "2026-12-04T10:00:00Z", "2026-12-04T10:00:00+01:00", "2026-12-04T10:00:00+0100",
                     "2026-12-04T10+01:00", "2026-13-04T10:00:00", "2026-12-32", "2026-12-04T24:00",
                     "1969-12-31T23:59:00", "3000-01-01", "26-12-04", "2026-12-04T10:00:00 +01:00"]


@pytest.mark.parametrize("text", TIMESTAMP_SAMPLES)
def test_local_datetime_pattern_accepts_what_campaigns_accept(text: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    from reconciler.models.common import Timestamp

    try:
        TypeAdapter(Timestamp).validate_python(text)
        accepted = True
    except ValidationError:
        accepted = False
    assert bool(re.search(LOCAL_DATETIME_PATTERN, text)) == accepted


# ---------------------------------------------------------------- parity with herald validate

BASE = """apiVersion: herald/v1
kind: Provider
metadata: {name: vonage-eu}
spec: {type: vonage, apiKey: k1, apiSecret: {secretRef: {env: VONAGE_SECRET}}, from: Herald}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec: {providers: [vonage-eu], default: true}
"""
CAMPAIGN = """apiVersion: herald/v1
kind: Campaign
metadata: {name: %(name)s}
spec:
  type: past_behavior
  owner: a@example.com
  timezone: {zone: Europe/London}
  schedule: {cron: "%(cron)s"}
  message: {body: "%(body)s"}
%(extra)s"""


def campaign(name: str = "c", *, cron: str = "0 10 * * 5", body: str = "Hi", extra: str = "") -> str:
    return "---\n" + CAMPAIGN % {"name": name, "cron": cron, "body": body, "extra": extra}


def generic(headers: str, batching: str = "") -> str:
    return ("---\napiVersion: herald/v1\nkind: Provider\nmetadata: {name: gen}\nspec:\n  type: generic_http\n"
            f"  url: https://sms.example.com/send\n  headers: {headers}\n{batching}")


PARITY_CASES: dict[str, tuple[str, str]] = {
    "references": (campaign(extra="  providerGroup: nowhere\n"), "unknown provider group"),
    "unique-names": (campaign() + campaign(), "duplicate Campaign name"),
    "one-default-group": ("---\napiVersion: herald/v1\nkind: ProviderGroup\nmetadata: {name: second}\n"
                          "spec: {providers: [vonage-eu], default: true}\n", "only one group may be the default"),
    "country-routed-once": ("---\napiVersion: herald/v1\nkind: ProviderGroup\nmetadata: {name: a}\n"
                            "spec: {providers: [vonage-eu], countries: [US]}\n---\napiVersion: herald/v1\n"
                            "kind: ProviderGroup\nmetadata: {name: b}\nspec: {providers: [vonage-eu], countries: [US]}\n",
                            "already routed"),
    "phone-number": ("---\napiVersion: herald/v1\nkind: Provider\nmetadata: {name: v2}\nspec: {type: vonage, "
                     "apiKey: k, apiSecret: {secretRef: {env: S}}, from: '+15550000000'}\n", "not a valid E.164"),
    "cron-parses": (campaign(cron="0 9 L-5 * *"), "invalid cron expression"),
    "end-after-start": (campaign(extra="  start: 2026-12-10T00:00:00\n  end: 2026-12-01T00:00:00\n"),
                        "end must be after start"),
    "at-least-at-most": (campaign(extra="  audience: {rules: {event: {name: buy, atLeast: 3, atMost: 1}}}\n"),
                         "atLeast must not exceed atMost"),
    "duration-maximum": (campaign(extra="  validity: 3651d\n"), "longer than the maximum"),
    "integer-range": (campaign(extra="  audience: {rules: {property: {name: n, op: gt, "
                                     "value: 9223372036854775808}}}\n"), "out of range"),
    "templates": (campaign(body="Hi {{ user.first_name "), "template"),
    "generic-http-batching": (generic("{X-User: '{{ user.id }}'}", "  batching: {enabled: true}\n"),
                              "cannot be personalized"),
    "literal-credentials": (generic("{Authorization: 'Bearer abc123'}"), "literal credential"),
    "secrets-and-urls": ("---\napiVersion: herald/v1\nkind: Provider\nmetadata: {name: v3}\nspec: {type: vonage, "
                         "apiKey: k, apiSecret: {secretRef: {env: HERALD_ADMIN_TOKEN}}, from: Herald}\n", "HERALD_"),
    "yaml-limits": (campaign(extra="  paused: false\n  paused: true\n"), "duplicate key"),
}


def test_parity_cases_cover_every_validate_only_check() -> None:
    assert set(PARITY_CASES) == set(VALIDATE_ONLY_CHECKS)


@pytest.mark.parametrize("check", sorted(PARITY_CASES))
def test_only_herald_validate_rejects(validator: jsonschema.Draft202012Validator, tmp_path: Path, check: str) -> None:
    """The schema accepts every document; `herald validate` (load_paths) rejects the set with this check's error."""
    extra, message = PARITY_CASES[check]
    text = BASE + extra
    for document in _documents(text):
        assert validator.is_valid(_plain(document)), [e.message for e in validator.iter_errors(_plain(document))]
    (tmp_path / "repo.yaml").write_text(text)
    errors = [d.format() for d in load_paths([tmp_path]).errors]
    assert any(message in error for error in errors), errors


def test_the_base_of_the_parity_cases_is_valid(tmp_path: Path) -> None:
    (tmp_path / "repo.yaml").write_text(BASE + campaign())
    assert [d.format() for d in load_paths([tmp_path]).errors] == []


def test_mistakes_are_rejected_by_herald_validate_too(tmp_path: Path) -> None:
    """What the editor flags, `herald validate` refuses as well (each mistake document on its own)."""
    for path in MISTAKE_FILES:
        for index, chunk in enumerate(re.split(r"^---\n", path.read_text(encoding="utf-8"), flags=re.M)):
            target = tmp_path / f"{path.stem}-{index}.yaml"
            target.write_text(chunk)
            assert load_paths([target]).errors, f"{_rel(path)} document {index + 1} passes herald validate"


# ---------------------------------------------------------------- drift


def test_generated_files_have_not_drifted() -> None:
    assert drifted_files(SCHEMAS, ROOT / "docs" / "reference.md") == [], "run `herald schema` and commit"


def test_drift_of_any_generated_file_is_detected(tmp_path: Path) -> None:
    reference = tmp_path / "docs" / "reference.md"
    files = generated_files(tmp_path / "schemas", reference)
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert drifted_files(tmp_path / "schemas", reference) == []
    for path in files:
        original = path.read_text()
        path.write_text(original.replace("description", "descriptio", 1))
        assert drifted_files(tmp_path / "schemas", reference) == [path]
        path.write_text(original)


def test_reference_lists_every_field(combined: dict[str, Any]) -> None:
    reference = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    for model, field, _ in iter_fields(combined):
        assert f"| `{field}` |" in reference, f"{model}.{field}"
    for description in VALIDATE_ONLY_CHECKS.values():
        assert description in reference


def test_herald_schema_writes_and_checks(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from reconciler.cli import main

    args = ["--out", str(tmp_path / "schemas"), "--reference", str(tmp_path / "reference.md")]
    runner = CliRunner()
    missing = runner.invoke(main, ["schema", "--check", *args])
    assert missing.exit_code == 1 and "herald.json: out of date" in missing.output
    assert runner.invoke(main, ["schema", *args]).exit_code == 0
    assert runner.invoke(main, ["schema", "--check", *args]).exit_code == 0
    assert (tmp_path / "schemas" / OPENAPI_FILE).read_text() == (SCHEMAS / OPENAPI_FILE).read_text()
