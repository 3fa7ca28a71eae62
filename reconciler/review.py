"""Review aids for plans (issue 7): message previews, provider routes, cost estimates, budget checks.

For each created or changed campaign a plan can show the message rendered for a few sample users
(PII masked), its encoding and segment count, the provider group and first provider each country
routes to with its price, and the estimated cost of the next run and of the next 30 days. Every
campaign that declares a `budget` is checked against that estimate (`herald plan --check-budget`).

Sample users come from an audience store: the real one (HERALD_AUDIENCE_URL / --audience), an
in-memory store filled from a users/events JSONL file (--sample), or a built-in fixture of
synthetic users. The reach behind a cost is the audience store's target for the next run; with
sample or fixture users it is the campaign's own upper bound (runLimit, subset, dailyLimit,
safety limit), so the estimate is "at most".

PII masking (decided here, documented in docs/review.md): phone numbers always show as country code
+ five bullets + last four digits (+1•••••0100); user and event properties whose name is in
PII_FIELDS (email, last name, full name, address, birth date, ...) are masked to their first
character + bullets. First names are kept: a first name alone identifies nobody and shows that
personalisation works. Encoding and segments are measured on the real rendering; only the text
shown is rendered from masked values.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import phonenumbers

from .audience.reach import campaign_rules, safety_limit, select_audience
from .audience.records import Member, parse_user
from .audience.store import AudienceStore
from .encoding import analyze
from .loading import DesiredState
from .models import Campaign, Provider, ProviderGroup
from .render import RenderFailure, referenced_paths, render_message
from .secrets import redact

DEFAULT_SAMPLES = 3
MIX_LIMIT = 500  # members rendered to estimate the country mix and segments per message
MONTH = timedelta(days=30)
MAX_RUNS_COUNTED = 50_000
OTHER_COUNTRIES = "*"
MASK = "•"
PII_FIELDS = frozenset({
    "phone", "mobile", "email", "e_mail", "last_name", "lastname", "surname", "family_name", "full_name",
    "fullname", "name", "address", "street", "address_line1", "address_line2", "zip", "zipcode", "postcode",
    "postal_code", "birthday", "birth_date", "birthdate", "date_of_birth", "dob", "ssn", "national_id",
    "passport", "tax_id", "ip", "ip_address", "card_number", "iban", "account_number",
})

# Synthetic users for previews when no store or sample file is given (fictional numbers).
BUILTIN_USERS: tuple[dict[str, Any], ...] = (
    {"id": "sample-us-1", "phone": "+14155550100", "country": "US", "timezone": "America/Los_Angeles",
     "first_name": "Avery", "last_name": "Sample", "email": "avery@example.com", "plan": "pro",
     "promo_opt_in": True, "balance": "$42.10", "created_at": "2024-01-15T10:00:00Z"},
    {"id": "sample-ca-1", "phone": "+16135550142", "country": "CA", "timezone": "America/Toronto",
     "first_name": "Jordan", "last_name": "Sample", "email": "jordan@example.com", "plan": "free",
     "promo_opt_in": True, "balance": "$0.00", "created_at": "2023-06-01T10:00:00Z"},
    {"id": "sample-gb-1", "phone": "+447400123456", "country": "GB", "timezone": "Europe/London",
     "first_name": "Sam", "last_name": "Sample", "email": "sam@example.com", "plan": "pro",
     "promo_opt_in": False, "balance": "£12.00", "created_at": "2022-03-10T10:00:00Z"},
    {"id": "sample-de-1", "phone": "+4915112345678", "country": "DE", "timezone": "Europe/Berlin",
     "first_name": "Jörg", "last_name": "Sample", "email": "joerg@example.com", "plan": "enterprise",
     "promo_opt_in": True, "balance": "€99.90", "created_at": "2021-11-20T10:00:00Z"},
    {"id": "sample-in-1", "phone": "+919876543210", "country": "IN", "timezone": "Asia/Kolkata",
     "first_name": "Priya", "last_name": "Sample", "email": "priya@example.com", "plan": "pro",
     "promo_opt_in": True, "balance": "INR 1,250.00", "created_at": "2024-08-05T10:00:00Z"},
    {"id": "sample-in-2", "phone": "+919876543211", "country": "IN", "timezone": "Asia/Kolkata",
     "first_name": "Arjun", "last_name": "Sample", "email": "arjun@example.com", "plan": "enterprise",
     "promo_opt_in": True, "balance": "INR 310.50", "created_at": "2020-02-14T10:00:00Z"},
)

BudgetStatus = Literal["ok", "exceeded", "unknown"]
SampleBasis = Literal["audience", "sample"]


# ---------------------------------------------------------------- values (part of a Plan)


@dataclass(frozen=True)
class Preview:
    """One sample user's message as it would be sent (text shown with PII masked)."""

    user: str
    country: str | None
    phone: str  # masked
    text: str | None  # masked rendering; None when the message does not render for this user
    error: str | None
    encoding: str | None
    units: int
    segments: int
    group: str | None
    provider: str | None
    price: float | None  # per segment at the first provider
    currency: str | None
    stand_ins: bool = False  # event/linked values were stand-ins (<name>), so length is approximate

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preview:
        return cls(**data)


