"""Factories shared by the scheduler tests (no tests here)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from reconciler.models import Campaign, Settings


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def make_campaign(name: str = "c", **spec: Any) -> Campaign:
    body: dict[str, Any] = {"type": "past_behavior", "owner": "owner@example.com", "message": {"body": "hi"}}
    body.update(spec)
    return Campaign.model_validate(
        {"apiVersion": "herald/v1", "kind": "Campaign", "metadata": {"name": name}, "spec": body}
    )


def make_live(name: str = "live", **spec: Any) -> Campaign:
    return make_campaign(name, type="live", **spec)


def make_settings(**spec: Any) -> Settings:
    return Settings.model_validate(
        {"apiVersion": "herald/v1", "kind": "Settings", "metadata": {"name": "global"}, "spec": spec}
    )


def fixed(zone: str) -> dict[str, str]:
    return {"mode": "fixed", "zone": zone}


def user_mode(zone: str) -> dict[str, str]:
    return {"mode": "user", "zone": zone}
