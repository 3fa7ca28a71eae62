"""Broken input gets precise path:line:col errors, all at once, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.loading import MAX_FILE_BYTES, SourceFile, load_files, load_paths

BROKEN = Path(__file__).resolve().parent / "broken"


def messages_for(name: str) -> list[str]:
    result = load_paths([BROKEN / name])
    assert not result.ok
    return [d.format() for d in result.diagnostics]


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("wrong-type.yaml", ["wrong-type.yaml:6:3: ProviderGroup/wrong-type: spec.providers: Input should be a valid list",
                             "wrong-type.yaml:7:3: ProviderGroup/wrong-type: spec.default: Input should be a valid boolean"]),
        ("missing-key.yaml", ["missing-key.yaml:5:1: Campaign/no-message: spec.message: required field is missing"]),
        ("unknown-field.yaml", ["unknown-field.yaml:11:3: Provider/typo: spec.fromm: unknown field"]),
        ("tabs.yaml", ["tabs.yaml:4:1: ?/?: YAML syntax error"]),
        ("duplicate-key.yaml", ['duplicate-key.yaml:5:3: ?/?: YAML syntax error: duplicate key: found duplicate key "name"']),
        ("literal-secret.yaml", ["literal-secret.yaml:8:3: Provider/leaky: spec.authToken: literal secrets are not allowed"]),
        ("alias-bomb.yaml", ["alias-bomb.yaml:", "more than 100000 nodes (alias bomb?)"]),
        ("non-utf8.yaml", ["non-utf8.yaml:1:1: ?/?: file is not valid UTF-8"]),
        ("not-a-mapping.yaml", ["not-a-mapping.yaml:1:1: ?/?: a document must be a mapping"]),
        ("wrong-kind.yaml", ["wrong-kind.yaml:1:1: Campaign/v2: apiVersion: must be 'herald/v1'",
                             "wrong-kind.yaml:6:1: Campain/typo-kind: kind: unknown kind 'Campain'"]),
    ],
)
def test_broken_file_reports_position_and_field(file: str, expected: list[str]) -> None:
    found = messages_for(file)
    for fragment in expected:
        assert any(fragment in message for message in found), (fragment, found)


def test_cross_object_errors_are_all_reported_at_once() -> None:
    found = "\n".join(messages_for("bad-refs.yaml"))
    assert "bad-refs.yaml:6:15: ProviderGroup/ghosts: spec.providers[0]: unknown provider 'nobody'" in found
    assert "bad-refs.yaml:6:23: ProviderGroup/ghosts: spec.providers[1]: provider 'nobody' is listed twice" in found
    assert "bad-refs.yaml:7:19: ProviderGroup/ghosts: spec.countries[1]: 'ZZ' is not a known country code" in found
    assert "spec.countries[0]: country US is already routed by group 'ghosts'" in found
    assert "bad-refs.yaml:17:3: ProviderGroup/second-default: spec.default: only one group may be the default" in found
    assert "ProviderGroup/too-many: spec.providers: List should have at most 10 items" in found


def test_campaign_checks() -> None:
    found = "\n".join(messages_for("bad-campaign.yaml"))
    for fragment in [
        "bad-campaign.yaml:9:5: Campaign/bad-campaign: spec.schedule.cron: invalid cron expression '61 * * * *'",
        "bad-campaign.yaml:11:3: Campaign/bad-campaign: spec.end: end must be after start",
        "bad-campaign.yaml:12:27: Campaign/bad-campaign: spec.timezone.zone: unknown time zone 'Mars/Olympus'",
        "bad-campaign.yaml:14:5: Campaign/bad-campaign: spec.audience.segment: unknown segment 'no-such-segment'",
        "bad-campaign.yaml:16:5: Campaign/bad-campaign: spec.message.body: template does not parse",
        "bad-campaign.yaml:17:3: Campaign/bad-campaign: spec.providerGroup: unknown provider group 'no-such-group'",
        "warning: Campaign/bad-campaign-2: spec.message.body: 'coupon' is not defined (use user.*, event.*",
        "warning: Campaign/bad-campaign-2: spec.message.body: 'event.sku' needs an event",
        "Campaign/bad-campaign-2: metadata.name: duplicate Campaign name; first defined at",
    ]:
        assert fragment in found, fragment


def test_oversized_file_is_refused() -> None:
    result = load_files([SourceFile("huge.yaml", b"a: b\n" * (MAX_FILE_BYTES // 4))])
    assert [d.message for d in result.diagnostics] == [
        f"file is {MAX_FILE_BYTES // 4 * 5} bytes; the limit is {MAX_FILE_BYTES}"
    ]


def test_deep_nesting_is_refused() -> None:
    deep = "a: " + "[" * 200 + "]" * 200 + "\n"
    result = load_files([SourceFile("deep.yaml", deep.encode())])
    assert not result.ok
    assert any("nests deeper" in d.message or "YAML" in d.message for d in result.diagnostics)


def test_batched_generic_provider_cannot_personalize_headers_or_globals() -> None:
    doc = b"""apiVersion: herald/v1