@dataclass(frozen=True)
class CountryRoute:
    country: str  # ISO 3166 code, or "*" for every other country
    group: str | None
    providers: tuple[str, ...]
    price: float | None  # per segment at the first provider
    currency: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"country": self.country, "group": self.group, "providers": list(self.providers),
                "price": self.price, "currency": self.currency}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CountryRoute:
        return cls(data["country"], data.get("group"), tuple(data.get("providers", ())), data.get("price"),
                   data.get("currency"))


@dataclass(frozen=True)
class CostEstimate:
    """Estimated spend per currency (no exchange rates: each provider's own currency)."""

    reach: int | None  # messages per run (None: unknown, or a live campaign)
    reach_basis: str  # "audience store", "at most (runLimit)", "unknown", ...
    segments: float  # mean segments per message over the rendered sample
    per_message: dict[str, float]  # currency -> mean cost of one message
    next_run: dict[str, float] | None  # currency -> cost of the next run
    runs_30d: int | None  # scheduled runs in the next 30 days
    month: dict[str, float] | None  # currency -> cost of the next 30 days
    month_basis: str = ""
    unpriced_share: float = 0.0  # share of sampled messages routed to a provider without a price
    recurring: bool = False  # cron / every / several dates, or live: the 30-day figure is worth showing

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostEstimate:
        return cls(**data)


@dataclass(frozen=True)
class BudgetCheck:
    campaign: str
    amount: float
    currency: str
    per: str  # "run" | "month"
    estimate: float | None
    status: BudgetStatus
    reason: str

    @property
    def exceeded(self) -> bool:
        return self.status == "exceeded"

    def describe(self) -> str:
        shown = f"{self.amount:,.2f} {self.currency} per {self.per}"
        if self.estimate is None:
            return f"Campaign/{self.campaign}: budget {shown}: not checked ({self.reason})"
        verdict = "EXCEEDED" if self.exceeded else "ok"
        return (f"Campaign/{self.campaign}: budget {shown}: {verdict}, estimated "
                f"{self.estimate:,.2f} {self.currency} ({self.reason})")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BudgetCheck:
        return cls(**data)


@dataclass(frozen=True)
class CampaignReview:
    previews: tuple[Preview, ...] = ()
    routes: tuple[CountryRoute, ...] = ()
    cost: CostEstimate | None = None
    notes: tuple[str, ...] = ()


class Reviewer(Protocol):
    """What compute_plan asks for each created or changed campaign (and each campaign with a budget)."""

    previews: bool

    def review(self, campaign: Campaign, state: DesiredState, *, now: datetime,
               created_at: datetime) -> CampaignReview: ...


# ---------------------------------------------------------------- routing and prices


