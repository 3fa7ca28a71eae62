"""`kind: Provider` — one SMS provider account and how to reach it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import DocumentBase, SecretValue, StrictModel
from .schema_rules import any_of, given

E164_PATTERN = r"^\+[1-9][0-9]{6,14}$"


class RateLimit(StrictModel):
    """Messages per second this account (or sender) may send; shared by every worker and daemon."""

    messagesPerSecond: float = Field(gt=0, le=100000)
    burst: int | None = Field(default=None, ge=1, le=1_000_000, description="Bucket size; defaults to one second's worth.")
    unit: Literal["message", "segment"] = Field(
        default="message", description="What one token pays for: a message, or one SMS segment (US long codes)."
    )


class Pricing(StrictModel):
    """Price per SMS segment by destination country; '*' is the fallback."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    perSegment: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict)


class ProviderCommon(StrictModel):
    baseUrl: str | None = Field(default=None, description="Override the provider's API base URL (tests, regions).")
    timeoutSeconds: float = Field(default=10.0, gt=0, le=120)
    lookupDelaySeconds: float | None = Field(
        default=None, ge=0, le=3600,
        description="How long after an in-doubt send (no answer, 500/502/504, a crash) the provider's message "
                    "lookup is trusted to show the message if it was accepted; unset: the provider's own "
                    "default (docs/providers.md). Only providers with a lookup use it.")
    rateLimit: RateLimit | None = None
    pricing: Pricing | None = None


class TwilioSpec(ProviderCommon):
    """Twilio Programmable Messaging. Either a From number or a Messaging Service SID must be given."""

    type: Literal["twilio"]
    accountSid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    authToken: SecretValue
    from_: str | None = Field(default=None, alias="from", pattern=r"^(\+[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$")
    messagingServiceSid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    statusCallbackUrl: str | None = None
    webhookSigningKey: SecretValue | None = Field(
        default=None, description="The webhook SharedKey secret: verifies callbacks that carry "
        "X-Twilio-Webhooks-Signature-Settings (HMAC-SHA256); the auth token verifies the rest.")

    model_config = ConfigDict(json_schema_extra=any_of("from", "messagingServiceSid"))

    @model_validator(mode="after")
    def _sender(self) -> TwilioSpec:
        if not self.from_ and not self.messagingServiceSid:
            raise ValueError("twilio needs 'from' (a number or alphanumeric sender) or 'messagingServiceSid'")
        return self


class VonageSpec(ProviderCommon):
    """Vonage (Nexmo) SMS API."""

    type: Literal["vonage"]
    apiKey: str = Field(min_length=1, max_length=64)
    apiSecret: SecretValue
    signatureSecret: SecretValue | None = Field(default=None, description="Signs requests and verifies receipts.")
    from_: str = Field(alias="from", pattern=r"^(\+?[1-9][0-9]{6,14}|[A-Za-z0-9 ]{1,11})$")
    statusCallbackUrl: str | None = None
    reportsLookup: bool = Field(
        default=False,
        description="Settle in-doubt sends with Vonage's Reports API (records by client-ref; a separately "
                    "priced Vonage product). Off: the group's inDoubt policy decides.")


class Msg91Spec(ProviderCommon):
    """MSG91 Flow (v5) API: DLT-registered template with ordered variables."""

    type: Literal["msg91"]
    authKey: SecretValue
    senderId: str = Field(pattern=r"^[A-Za-z0-9]{6}$")
    templateId: str | None = Field(default=None, description="Default MSG91 flow/template id; a campaign may override.")
    dltTemplateId: str | None = Field(default=None, pattern=r"^[0-9]{19}$")
    shortUrl: bool = False


class ExotelSpec(ProviderCommon):
    """Exotel SMS API (Accounts/{sid}/Sms/send)."""

    type: Literal["exotel"]
    accountSid: str = Field(min_length=1)
    apiKey: str = Field(min_length=1)
    apiToken: SecretValue
    subdomain: str = Field(default="api.exotel.com", pattern=r"^[a-z0-9.-]+$")
    from_: str = Field(alias="from", min_length=1, description="ExoPhone or DLT sender id.")
    dltEntityId: str | None = Field(default=None, pattern=r"^[0-9]{10,25}$")
    dltTemplateId: str | None = Field(default=None, pattern=r"^[0-9]{10,25}$")
    statusCallbackUrl: str | None = None


class NetcoreSpec(ProviderCommon):
    """Netcore (myTOOday bulk push) SMS API."""

    type: Literal["netcore"]
    feedId: str = Field(min_length=1)
    username: str = Field(min_length=1)
    password: SecretValue
    senderId: str = Field(pattern=r"^[A-Za-z0-9]{3,11}$")
    dltEntityId: str | None = Field(default=None, pattern=r"^[0-9]{10,25}$")
    dltTemplateId: str | None = Field(default=None, pattern=r"^[0-9]{10,25}$")


class Batching(StrictModel):
    """Several recipients per request. Per-user personalization is impossible in globals and headers here."""

    enabled: bool = True
    size: int = Field(default=100, ge=2, le=10000)
    key: str = Field(default="messages", description="Body key holding the list of per-recipient entries.")
    join: Literal["array", "comma"] = Field(
        default="array", description="'array': one object per recipient; 'comma': recipients joined in one string."
    )


class SuccessCriteria(StrictModel):
    statusCodes: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=lambda: [200, 201, 202], min_length=1)
    messageIdPath: str | None = Field(default=None, description="Dotted path to the message id in the JSON response.")


class BasicAuth(StrictModel):
    username: str
    password: SecretValue


class GenericAuth(StrictModel):
    basic: BasicAuth | None = None
    bearer: SecretValue | None = None


HeaderValue = Annotated[str | SecretValue, Field(union_mode="left_to_right")]


class GenericHttpSpec(ProviderCommon):
    """Any HTTP SMS API, configured from YAML.

    Placeholders usable in url, headers, body and globals: $$To, $$Body, $$From, $$MessageID,
    $$TemplateID, $$TemplateVariables (the campaign's ordered variables), and {{ liquid }} for
    per-user values (only in per-recipient places when batching).
    """

    type: Literal["generic_http"]
    method: Literal["GET", "POST", "PUT", "PATCH"] = "POST"
    url: str = Field(min_length=1)
    headers: dict[str, HeaderValue] = Field(default_factory=dict)
    auth: GenericAuth | None = None
    bodyFormat: Literal["json", "form", "query"] = "json"
    body: dict[str, str] = Field(default_factory=dict, description="Per-message key/values.")
    globals: dict[str, str] = Field(default_factory=dict, description="Request-level key/values (outside the batch).")
    templateVariablesFormat: Literal["array", "comma", "pipe"] = "array"
    batching: Batching | None = None
    success: SuccessCriteria = Field(default_factory=SuccessCriteria)
    senderId: str | None = None

    # herald validate: without baseUrl the url must be absolute.
    model_config = ConfigDict(json_schema_extra={"if": {"not": given("baseUrl")}, "then": {
        "type": "object", "properties": {"url": {"type": "string", "pattern": "^https?://"}}}})


ProviderSpec = Annotated[
    TwilioSpec | VonageSpec | Msg91Spec | ExotelSpec | NetcoreSpec | GenericHttpSpec,
    Field(discriminator="type"),
]
PROVIDER_TYPES = ("twilio", "vonage", "msg91", "exotel", "netcore", "generic_http")


class Provider(DocumentBase):
    kind: Literal["Provider"]
    spec: ProviderSpec