kind: Provider
metadata: {name: bulk}
spec:
  type: generic_http
  url: https://sms.example/batch
  headers:
    X-User: "{{ user.id }}"
  globals:
    to: $$To
  body: {to: $$To, text: $$Body}
  batching: {enabled: true, size: 10}
"""
    found = [d.format() for d in load_files([SourceFile("bulk.yaml", doc)]).diagnostics]
    assert "bulk.yaml:8:5: Provider/bulk: spec.headers.X-User: headers cannot be personalized" in found[0]
    assert "bulk.yaml:10:5: Provider/bulk: spec.globals.to: global key/values sit outside the batch" in found[1]


def test_literal_looking_header_secret_is_an_error() -> None:
    doc = b"""apiVersion: herald/v1
kind: Provider
metadata: {name: leaky-generic}
spec:
  type: generic_http
  url: https://sms.example/send
  headers: {Authorization: "Bearer sk_live_abcdef"}
"""
    found = [d.format() for d in load_files([SourceFile("g.yaml", doc)]).diagnostics]
    assert found == ["g.yaml:7:13: Provider/leaky-generic: spec.headers.Authorization: "
                     "looks like a literal credential; use {secretRef: {env: NAME}}"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = load_files([SourceFile("fuzz.yaml", data)])
    for diagnostic in result.diagnostics:
        assert diagnostic.path == "fuzz.yaml" and diagnostic.line >= 1 and diagnostic.message


_yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
_yaml_values = st.recursive(_yaml_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["Provider", "ProviderGroup", "Campaign", "Segment", "Settings"]), spec=_yaml_values)
def test_fuzz_structured_documents_give_clear_errors(kind: str, spec: object) -> None:
    import json

    text = json.dumps({"apiVersion": "herald/v1", "kind": kind, "metadata": {"name": "fuzz"}, "spec": spec})
    result = load_files([SourceFile("doc.yaml", text.encode())])
    for diagnostic in result.diagnostics:
        assert diagnostic.format().startswith("doc.yaml:")


def test_cli_exit_codes_and_formats(tmp_path: Path) -> None:
    herald = [sys.executable, "-m", "reconciler.cli"]
    ok = subprocess.run([*herald, "validate", "providers", "campaigns"], capture_output=True, text=True,
                        cwd=BROKEN.parent.parent)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*herald, "validate", str(BROKEN / "unknown-field.yaml"), "--format", "github"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "::error file=" in bad.stdout and "line=11,col=3" in bad.stdout
    as_json = subprocess.run([*herald, "validate", str(BROKEN / "tabs.yaml"), "--format", "json"],
                             capture_output=True, text=True)
    assert as_json.returncode == 1 and '"line": 4' in as_json.stdout
    usage = subprocess.run([*herald, "validate", str(tmp_path / "missing")], capture_output=True, text=True)
    assert usage.returncode == 2
