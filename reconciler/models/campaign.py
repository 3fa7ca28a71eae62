"""`kind: Campaign` — when, who and what for one SMS campaign."""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    INT64_MAX,
    INT64_MIN,
    MAX_COUNT,
    ClockTime,
    CronExpression,
    DocumentBase,
    Duration,
    SignedDuration,
    StrictModel,
    Timestamp,
    ZoneName,
)
from .schema_rules import exactly_one_of, given, none_of, rules, when
from .segment import PropertyPredicate, Rule

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class Every(StrictModel):
    """Every N days/weeks/months at a clock time; weeks need `weekday`, months need `day` (1-28 or -1 = last)."""

    interval: int = Field(default=1, ge=1, le=365)
    unit: Literal["days", "weeks", "months"]
    at: ClockTime
    weekday: Weekday | None = None
    day: int | None = Field(default=None, ge=-1, le=28)

    model_config = ConfigDict(json_schema_extra=rules(
        when("unit", ["weeks"], {"allOf": [given("weekday"), none_of("day")]}),
        when("unit", ["months"], {"allOf": [given("day"), none_of("weekday"),
                                            {"type": "object", "properties": {"day": {"not": {"const": 0}}}}]}),
        when("unit", ["days"], none_of("weekday", "day")),
    ))

    @model_validator(mode="after")
    def _anchor(self) -> Every:
        if self.unit == "weeks" and (self.weekday is None or self.day is not None):
            raise ValueError("unit 'weeks' needs 'weekday' and takes no 'day'")
        if self.unit == "months" and self.day == 0:
            raise ValueError("there is no day 0 of a month: use 1-28, or -1 for the last day")
        if self.unit == "months" and (self.day is None or self.weekday is not None):
            raise ValueError("unit 'months' needs 'day' (1-28, or -1 for the last day) and takes no 'weekday'")
        if self.unit == "days" and (self.weekday is not None or self.day is not None):
            raise ValueError("unit 'days' takes neither 'weekday' nor 'day'")
        return self


class Schedule(StrictModel):
    """Exactly one of once / dates / cron / every."""

    once: Timestamp | None = None
    dates: list[Timestamp] | None = Field(default=None, min_length=1, max_length=366)
    cron: CronExpression | None = Field(default=None, description="Five-field cron expression, evaluated in the campaign tz.")
    every: Every | None = None

    model_config = ConfigDict(json_schema_extra=exactly_one_of("once", "dates", "cron", "every"))

    @model_validator(mode="after")
    def _exactly_one(self) -> Schedule:
        given = [k for k in ("once", "dates", "cron", "every") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"schedule needs exactly one of once, dates, cron, every (got {given or 'none'})")
        return self

    @property
    def recurring(self) -> bool:
        return self.cron is not None or self.every is not None


class EventMatch(StrictModel):
    name: str = Field(min_length=1)
    where: list[PropertyPredicate] = Field(default_factory=list)


class InactionTrigger(StrictModel):
    """`event` happened and `missing` did not follow within `within` (e.g. cart abandonment)."""

    event: EventMatch
    missing: EventMatch
    within: Duration


class EventDateTrigger(StrictModel):
    """Send at a date/time read from an event property, shifted by `offset` (e.g. -1d before travel)."""

    event: EventMatch
    property: str = Field(min_length=1)
    offset: SignedDuration = Field(default_factory=lambda: __import__("datetime").timedelta(0))
    at: ClockTime | None = Field(default=None, description="Send at this clock time on the resulting day.")


class Trigger(StrictModel):
    """Exactly one of event / inaction / eventDate."""

    event: EventMatch | None = None
    inaction: InactionTrigger | None = None
    eventDate: EventDateTrigger | None = None

    model_config = ConfigDict(json_schema_extra=exactly_one_of("event", "inaction", "eventDate"))

    @model_validator(mode="after")
    def _exactly_one(self) -> Trigger:
        given = [k for k in ("event", "inaction", "eventDate") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"trigger needs exactly one of event, inaction, eventDate (got {given or 'none'})")
        return self


class TimezoneSpec(StrictModel):
    mode: Literal["fixed", "user"] = "fixed"
    zone: ZoneName | None = Field(default=None, description="IANA zone; for 'user' mode the fallback zone.")

    # herald validate: fixed mode (the default) needs a zone.
    model_config = ConfigDict(json_schema_extra=when("mode", ["fixed"], given("zone"), default_matches=True))


