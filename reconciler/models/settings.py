"""`kind: Settings` — global defaults (at most one document)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .campaign import DndWindow
from .common import MAX_COUNT, DocumentBase, Duration, NonNegativeDuration, SecretValue, StrictModel


class GlobalFrequencyCap(StrictModel):
    perDay: int = Field(ge=1, le=1000, description="Messages per user per local day across all campaigns.")


class SafetyDefaults(StrictModel):
    defaultLimit: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Safety limit for campaigns that set none.")


class AlertSettings(StrictModel):
    webhookUrl: str | None = Field(default=None, description="Slack-compatible webhook for owner alerts.")


class GitHubStatusSettings(StrictModel):
    """Report each apply as a commit status (context herald/apply) through the GitHub REST API."""

    repository: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$",
        description="owner/name; defaults to the repository the daemon reads.",
    )
    apiBaseUrl: str = Field(default="https://api.github.com", description="GitHub Enterprise: https://HOST/api/v3.")
    token: SecretValue | None = Field(default=None, description="Defaults to the HERALD_GITHUB_TOKEN env variable.")


class NotificationSettings(StrictModel):
    """Where Herald reports each apply (once per commit and result)."""

    github: GitHubStatusSettings | None = None
    webhookUrl: Annotated[str | SecretValue, Field(union_mode="left_to_right")] | None = Field(
        default=None, description="Slack-compatible webhook for apply results (a URL or a secretRef).")


class CatchUp(StrictModel):
    """What to do with scheduled runs missed while the daemon was down."""

    policy: Literal["latest", "all", "skip"] = "latest"
    maxAge: NonNegativeDuration = Field(default_factory=lambda: __import__("datetime").timedelta(hours=6))


class FreezeWindow(StrictModel):
    cron: str
    duration: Duration
    deliveries: Literal["continue", "pause"] = "continue"


class PruneGuard(StrictModel):
    maxShare: float = Field(default=0.5, gt=0, le=1, description="Largest share of active campaigns one commit may remove or pause.")


class SecretSettings(StrictModel):
    """Which secrets headers may carry (linked content, generic HTTP providers)."""

    allow: list[Annotated[str, Field(min_length=1, max_length=512)]] = Field(
        default_factory=list, max_length=1000,
        description="Environment variable names (or secret file paths) headers may use; never HERALD_*.")


class OutboundSettings(StrictModel):
    """Where outbound requests (linked content, generic HTTP, webhooks) may go besides public addresses."""

    allowNetworks: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=1000,
        description="CIDRs of non-public networks to allow, e.g. 127.0.0.0/8 for a local mock.")


class SettingsSpec(StrictModel):
    defaultTimezone: str = "UTC"
    frequencyCap: GlobalFrequencyCap | None = None
    dnd: DndWindow | None = None
    safety: SafetyDefaults = Field(default_factory=SafetyDefaults)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    catchUp: CatchUp = Field(default_factory=CatchUp)
    validity: Duration | None = None
    freezeWindows: list[FreezeWindow] = Field(default_factory=list)
    pruneGuard: PruneGuard = Field(default_factory=PruneGuard)
    secrets: SecretSettings = Field(default_factory=SecretSettings)
    outbound: OutboundSettings = Field(default_factory=OutboundSettings)


class Settings(DocumentBase):
    kind: Literal["Settings"]
    spec: SettingsSpec = Field(default_factory=SettingsSpec)