def route_group(state: DesiredState, country: str | None, explicit: str | None) -> ProviderGroup | None:
    """The group a number of `country` takes: the campaign's explicit group, else the country's, else
    the default. The same rule as GroupRouter.group_for (a parity test keeps them together)."""
    if explicit is not None:
        return state.groups.get(explicit)
    if country:
        for group in state.groups.values():
            if country in group.spec.countries:
                return group
    return state.default_group()


def price_for(provider: Provider | None, country: str | None) -> tuple[float | None, str | None]:
    """Per-segment price and currency at `provider` for `country` ('*' is the fallback)."""
    if provider is None or provider.spec.pricing is None:
        return None, None
    prices = provider.spec.pricing.perSegment
    price = prices.get(country or "", prices.get(OTHER_COUNTRIES))
    return (price, provider.spec.pricing.currency) if price is not None else (None, None)


def country_route(state: DesiredState, country: str, explicit: str | None) -> CountryRoute:
    group = route_group(state, None if country == OTHER_COUNTRIES else country, explicit)
    if group is None:
        return CountryRoute(country, None, (), None, None)
    first = state.providers.get(group.spec.providers[0])
    price, currency = price_for(first, country)
    return CountryRoute(country, group.name, tuple(group.spec.providers), price, currency)


def member_country(member: Member) -> str | None:
    if member.country:
        return member.country
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(member.phone, None))
    except phonenumbers.NumberParseException:
        return None


# ---------------------------------------------------------------- masking


def mask_phone(phone: str) -> str:
    """+14155550100 -> +1•••••0100 (country code and last four digits only)."""
    digits = re.sub(r"\D", "", phone or "")
    if len(digits) <= 4:
        return MASK * 5
    try:
        prefix = f"+{phonenumbers.parse(phone, None).country_code}"
    except phonenumbers.NumberParseException:
        prefix = ""
    return f"{prefix}{MASK * 5}{digits[-4:]}"


def mask_value(value: Any) -> Any:
    text = str(value) if value is not None else ""
    return text[:1] + MASK * 3 if len(text) > 1 else MASK


def masked_properties(properties: Mapping[str, Any], pii: frozenset[str]) -> dict[str, Any]:
    return {k: (mask_value(v) if k.lower() in pii and v is not None else v) for k, v in properties.items()}


def masked_member(member: Member, pii: frozenset[str]) -> Member:
    return Member(user_id=member.user_id, phone=mask_phone(member.phone), timezone=member.timezone,
                  country=member.country, properties=masked_properties(member.properties, pii),
                  created_at=member.created_at, reachable=member.reachable)


def builtin_users() -> list[Any]:
    return [parse_user(user) for user in BUILTIN_USERS]


# ---------------------------------------------------------------- stand-ins for event and linked values


