"""Plans: create / update (field diff) / delete / pause / resume / drift / noop, impact, renderers, secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from plan_helpers import campaign_yaml, campaigns, desired

from reconciler.apply import apply_plan, set_campaign_paused
from reconciler.clock import FakeClock
from reconciler.gitsource import CommitInfo
from reconciler.loading import DesiredState
from reconciler.plan import ABSENT, Plan, compute_plan, diff_specs, render_plan
from reconciler.store import AppliedState, StateStore, open_state_store

COMMIT = CommitInfo("a1b2c3d4e5f60718293a4b5c6d7e8f9012345678", "Alice <alice@example.com>",
                    "Launch spring campaigns\n\nDetails.", datetime(2026, 11, 30, 12, 0, tzinfo=UTC))


@pytest.fixture
def store(clock: FakeClock) -> Iterator[StateStore]:
    opened = open_state_store("sqlite:///:memory:", clock=clock)
    yield opened
    opened.close()


def applied(store: StateStore, state: DesiredState, clock: FakeClock) -> AppliedState:
    apply_plan(store, compute_plan(state, store.applied_state(), clock=clock), clock=clock, actor="test",
               allow_prune=True)
    return store.applied_state()


def by_address(plan: Plan) -> dict[str, str]:
    return {c.address: c.action for c in plan.changes}


def test_first_plan_creates_everything(clock: FakeClock) -> None:
    plan = compute_plan(desired(campaigns("a", "b")), AppliedState.empty(), commit=COMMIT, clock=clock)
    assert by_address(plan) == {
        "Settings/global": "create", "Provider/acme": "create", "ProviderGroup/main": "create",
        "Campaign/a": "create", "Campaign/b": "create",
    }
    assert plan.base_version == 0 and plan.commit_sha == COMMIT.sha
    change = next(c for c in plan.changes if c.address == "Campaign/a")
    assert change.spec is not None and change.spec["spec"]["message"]["body"] == "Hello {{ user.first_name }}"
    assert change.source == "campaigns/a.yaml:1"
    impact = change.impact
    assert impact is not None
    assert impact.provider_group == "main" and impact.provider_group_is_default
    assert impact.next_runs[:2] == (datetime(2026, 12, 1, 10, 0, tzinfo=UTC), datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
    assert impact.message is not None and impact.message.segments == 1 and impact.message.approximate
    assert not plan.prune.tripped


def test_update_shows_field_level_diff_and_noop_when_equal(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b")), clock)
    long_body = "Spring sale! " * 20  # two segments
    plan = compute_plan(desired(campaigns("a", "b", a=campaign_yaml("a", long_body))), base, clock=clock)
    assert by_address(plan)["Campaign/a"] == "update"
    assert by_address(plan)["Campaign/b"] == "noop"
    change = next(c for c in plan.changes if c.address == "Campaign/a")
    assert [(d.path, d.old, d.new) for d in change.diff] == [
        ("spec.message.body", "Hello {{ user.first_name }}", long_body)]
    assert change.impact is not None and change.impact.message is not None
    assert change.impact.message.segments == 2 and not change.impact.message.approximate
    assert plan.base_version == base.version == 1


def test_writing_a_default_explicitly_is_not_a_change(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a")), clock)
    explicit = campaign_yaml("a").replace("  paused: false\n", "  paused: false\n  audience: {reachPercent: 100}\n")
    plan = compute_plan(desired({"a": explicit}), base, clock=clock)
    assert not plan.has_changes


def test_delete_pause_resume(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b", "c", "d", d=campaign_yaml("d", paused=True))), clock)
    plan = compute_plan(desired(campaigns("b", "c", "d", b=campaign_yaml("b", paused=True))), base, clock=clock)
    actions = by_address(plan)
    assert actions["Campaign/a"] == "delete"
    assert actions["Campaign/b"] == "pause"
    assert actions["Campaign/d"] == "resume"
    assert actions["Campaign/c"] == "noop"
    b = next(c for c in plan.changes if c.address == "Campaign/b")
    assert [(d.path, d.old, d.new) for d in b.diff] == [("spec.paused", ABSENT, True)]
    assert b.paused_after is True and b.impact is not None and b.impact.next_runs == ()
    assert plan.prune.active == 3 and sorted(plan.prune.removed) == ["a", "b"]
    assert plan.prune.tripped  # 2 of 3 > 50%


def test_prune_guard_counts_share_and_all(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b", "c", "d")), clock)
    assert not compute_plan(desired(campaigns("a", "b", "c")), base, clock=clock).prune.tripped  # 1 of 4
    assert not compute_plan(desired(campaigns("a", "b")), base, clock=clock).prune.tripped  # 2 of 4 = 50%
    assert compute_plan(desired(campaigns("a")), base, clock=clock).prune.tripped  # 3 of 4
    loose = desired(campaigns()).settings.model_copy(
        update={"spec": desired().settings.spec.model_copy(
            update={"pruneGuard": desired().settings.spec.pruneGuard.model_copy(update={"maxShare": 1.0})})})
    state = desired(campaigns())
    state.settings = loose
    everything = compute_plan(state, base, clock=clock)
    assert everything.prune.max_share == 0.5  # a commit cannot loosen the applied guard
    assert everything.prune.tripped and len(everything.prune.removed) == 4


def test_drift_from_operator_override(store: StateStore, clock: FakeClock) -> None:
    applied(store, desired(campaigns("a", "b")), clock)
    set_campaign_paused(store, "a", True, clock=clock, actor="oncall", reason="incident 42")
    plan = compute_plan(desired(campaigns("a", "b")), store.applied_state(), clock=clock)
    assert not plan.has_changes
    [drift] = plan.drift
    assert (drift.address, drift.git_paused, drift.live_paused, drift.actor, drift.resolution) == (
        "Campaign/a", False, True, "oncall", "kept")
    text = render_plan(plan)
    assert "Drift (changes made outside git)" in text and "paused outside git by oncall" in text
    assert "incident 42" in text and "herald resume a" in text
    # A commit that agrees with the override resolves the drift.
    agreeing = compute_plan(desired(campaigns("a", "b", a=campaign_yaml("a", paused=True))), store.applied_state(),
                            clock=clock)
    assert agreeing.drift[0].resolution == "resolved" and agreeing.clear_overrides == [("Campaign", "a")]
    # An unrelated edit keeps the campaign paused.
    edited = compute_plan(desired(campaigns("a", "b", a=campaign_yaml("a", body="new"))), store.applied_state(),
                          clock=clock)
    change = next(c for c in edited.changes if c.address == "Campaign/a")
    assert change.action == "update" and change.paused_after is True


def test_plan_round_trips_through_json(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b")), clock)
    plan = compute_plan(desired(campaigns("b", "c", b=campaign_yaml("b", body="changed"))), base, commit=COMMIT,
                        clock=clock, source="repo@a1b2")
    again = Plan.from_json(plan.to_json())
    assert again == plan
    data = json.loads(render_plan(plan, "json"))
    assert data["base_version"] == 1 and data["commit"]["sha"] == COMMIT.sha
    assert data["summary"]["create"] == 1 and data["summary"]["delete"] == 1 and data["summary"]["update"] == 1
    with pytest.raises(ValueError, match="unsupported plan format"):
        Plan.from_dict({**data, "format": 99})


def test_text_and_markdown_renderings(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b", "c")), clock)
    state = desired(campaigns("b", "c", "new", b=campaign_yaml("b", body="Use code `SPRING` | now")))
    plan = compute_plan(state, base, commit=COMMIT, clock=clock)
    text = render_plan(plan, "text")
    assert 'Herald plan for commit a1b2c3d4e5 "Launch spring campaigns" by Alice <alice@example.com>' in text
    assert "Against applied state version 1." in text
    assert "  + Campaign/new (create)" in text
    assert "  - Campaign/a (delete: pending messages, timers and planned runs are cancelled)" in text
    assert '~ spec.message.body: "Hello {{ user.first_name }}" → "Use code `SPRING` | now"' in text
    assert "next runs: 2026-12-01 10:00Z, 2026-12-02 10:00Z, 2026-12-03 10:00Z" in text
    assert text.rstrip().endswith("Plan: 1 to create, 1 to update, 1 to delete, 0 to pause, 0 to resume, 4 unchanged.")
    markdown = render_plan(plan, "markdown")
    assert markdown.startswith("### Herald plan for `a1b2c3d4e5` — Launch spring campaigns")
    assert "| `+` | `Campaign/new` | create |" in markdown
    assert "| `-` | `Campaign/a` | delete |" in markdown
    assert '+ spec.message.body: "Use code `SPRING` | now"' in markdown  # inside a ```diff block, unescaped
    assert "```diff" in markdown and "<details>" in markdown
    with pytest.raises(ValueError):
        render_plan(plan, "yaml")


def test_prune_guard_is_shown(store: StateStore, clock: FakeClock) -> None:
    base = applied(store, desired(campaigns("a", "b")), clock)
    plan = compute_plan(desired(campaigns()), base, clock=clock)
    assert "Prune guard: this plan deletes or pauses 2 of 2 active campaigns" in render_plan(plan)
    assert "**Prune guard:**" in render_plan(plan, "markdown")


def test_secrets_never_appear_in_rendered_plans(store: StateStore, clock: FakeClock,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tok-9f8e7d6c5b4a-very-secret"
    monkeypatch.setenv("PLAN_TEST_TOKEN", secret)
    monkeypatch.setenv("PLAN_TEST_TOKEN_2", secret + "-rotated")
    base = applied(store, desired(campaigns("a")), clock)
    # The body quotes the secret literally: the redactor (taught every referenced secret) masks it.
    state = desired(campaigns("a", a=campaign_yaml("a", body=f"debug {secret}")))
    provider = state.providers["acme"]
    rotated = provider.model_validate({**provider.model_dump(mode="json", by_alias=True),
                                       "spec": {**provider.model_dump(mode="json", by_alias=True)["spec"],
                                                "auth": {"bearer": {"secretRef": {"env": "PLAN_TEST_TOKEN_2"}}}}})
    state.providers["acme"] = rotated
    plan = compute_plan(state, base, clock=clock)
    assert by_address(plan)["Provider/acme"] == "update"
    for fmt in ("text", "json", "markdown"):
        rendered = render_plan(plan, fmt)
        assert secret not in rendered, fmt
        assert "PLAN_TEST_TOKEN_2" in rendered  # the reference is shown, never the value
    assert '~ spec.auth.bearer.secretRef.env: "PLAN_TEST_TOKEN" → "PLAN_TEST_TOKEN_2"' in render_plan(plan)
    assert "debug ***" in render_plan(plan)


def test_diff_specs_paths() -> None:
    old = {"spec": {"a": 1, "list": [1, 2], "gone": True, "nested": {"x": "y"}}}
    new = {"spec": {"a": 2, "list": [1, 3], "added": None, "nested": {"x": "y"}}}
    assert [(d.path, d.old, d.new) for d in diff_specs(old, new)] == [
        ("spec.a", 1, 2), ("spec.added", ABSENT, None), ("spec.gone", True, ABSENT), ("spec.list[1]", 2, 3)]
    assert [d.path for d in diff_specs({"l": [1]}, {"l": [1, 2]})] == ["l"]


def test_reach_estimator_is_used_and_failures_become_notes(clock: FakeClock) -> None:
    plan = compute_plan(desired(campaigns("a")), AppliedState.empty(), clock=clock,
                        reach=lambda campaign, state: 1234)
    change = next(c for c in plan.changes if c.address == "Campaign/a")
    assert change.impact is not None and change.impact.estimated_reach == 1234
    assert "estimated reach: 1,234 users" in render_plan(plan)

    def broken(campaign: object, state: object) -> int:
        raise RuntimeError("audience store unavailable")

    plan = compute_plan(desired(campaigns("a")), AppliedState.empty(), clock=clock, reach=broken)
    change = next(c for c in plan.changes if c.address == "Campaign/a")
    assert change.impact is not None and change.impact.estimated_reach is None
    assert any("audience store unavailable" in n for n in change.impact.notes)
