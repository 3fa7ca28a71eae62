"""Pydantic models: the single source of truth for every YAML object kind (and schemas/*.json)."""

from __future__ import annotations

from .campaign import Campaign, CampaignSpec
from .common import API_VERSION, Metadata, Secret, SecretRef, StrictModel, parse_duration
from .group import MAX_PROVIDERS_PER_GROUP, ProviderGroup, ProviderGroupSpec
from .provider import PROVIDER_TYPES, Provider
from .segment import Segment
from .settings import Settings, SettingsSpec

Document = Provider | ProviderGroup | Campaign | Segment | Settings

KINDS: dict[str, type[Provider | ProviderGroup | Campaign | Segment | Settings]] = {
    "Provider": Provider,
    "ProviderGroup": ProviderGroup,
    "Campaign": Campaign,
    "Segment": Segment,
    "Settings": Settings,
}

__all__ = [
    "API_VERSION",
    "KINDS",
    "MAX_PROVIDERS_PER_GROUP",
    "PROVIDER_TYPES",
    "Campaign",
    "CampaignSpec",
    "Document",
    "Metadata",
    "Provider",
    "ProviderGroup",
    "ProviderGroupSpec",
    "Secret",
    "SecretRef",
    "Segment",
    "Settings",
    "SettingsSpec",
    "StrictModel",
    "parse_duration",
]
