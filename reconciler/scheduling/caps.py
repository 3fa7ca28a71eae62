"""Frequency caps: messages per user per local day, globally and per campaign."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..models import Campaign, Settings

CapReason = Literal["ok", "global_cap", "campaign_cap"]


@dataclass(frozen=True)
class CapDecision:
    allowed: bool
    reason: CapReason
    detail: str = ""


def effective_caps(campaign: Campaign, settings: Settings) -> tuple[int | None, int | None]:
    """(global per-user cap that applies to this campaign, the campaign's own per-user cap)."""
    override = campaign.spec.frequencyCap
    global_cap = settings.spec.frequencyCap.perDay if settings.spec.frequencyCap else None
    if override is not None and override.ignoreGlobal:
        global_cap = None
    return global_cap, override.perDay if override else None


def cap_decision(
    campaign: Campaign,
    settings: Settings,
    sent_today_by_user: int,
    sent_today_by_campaign_for_user: int,
) -> CapDecision:
    """May one more message of `campaign` go to a user who already got these counts today?

    Count both in the user's own local day (`local_day_bounds`); `sent_today_by_user` counts messages
    of every campaign, including campaigns that ignore the global cap (they are still messages).
    Both caps apply unless the campaign sets `frequencyCap.ignoreGlobal`.
    """
    global_cap, campaign_cap = effective_caps(campaign, settings)
    if global_cap is not None and sent_today_by_user >= global_cap:
        return CapDecision(False, "global_cap", f"user already received {sent_today_by_user} of {global_cap} today")
    if campaign_cap is not None and sent_today_by_campaign_for_user >= campaign_cap:
        return CapDecision(
            False,
            "campaign_cap",
            f"user already received {sent_today_by_campaign_for_user} of {campaign_cap} from this campaign today",
        )
    return CapDecision(True, "ok")
