"""`kind: Settings` — global defaults (at most one document)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .campaign import DndWindow
from .common import (
    MAX_COUNT,
    CronExpression,
    DocumentBase,
    Duration,
    NonNegativeDuration,
    SecretValue,
    StrictModel,
    ZoneName,
)


class GlobalFrequencyCap(StrictModel):
    perDay: int = Field(ge=1, le=1000, description="Messages per user per local day across all campaigns.")


class SafetyDefaults(StrictModel):
    defaultLimit: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Safety limit for campaigns that set none.")


class EmailAlertSettings(StrictModel):
    """Owner alerts by e-mail (SMTP): to the campaign's owner when it is an e-mail address, and to `to`."""

    host: str = Field(min_length=1, max_length=253, description="SMTP server host name or address.")
    port: int = Field(default=587, ge=1, le=65535, description="SMTP port (587 submission, 25 relay, 465 TLS).")
    starttls: bool = Field(default=True, description="Upgrade the connection with STARTTLS before logging in.")
    tls: bool = Field(default=False, description="Implicit TLS from the first byte (port 465); excludes starttls.")
    username: SecretValue | None = Field(default=None, description="SMTP login (a secretRef).")
    password: SecretValue | None = Field(default=None, description="SMTP password (a secretRef).")
    from_: str = Field(alias="from", pattern=r"^[^@\s<>]+@[^@\s<>]+$", description="Sender address.")
    to: list[Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")]] = Field(
        default_factory=list, max_length=100, description="Always-copied recipients besides the campaign owner.")
    timeoutSeconds: float = Field(default=10.0, gt=0, le=120, description="Connect and command timeout.")


class AlertSettings(StrictModel):
    webhookUrl: str | None = Field(default=None, description="Slack-compatible webhook for owner alerts.")
    email: EmailAlertSettings | None = Field(default=None, description="Owner alerts by SMTP e-mail.")


CTIA_STOP = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE")
CTIA_START = ("START", "UNSTOP", "YES")
CTIA_HELP = ("HELP", "INFO")
ProviderType = Literal["twilio", "vonage", "msg91", "exotel", "netcore", "generic_http"]
_TWILIO: ProviderType = "twilio"
Keyword = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^\S+$")]
ReplyText = Annotated[str, Field(max_length=640)]


class ConsentReplies(StrictModel):
    """Automatic answers to keywords in one language; an empty text sends none."""

    stop: ReplyText = Field(default="You are unsubscribed and will get no more messages. Reply START to resubscribe.")
    start: ReplyText = Field(default="You are subscribed again. Reply STOP to unsubscribe, HELP for help.")
    help: ReplyText = Field(default="Reply STOP to unsubscribe, START to resubscribe. Msg & data rates may apply.")


class ConsentSettings(StrictModel):
    """Inbound keywords (matched case-insensitively on the whole trimmed reply) and provider opt-out codes."""

    stopKeywords: list[Keyword] = Field(default_factory=lambda: list(CTIA_STOP), max_length=100,
                                        description="Replies that opt the sender out (CTIA defaults).")
    startKeywords: list[Keyword] = Field(default_factory=lambda: list(CTIA_START), max_length=100,
                                         description="Replies that opt the sender back in.")
    helpKeywords: list[Keyword] = Field(default_factory=lambda: list(CTIA_HELP), max_length=100,
                                        description="Replies answered with the help text.")
    replies: dict[Annotated[str, Field(pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")], ConsentReplies] = Field(
        default_factory=lambda: {"en": ConsentReplies()}, max_length=100,
        description="Auto-replies per language (the user's `language` property, else defaultLanguage).")
    defaultLanguage: str = Field(default="en", pattern=r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})?$")
    optOutErrorCodes: dict[ProviderType, list[Annotated[str, Field(min_length=1, max_length=16)]]] = Field(
        default_factory=lambda: {_TWILIO: ["21610"]},
        description="Provider error codes meaning 'this recipient opted out' (Twilio 21610): the user is opted out.")
    inboundFromFields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["from", "msisdn", "sender", "mobile", "phone"], max_length=20,
        description="Generic HTTP inbound: fields holding the sender's number, first present wins.")
    inboundTextFields: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=lambda: ["text", "body", "message", "content", "keyword"], max_length=20,
        description="Generic HTTP inbound: fields holding the reply text, first present wins.")


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
    cron: CronExpression
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
    defaultTimezone: ZoneName = "UTC"
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
    consent: ConsentSettings = Field(default_factory=ConsentSettings)


class Settings(DocumentBase):
    kind: Literal["Settings"]
    spec: SettingsSpec = Field(default_factory=SettingsSpec)
