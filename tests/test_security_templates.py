"""Message templates cannot read files or reach Python objects, and a hostile template in a commit is
refused with a clear error instead of crashing the reconcile (it did: static analysis of
`{% include %}` raised out of validation). The engine also survives an unexpected crash in reconcile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from daemon_harness import (
    SETTINGS_YAML,
    Mock,
    campaign_yaml,
    commit_files,
    engine_world,
    metric_value,
    providers_yaml,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.audience.records import Member
from reconciler.cli import main
from reconciler.demo import DemoWorld
from reconciler.engine import LAST_ERROR_KEY
from reconciler.loading import SourceFile, load_files
from reconciler.models import Campaign
from reconciler.render import Rendered, RenderFailure, render_message
from reconciler.store.base import AuditQuery

FIRE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
FILE_CONTENT = "TOP-SECRET-FILE-CONTENT-4471"
HOSTILE = [
    "{% include 'leak.txt' %}", "{% render 'leak.txt' %}", "{% include '/etc/passwd' %}",
    "{% render '../leak.txt' %}", "{% include leak %}",
    "{{ user.__class__ }}", "{{ user.__init__.__globals__ }}", "{{ user.first_name.__class__.__mro__ }}",
    "{{ user['__class__'] }}", "{{ user.items }}", "{{ user.keys }}", "{{ user.get }}",
    "{{ user.first_name.upper }}", "{{ campaign.__dict__ }}", "{{ user.first_name | __import__ }}",
    "{% assign x = user.__class__ %}{{ x }}",
]


def campaign(body: str) -> Campaign:
    return Campaign.model_validate({
        "apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": "probe"},
        "spec": {"type": "past_behavior", "owner": "sre@example.com", "schedule": {"once": "2026-12-01T09:00:00Z"},
                 "audience": {"rules": {"property": {"name": "first_name", "op": "exists"}}},
                 "message": {"body": "Hi " + body}}})


@pytest.fixture
def leak_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file a template would read if includes could reach the working directory."""
    (tmp_path / "leak.txt").write_text(FILE_CONTENT)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "leak.txt"


@pytest.mark.parametrize("body", HOSTILE)
def test_templates_cannot_read_files_or_python_objects(leak_file: Path, body: str) -> None:
    member = Member("u1", "+14155550123", "UTC", "US", {"first_name": "Ada"})
    result = render_message(campaign(body), member)
    if isinstance(result, Rendered):
        assert result.body.strip() == "Hi", result.body  # rendered to nothing, revealed nothing
    else:
        assert isinstance(result, RenderFailure)
        assert FILE_CONTENT not in result.reason and "<class" not in result.reason
        assert "module" not in result.reason.lower()


def files(body: str) -> dict[str, str]:
    text = campaign_yaml("promo", FIRE, everyone=True).replace(
        "body: \"Hi {{ user.first_name }}, your code is {{ user.id }}\"", "body: \"Hi " + body.replace('"', "'") + "\"")
    return {"providers/providers.yaml": providers_yaml(), "campaigns/settings.yaml": SETTINGS_YAML,
            "campaigns/promo.yaml": text}


@pytest.mark.parametrize("tag", ["include", "render"])
def test_validate_refuses_include_and_render_with_a_clear_error(tmp_path: Path, tag: str) -> None:
    for rel, text in files(f"{{% {tag} 'leak.txt' %}}").items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "providers"), str(tmp_path / "campaigns")])
    assert result.exit_code == 1, result.output
    assert "promo.yaml:" in result.output and "cannot include or render" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def world(tmp_path: Path) -> Iterator[DemoWorld]:
    with engine_world(tmp_path, files("{{ user.first_name }}"), population=8) as w:
        w.step()
        yield w


def test_a_commit_with_include_is_refused_and_the_applied_state_keeps_running(world: DemoWorld) -> None:
    store = world.engine.rt.store
    good = store.applied_state().commit_sha
    bad = commit_files(world.repo, files("{% include '/etc/passwd' %}"), "try to read a file")
    world.step()
    assert store.applied_state().commit_sha == good
    refused = store.query_audit(AuditQuery(commit=bad, actions=["apply_refused"]))
    assert len(refused) == 1 and "cannot include or render" in str(refused[0].details)
    metrics = world.engine.rt.metrics.render().decode()
    assert metric_value(metrics, "herald_reconcile_errors_total", {"stage": "apply"}) == 1
    world.advance_to(FIRE.replace(minute=5))
    bodies = {str(m["body"]) for m in Mock(world.mock_url).messages()}
    assert len(bodies) == 8 and all(b.startswith("Hi ") and "root:" not in b for b in bodies)


def test_an_unexpected_crash_in_reconcile_is_reported_and_delivery_goes_on(world: DemoWorld,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import reconciler.engine as engine_module

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyError("a bug in planning")

    store = world.engine.rt.store
    good = store.applied_state().commit_sha
    commit_files(world.repo, files("{{ user.first_name }}!"), "an edit the buggy planner chokes on")
    monkeypatch.setattr(engine_module, "reconcile", crash)
    world.clock.set(FIRE)
    _, delivered = world.step()  # sync crashes; the same step still schedules and delivers
    assert delivered.sent == 8 and store.applied_state().commit_sha == good
    assert (store.kv_get(LAST_ERROR_KEY) or {}).get("stage") == "reconcile"
    errors = store.query_audit(AuditQuery(actions=["error"]))
    assert len(errors) == 1 and "KeyError" in str(errors[0].details["message"])
    metrics = world.engine.rt.metrics.render().decode()
    assert metric_value(metrics, "herald_reconcile_errors_total", {"stage": "reconcile"}) == 1
    monkeypatch.undo()
    world.step()
    assert store.applied_state().commit_sha != good and store.kv_get(LAST_ERROR_KEY) is None


LIQUID_PIECES = ["{%", "%}", "{{", "}}", "{%-", "-%}", " ", "include", "render", "'leak.txt'", "leak", "with",
                 "user.first_name", "user.__class__", "event.x", "campaign.name", "linked.a", "|", "default:", "'x'",
                 "for i in (1..3)", "endfor", "if", "endif", "else", "assign y = 1", "capture c", "endcapture",
                 "raw", "endraw", "comment", "endcomment", "liquid", "echo", "cycle 'a'", "tablerow", "#", "size",
                 "upcase", ".", "[", "]", "\"", "'", ",", ":", "\n", "é😀"]


@settings(max_examples=120, deadline=None)
@given(pieces=st.lists(st.sampled_from(LIQUID_PIECES), min_size=1, max_size=14))
def test_fuzzed_templates_never_crash_validation_or_rendering(pieces: list[str]) -> None:
    """Any message body: validation answers with diagnostics (never an exception), and a body that
    validates renders to a message or a RenderFailure value, never leaking the working directory."""
    body = "".join(pieces)
    text = files("{{ user.first_name }}")["campaigns/promo.yaml"].replace(
        "body: \"Hi {{ user.first_name }}\"", "body: " + json.dumps(body))
    sources = [SourceFile(rel, content.encode()) for rel, content in
               {**files("x"), "campaigns/promo.yaml": text}.items()]
    result = load_files(sources)
    if not result.ok:
        assert result.diagnostics
        return
    promo = result.state.campaigns["promo"]
    rendered = render_message(promo, Member("u1", "+14155550123", "UTC", "US", {"first_name": "Ada"}))
    assert isinstance(rendered, Rendered | RenderFailure)
    if isinstance(rendered, Rendered):
        assert FILE_CONTENT not in rendered.body and "<class" not in rendered.body
