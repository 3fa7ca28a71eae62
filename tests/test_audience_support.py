"""Factories and fixtures shared by the audience tests (no tests here)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter

from reconciler.audience import AudienceStore, open_audience_store, parse_event, parse_user
from reconciler.audience.compiler import Rule
from reconciler.loading import DesiredState
from reconciler.models import Campaign, Segment, Settings

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
_RULE = TypeAdapter(Rule)


def rule(obj: dict[str, Any]) -> Rule:
    return _RULE.validate_python(obj)


def make_campaign(name: str = "c", **spec: Any) -> Campaign:
    body: dict[str, Any] = {"type": "past_behavior", "owner": "owner@example.com", "message": {"body": "hi"},
                            "schedule": {"once": "2026-12-02T10:00:00Z"}}
    if spec.get("type") == "live":
        body.pop("schedule")
        body["trigger"] = {"event": {"name": "signed_up"}}
    body.update(spec)
    return Campaign.model_validate(
        {"apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": name}, "spec": body})


def make_settings(**spec: Any) -> Settings:
    return Settings.model_validate(
        {"apiVersion": "herald/v1", "kind": "Settings", "metadata": {"name": "global"}, "spec": spec})


def make_segment(name: str, rules: dict[str, Any]) -> Segment:
    return Segment.model_validate(
        {"apiVersion": "herald/v1", "kind": "Segment", "metadata": {"name": name}, "spec": {"rules": rules}})


def make_state(*campaigns: Campaign, segments: tuple[Segment, ...] = (), settings: Settings | None = None
               ) -> DesiredState:
    state = DesiredState()
    state.campaigns = {c.name: c for c in campaigns}
    state.segments = {s.name: s for s in segments}
    if settings is not None:
        state.settings = settings
    return state


def phone(n: int) -> str:
    """A valid US number per n (555-01xx is reserved for fiction, 415 area code is valid)."""
    return f"+1415555{n:04d}"


def add_users(store: AudienceStore, users: list[dict[str, Any]], now: datetime = NOW) -> None:
    store.upsert_users([parse_user(u) for u in users], now=now)


def add_events(store: AudienceStore, events: list[dict[str, Any]]) -> None:
    store.insert_events([parse_event(e) for e in events])


def ids(store: AudienceStore, rules: Rule | None, now: datetime = NOW) -> set[str]:
    return {m.user_id for batch in store.iter_members(rules, now, batch_size=7) for m in batch}


def _open(kind: str, request: pytest.FixtureRequest) -> AudienceStore:
    if kind == "duckdb":
        return open_audience_store("duckdb:///:memory:")
    return open_audience_store(request.getfixturevalue("pg_dsn"))


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest) -> Iterator[AudienceStore]:
    """The same tests on the embedded DuckDB store and on PostgreSQL (isolated schema)."""
    opened = _open(request.param, request)
    yield opened
    opened.close()


@pytest.fixture
def duck() -> Iterator[AudienceStore]:
    opened = open_audience_store("duckdb:///:memory:")
    yield opened
    opened.close()