class DndWindow(StrictModel):
    """Quiet hours in the recipient's local time; a window may wrap midnight (21:00-09:00)."""

    start: ClockTime
    end: ClockTime
    action: Literal["discard", "delay"] = "delay"


class FrequencyCapOverride(StrictModel):
    ignoreGlobal: bool = Field(default=False, description="Do not apply the global per-user cap to this campaign.")
    perDay: int | None = Field(default=None, ge=1, le=1000, description="This campaign's own cap per user per day.")


class Subset(StrictModel):
    """Send to exactly `limit` users: random for past behaviour, first qualifying for live (then it ends)."""

    limit: int = Field(ge=1, le=MAX_COUNT)
    mode: Literal["random", "first"] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX, description="Fix the random choice; otherwise stored per run.")


class Audience(StrictModel):
    segment: str | None = Field(default=None, description="Name of a saved Segment.")
    rules: Rule | None = Field(default=None, description="Inline rules; combined with the segment (AND) if both.")
    reachPercent: float = Field(default=100.0, gt=0, le=100)
    subset: Subset | None = None
    dailyLimit: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    runLimit: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    safetyLimit: int | None = Field(default=None, ge=1, le=MAX_COUNT, description="Block the run when more users qualify.")


class LinkedContent(StrictModel):
    """An external HTTP source fetched at send time; available in the template as linked.<name>."""

    name: str = Field(pattern=r"^[a-z_][a-z0-9_]*$")
    url: str = Field(min_length=1, description="Liquid-templated per user.")
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str | dict[str, object]] = Field(default_factory=dict)
    timeoutSeconds: float = Field(default=3.0, gt=0, le=60)
    cacheTtl: Duration | None = None
    onError: Literal["skip_user", "send_without", "abort_run"] = "skip_user"


class Message(StrictModel):
    body: str = Field(min_length=1, max_length=10000, description="Liquid template.")
    templateId: str | None = Field(default=None, description="DLT/provider template id ($$TemplateID).")
    templateVariables: list[str] = Field(
        default_factory=list, description="Liquid expressions in the order the template declares them."
    )
    linkedContent: list[LinkedContent] = Field(default_factory=list)


class Conversion(StrictModel):
    event: str = Field(min_length=1)
    within: Duration
    where: list[PropertyPredicate] = Field(default_factory=list)


class Budget(StrictModel):
    amount: float = Field(gt=0, le=1e12)
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    per: Literal["run", "month"] = "run"


class CampaignRateLimit(StrictModel):
    messagesPerSecond: float = Field(gt=0, le=100000)


class CampaignSpec(StrictModel):
    type: Literal["past_behavior", "live"]
    owner: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", description="E-mail of the owner, alerted on safety blocks.")
    paused: bool = False
    schedule: Schedule | None = None
    trigger: Trigger | None = None
    start: Timestamp | None = None
    end: Timestamp | None = None
    timezone: TimezoneSpec | None = None
    dnd: DndWindow | None = None
    frequencyCap: FrequencyCapOverride | None = None
    audience: Audience = Field(default_factory=Audience)
    message: Message
    providerGroup: str | None = Field(default=None, description="Provider group; the default group when absent.")
    conversion: Conversion | None = None
    validity: Duration | None = Field(default=None, description="Queued messages older than this are not sent.")
    queuedAfterEnd: Literal["skip", "deliver"] = Field(
        default="skip", description="Messages queued before `end` and still unsent at `end`: skip (reason `ended`, "
                                     "the default) or deliver them.")
    rateLimit: CampaignRateLimit | None = None
    budget: Budget | None = None

    model_config = ConfigDict(json_schema_extra=rules(
        when("type", ["past_behavior"], {"allOf": [given("schedule"), none_of("trigger")]}),
        when("type", ["live"], {"allOf": [given("trigger"), none_of("schedule")]}),
    ))

    @model_validator(mode="after")
    def _type_fits(self) -> CampaignSpec:
        if self.type == "past_behavior":
            if self.schedule is None:
                raise ValueError("a past_behavior campaign needs 'schedule'")
            if self.trigger is not None:
                raise ValueError("a past_behavior campaign takes no 'trigger' (that is for live campaigns)")
        else:
            if self.trigger is None:
                raise ValueError("a live campaign needs 'trigger'")
            if self.schedule is not None:
                raise ValueError("a live campaign takes no 'schedule' (that is for past_behavior campaigns)")
        return self


class Campaign(DocumentBase):
    kind: Literal["Campaign"]
    spec: CampaignSpec