def _nested_stand_ins(paths: Iterable[str], root: str) -> dict[str, Any]:
    """{'cart_id': '<cart_id>'} for event.cart_id; nested dicts for deeper paths."""
    values: dict[str, Any] = {}
    for path in sorted(paths):
        parts = path.split(".")
        if parts[0] != root or len(parts) < 2:
            continue
        node = values
        for part in parts[1:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node.setdefault(parts[-1], f"<{'.'.join(parts[1:])}>")
    return values


def _stand_in_event(campaign: Campaign) -> tuple[dict[str, Any] | None, bool]:
    """(event, stand-ins used): <name> placeholders for the event.* a live campaign's body reads."""
    if campaign.spec.type != "live":
        return None, False
    return _nested_stand_ins(referenced_paths(campaign.spec.message.body), "event"), True


def trigger_event_name(campaign: Campaign) -> str | None:
    trigger = campaign.spec.trigger
    if trigger is None:
        return None
    if trigger.event is not None:
        return trigger.event.name
    if trigger.inaction is not None:
        return trigger.inaction.event.name
    return trigger.eventDate.event.name if trigger.eventDate is not None else None


# ---------------------------------------------------------------- the reviewer


@dataclass
class _Rendered:
    member: Member
    country: str | None
    route: CountryRoute
    text: str | None
    error: str | None
    encoding: str | None
    units: int
    segments: int
    stand_ins: bool


@dataclass
class StoreReviewer:
    """Reviews campaigns with users from an audience store (real, file-filled or the built-in fixture)."""

    store: AudienceStore
    basis: SampleBasis  # "audience": the real store, its reach counts; "sample": users for previews only
    label: str  # where the users come from, for the plan ("the built-in fixture", "users.jsonl", ...)
    previews: bool = True
    samples: int = DEFAULT_SAMPLES
    pii: frozenset[str] = PII_FIELDS
    _cache: dict[tuple[str, datetime], CampaignReview] = field(default_factory=dict, repr=False)

    def review(self, campaign: Campaign, state: DesiredState, *, now: datetime,
               created_at: datetime) -> CampaignReview:
        key = (campaign.name, now)
        if key not in self._cache:
            self._cache[key] = self._review(campaign, state, now=now, created_at=created_at)
        return self._cache[key]

    def _review(self, campaign: Campaign, state: DesiredState, *, now: datetime,
                created_at: datetime) -> CampaignReview:
        notes: list[str] = []
        try:
            rules = campaign_rules(campaign, state)
            mix = self._first_members(rules, now)
        except Exception as exc:  # a store problem must not break a plan
            return CampaignReview(notes=(f"previews and cost not estimated: {redact(str(exc))[:160]}",))
        matched = bool(mix)
        if not mix:
            mix = self._first_members(None, now)
            if mix:
                notes.append(f"no user in {self.label} matches the audience; previews and the country mix "
                             "use all of its users")
        event, stand_ins = _stand_in_event(campaign)
        rendered = [self._render(campaign, state, m, event, stand_ins) for m in mix]
        chosen = _diverse(rendered, self.samples)
        previews = tuple(self._preview(campaign, state, r.member, now) for r in chosen) if self.previews else ()
        routes = self._routes(campaign, state, rendered)
        cost, cost_notes = self._cost(campaign, state, rendered, now=now, created_at=created_at,
                                      audience_empty=self.basis == "audience" and not matched)
        return CampaignReview(previews, routes, cost, tuple(notes + cost_notes))

    def _first_members(self, rules: Any, now: datetime) -> list[Member]:
        for batch in self.store.iter_members(rules, now, batch_size=MIX_LIMIT, order="id"):
            return batch[:MIX_LIMIT]
        return []

    def _event_for(self, campaign: Campaign, member: Member, now: datetime) -> tuple[dict[str, Any] | None, bool]:
        """The member's latest trigger event from the store, else stand-ins (live campaigns only)."""
        name = trigger_event_name(campaign) if campaign.spec.type == "live" else None
        events = self.store.events_for(member.user_id, name, None, now=now) if name else []
        if events:
            latest = events[-1]
            return {"name": latest.name, "ts": latest.ts.isoformat(), **latest.properties}, False
        return _stand_in_event(campaign)

    def _render(self, campaign: Campaign, state: DesiredState, member: Member, event: dict[str, Any] | None,
                stand_ins: bool, *, masked: bool = False) -> _Rendered:
        linked = _nested_stand_ins(referenced_paths(campaign.spec.message.body), "linked")
        stand_ins = stand_ins or bool(linked)
        target = member
        if masked:
            target = masked_member(member, self.pii)
            event = masked_properties(event, self.pii) if event else event
        result = render_message(campaign, target, event=event, linked=linked)
        country = member_country(member)
        route = country_route(state, country or OTHER_COUNTRIES, campaign.spec.providerGroup)
        if isinstance(result, RenderFailure):
            return _Rendered(member, country, route, None, result.reason, None, 0, 0, stand_ins)
        sms = analyze(result.body)
        return _Rendered(member, country, route, result.body, None, sms.encoding, sms.units, sms.segments, stand_ins)

    def _preview(self, campaign: Campaign, state: DesiredState, member: Member, now: datetime) -> Preview:
        event, stand_ins = self._event_for(campaign, member, now)  # one store lookup for both renderings
        real = self._render(campaign, state, member, event, stand_ins)
        shown = self._render(campaign, state, member, event, stand_ins, masked=True)
        text = shown.text if shown.text is not None else (_mask_in_text(real.text, member, self.pii)
                                                           if real.text is not None else None)
        route = real.route
        return Preview(user=member.user_id, country=real.country, phone=mask_phone(member.phone),
                       text=redact(text) if text is not None else None, error=real.error,
                       encoding=real.encoding, units=real.units, segments=real.segments, group=route.group,
                       provider=route.providers[0] if route.providers else None, price=route.price,
                       currency=route.currency, stand_ins=real.stand_ins)

    def _routes(self, campaign: Campaign, state: DesiredState, rendered: Sequence[_Rendered]) -> tuple[CountryRoute, ...]:
        countries = sorted({r.country for r in rendered if r.country})
        explicit = campaign.spec.providerGroup
        return tuple(country_route(state, c, explicit) for c in [*countries, OTHER_COUNTRIES])

    def _cost(self, campaign: Campaign, state: DesiredState, rendered: Sequence[_Rendered], *, now: datetime,
              created_at: datetime, audience_empty: bool) -> tuple[CostEstimate | None, list[str]]:
        notes: list[str] = []
        ok = [r for r in rendered if r.error is None]
        if not ok:
            return None, ["cost not estimated: the message renders for none of the sample users"]
        per_message: dict[str, float] = {}
        unpriced = 0
        for item in ok:
            if item.route.price is None or item.route.currency is None:
                unpriced += 1
                continue
            currency = item.route.currency
            per_message[currency] = per_message.get(currency, 0.0) + item.segments * item.route.price / len(ok)
        if unpriced:
            notes.append(f"{unpriced} of {len(ok)} sampled messages route to a provider without a price "
                         "for their country (not counted)")
        segments = sum(r.segments for r in ok) / len(ok)
        reach, basis = self._reach(campaign, state, now, audience_empty)
        live = campaign.spec.type == "live"
        next_run = None if live or reach is None else {c: reach * v for c, v in per_message.items()}
        runs, month, month_basis = None, None, ""
        if live:
            daily = campaign.spec.audience.dailyLimit
            if daily is not None:
                month = {c: 30 * daily * v for c, v in per_message.items()}
                month_basis = f"at most dailyLimit {daily:,} x 30 days"
        elif campaign.spec.schedule is not None and not campaign.spec.paused:
            runs = _runs_in(campaign, state, now=now, created_at=created_at)
            if next_run is not None:
                month = {c: runs * v for c, v in next_run.items()}
                month_basis = f"{runs} run{'s' if runs != 1 else ''} in the next 30 days"
        return CostEstimate(reach=None if live else reach, reach_basis=basis, segments=round(segments, 3),
                            per_message=_rounded(per_message) or {}, next_run=_rounded(next_run),
                            runs_30d=runs, month=_rounded(month), month_basis=month_basis,
                            unpriced_share=round(unpriced / len(ok), 4), recurring=live or _recurring(campaign)), notes

    def _reach(self, campaign: Campaign, state: DesiredState, now: datetime,
               audience_empty: bool) -> tuple[int | None, str]:
        if campaign.spec.type == "live":
            return None, "live: per event"
        if self.basis == "audience":
            if audience_empty:
                return 0, "audience store (nobody qualifies)"
            selection = select_audience(self.store, campaign, state, now, seed=0)
            if selection.blocked:
                return 0, "audience store (blocked by the safety limit)"
            return selection.target, "audience store"
        bound = reach_bound(campaign, state)
        if bound is None:
            return None, "unknown (no audience store and no runLimit, subset, dailyLimit or safety limit)"
        limit, name = bound
        return limit, f"at most: {name}"


def _recurring(campaign: Campaign) -> bool:
    schedule = campaign.spec.schedule
    return schedule is not None and (schedule.cron is not None or schedule.every is not None
                                     or len(schedule.dates or ()) > 1)


def reach_bound(campaign: Campaign, state: DesiredState) -> tuple[int, str] | None:
    """The most users one run of `campaign` can reach, from its own limits, and which limit that is."""
    audience = campaign.spec.audience
    bounds: list[tuple[int, str]] = []
    if audience.runLimit is not None:
        bounds.append((audience.runLimit, "runLimit"))
    if audience.subset is not None:
        bounds.append((audience.subset.limit, "subset"))
    if audience.dailyLimit is not None:
        bounds.append((audience.dailyLimit, "dailyLimit"))
    limit, source = safety_limit(campaign, state.settings)
    if limit is not None:
        bounds.append((limit, "safetyLimit" if source == "campaign" else "Settings safety.defaultLimit"))
    return min(bounds, key=lambda b: b[0]) if bounds else None


def _runs_in(campaign: Campaign, state: DesiredState, *, now: datetime, created_at: datetime) -> int:
    from .scheduling import runs_between

    try:
        return len(runs_between(campaign, state.settings, created_at=created_at, after=now, until=now + MONTH,
                                limit=MAX_RUNS_COUNTED))
    except Exception:  # a schedule the scheduler cannot enumerate: no monthly figure
        return 0


def _rounded(values: Mapping[str, float] | None) -> dict[str, float] | None:
    return None if values is None else {c: round(v, 6) for c, v in sorted(values.items())}


def _diverse(rendered: Sequence[_Rendered], count: int) -> list[_Rendered]:
    """Up to `count` samples, one per country first (in order), then the rest in order."""
    chosen: list[_Rendered] = []
    seen: set[str | None] = set()
    for item in rendered:
        if len(chosen) < count and item.country not in seen:
            chosen.append(item)
            seen.add(item.country)
    for item in rendered:
        if len(chosen) >= count:
            break
        if item not in chosen:
            chosen.append(item)
    return chosen


def _mask_in_text(text: str, member: Member, pii: frozenset[str]) -> str:
    """Fallback masking of a real rendering: replace PII values (and the phone) where they appear."""
    values = [str(v) for k, v in member.properties.items() if k.lower() in pii and v is not None]
    for value in sorted((v for v in values if len(v) >= 2), key=len, reverse=True):
        text = re.sub(re.escape(value), mask_value(value), text, flags=re.IGNORECASE)
    return text.replace(member.phone, mask_phone(member.phone)) if member.phone else text


# ---------------------------------------------------------------- budgets


def check_budget(campaign: Campaign, cost: CostEstimate | None) -> BudgetCheck | None:
    """The campaign's budget against the estimate in the budget's currency (None: no budget)."""
    budget = campaign.spec.budget
    if budget is None:
        return None

    def result(estimate: float | None, status: BudgetStatus, reason: str) -> BudgetCheck:
        return BudgetCheck(campaign.name, budget.amount, budget.currency, budget.per, estimate, status, reason)

    if campaign.spec.paused:
        return result(0.0, "ok", "paused: nothing is sent")
    if cost is None:
        return result(None, "unknown", "no cost estimate")
    figures = cost.next_run if budget.per == "run" else cost.month
    if figures is None:
        why = ("a live campaign has no runs; give the budget per month" if campaign.spec.type == "live"
               and budget.per == "run" else f"reach {cost.reach_basis}")
        return result(None, "unknown", why)
    if budget.currency not in figures:
        priced = ", ".join(sorted(figures)) or "no currency"
        return result(None, "unknown", f"the routed providers price in {priced}, not {budget.currency}")
    estimate = round(figures[budget.currency], 6)
    others = sorted(c for c in figures if c != budget.currency)
    segments = f"{cost.segments:g} segment{'s' if cost.segments != 1 else ''}"
    basis = f"{cost.reach or 0:,} users ({cost.reach_basis}) x {segments}" if budget.per == "run" else cost.month_basis
    if others:
        basis += f"; spend in {', '.join(others)} not counted"
    return result(estimate, "exceeded" if estimate > budget.amount else "ok", basis)


def format_money(amounts: Mapping[str, float] | None) -> str:
    if not amounts:
        return "—"
    return " + ".join(f"{_money(v)} {c}" for c, v in sorted(amounts.items()))


def _money(value: float) -> str:
    return f"{value:,.2f}" if value >= 1 or value == 0 else f"{value:.4f}"
