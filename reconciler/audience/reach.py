"""Who a campaign run reaches: segment + inline rules, reach %, subset, daily/run limits, safety limit.

Order of application (each step can only shrink the audience):
  qualified  = reachable users matching the segment AND the inline rules      (safety limit checks this)
  in_reach   = those in the campaign's stable reach-% sample (hash of campaign + user)
  target     = in_reach capped by subset, dailyLimit (minus already sent today) and runLimit
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..models import Campaign, Settings
from ..models.segment import AllRule
from ..models.settings import SettingsSpec
from .compiler import Rule
from .records import Member
from .store import DEFAULT_BATCH, AudienceQuery, AudienceStore, Order, ReachSample

if TYPE_CHECKING:
    from ..loading import DesiredState


class UnknownSegmentError(LookupError):
    pass


def campaign_rules(campaign: Campaign, state: DesiredState) -> Rule | None:
    """The campaign's audience rules: its saved segment AND its inline rules (None = everyone)."""
    audience = campaign.spec.audience
    parts: list[Rule] = []
    if audience.segment is not None:
        segment = state.segments.get(audience.segment)
        if segment is None:
            raise UnknownSegmentError(f"campaign '{campaign.name}' uses unknown segment '{audience.segment}'")
        parts.append(segment.spec.rules)
    if audience.rules is not None:
        parts.append(audience.rules)
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return AllRule(all=parts)


def _settings_spec(settings: Settings | SettingsSpec | None) -> SettingsSpec:
    if settings is None:
        return SettingsSpec()
    return settings.spec if isinstance(settings, Settings) else settings


@dataclass(frozen=True)
class SafetyVerdict:
    blocked: bool
    limit: int | None
    qualified: int
    reason: str
    source: Literal["campaign", "settings", "none"] = "none"


def safety_limit(campaign: Campaign, settings: Settings | SettingsSpec | None
                 ) -> tuple[int | None, Literal["campaign", "settings", "none"]]:
    """The limit that applies: the campaign's own, else the global default.

    Live campaigns are gated only by a safety limit they declare themselves: their audience is
    reached one event at a time and is bounded by subset / dailyLimit instead.
    """
    own = campaign.spec.audience.safetyLimit
    if own is not None:
        return own, "campaign"
    if campaign.spec.type == "live":
        return None, "none"
    default = _settings_spec(settings).safety.defaultLimit
    return (default, "settings") if default is not None else (None, "none")


def safety_check(qualified: int, campaign: Campaign, settings: Settings | SettingsSpec | None) -> SafetyVerdict:
    limit, source = safety_limit(campaign, settings)
    if limit is None:
        return SafetyVerdict(False, None, qualified, "no safety limit applies", source)
    where = "campaign audience.safetyLimit" if source == "campaign" else "Settings safety.defaultLimit"
    if qualified > limit:
        return SafetyVerdict(True, limit, qualified,
                             f"{qualified} users qualify, more than the safety limit of {limit} ({where}); "
                             "the run does not send", source)
    return SafetyVerdict(False, limit, qualified, f"{qualified} users qualify, within the safety limit of {limit}",
                         source)


@dataclass(frozen=True)
class AppliedLimit:
    name: Literal["reachPercent", "subset", "dailyLimit", "runLimit"]
    limit: float
    allows: int  # users this limit still lets through now
    binding: bool  # it is what cut the target


@dataclass
class Selection:
    campaign: str
    qualified: int
    in_reach: int
    target: int
    seed: int
    order: Order
    limits: tuple[AppliedLimit, ...]
    safety: SafetyVerdict
    remaining: int | None = None  # live: how many may still be sent (subset / daily); None = unbounded
    complete: bool = False  # live subset reached: the campaign ends
    _store: AudienceStore | None = field(default=None, repr=False, compare=False)
    _query: AudienceQuery | None = field(default=None, repr=False, compare=False)

    @property
    def blocked(self) -> bool:
        return self.safety.blocked

    def members(self, batch_size: int = DEFAULT_BATCH) -> Iterator[list[Member]]:
        """The `target` members in batches; nothing when the safety limit blocks the run."""
        if self.blocked or self.target <= 0 or self._store is None or self._query is None:
            return iter(())
        return self._store.iter_query(self._query, batch_size=batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign": self.campaign, "qualified": self.qualified, "in_reach": self.in_reach,
            "target": self.target, "seed": self.seed, "order": self.order,
            "limits": [asdict(limit) for limit in self.limits], "safety": asdict(self.safety),
            "remaining": self.remaining, "complete": self.complete,
        }


@dataclass(frozen=True)
class LiveAllowance:
    remaining: int | None  # how many may still be sent now (subset and dailyLimit); None = unbounded
    complete: bool  # the subset limit was reached: the campaign ends


def live_allowance(campaign: Campaign, *, already_sent_today: int, sent_total: int) -> LiveAllowance:
    """A live campaign's subset / dailyLimit budget, without counting the audience (cheap per event)."""
    audience = campaign.spec.audience
    bounds = []
    complete = False
    if audience.subset is not None:
        bounds.append(max(0, audience.subset.limit - sent_total))
        complete = sent_total >= audience.subset.limit
    if audience.dailyLimit is not None:
        bounds.append(max(0, audience.dailyLimit - already_sent_today))
    return LiveAllowance(min(bounds) if bounds else None, complete)


def select_audience(store: AudienceStore, campaign: Campaign, state: DesiredState, now: datetime, *,
                    seed: int, already_sent_today: int = 0, sent_total: int = 0) -> Selection:
    """Count and (lazily) pick the users for one run of `campaign` at `now`.

    `seed` fixes the random choice (store it in the run record to reproduce it); `already_sent_today`
    feeds dailyLimit; `sent_total` feeds a live campaign's subset (first N, then it ends).
    """
    audience = campaign.spec.audience
    live = campaign.spec.type == "live"
    rules = campaign_rules(campaign, state)
    sample = ReachSample(campaign.name, audience.reachPercent) if audience.reachPercent < 100 else None
    qualified, in_reach = store.reach_counts(rules, now, sample)
    safety = safety_check(qualified, campaign, state.settings)

    caps: list[tuple[Literal["subset", "dailyLimit", "runLimit"], int, int]] = []
    if audience.subset is not None:
        allowed = max(0, audience.subset.limit - sent_total) if live else audience.subset.limit
        caps.append(("subset", audience.subset.limit, allowed))
    if audience.dailyLimit is not None:
        caps.append(("dailyLimit", audience.dailyLimit, max(0, audience.dailyLimit - already_sent_today)))
    if audience.runLimit is not None:
        caps.append(("runLimit", audience.runLimit, audience.runLimit))
    target = min([in_reach, *(allowed for _, _, allowed in caps)])

    limits: list[AppliedLimit] = []
    if sample is not None:
        limits.append(AppliedLimit("reachPercent", audience.reachPercent, in_reach, in_reach < qualified))
    limits += [AppliedLimit(name, limit, allowed, allowed == target and allowed < in_reach)
               for name, limit, allowed in caps]

    order: Order = "none"  # everyone in reach is sent to: no need to sort
    if target < in_reach:
        first = audience.subset is not None and (audience.subset.mode or ("first" if live else "random")) == "first"
        order = "created" if first else "random"
    remaining = None
    complete = False
    if live:
        allowance = live_allowance(campaign, already_sent_today=already_sent_today, sent_total=sent_total)
        remaining, complete = allowance.remaining, allowance.complete
    if audience.subset is not None and audience.subset.seed is not None:
        seed = audience.subset.seed
    query = AudienceQuery(rules, now, sample=sample, order=order, seed=seed, limit=target)
    return Selection(campaign.name, qualified, in_reach, target, seed, order, tuple(limits), safety,
                     remaining, complete, store, query)


def user_in_audience(store: AudienceStore, campaign: Campaign, state: DesiredState, user_id: str,
                     now: datetime) -> bool:
    """For live triggers: is this user reachable, in the campaign's rules and in its reach sample?"""
    audience = campaign.spec.audience
    sample = ReachSample(campaign.name, audience.reachPercent) if audience.reachPercent < 100 else None
    return store.user_qualifies(campaign_rules(campaign, state), user_id, now, sample)
