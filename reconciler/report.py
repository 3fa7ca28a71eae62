"""Reports: per campaign, per run and per provider — targeted, sent, delivered, failed, skipped (by
reason), expired, converted (the campaign's conversion event within its window after the send)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .audience.store import AudienceStore
from .live import completed_at, completion_key
from .loading import DesiredState
from .models import Campaign, Provider
from .store.base import DeliveryCount, OutboxRow, StateStore

SENT_SCAN_LIMIT = 1_000_000


@dataclass
class Tally:
    targeted: int = 0
    queued: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    cancelled: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    converted: int = 0
    cost: dict[str, float] = field(default_factory=dict)  # by currency

    def add(self, row: DeliveryCount) -> None:
        n = row.count
        if row.status in ("pending", "claimed"):
            self.queued += n
        elif row.status == "sent":
            self.sent += n
            if row.delivery_status == "delivered":
                self.delivered += n
            elif row.delivery_status in ("failed", "undelivered"):
                self.failed += n
        elif row.status == "failed":
            self.failed += n
        elif row.status == "expired":
            self.expired += n
        elif row.status == "cancelled":
            self.cancelled += n
        elif row.status == "skipped":
            reason = (row.skip_reason or "skipped").split(":")[0]
            self.skipped[reason] = self.skipped.get(reason, 0) + n


@dataclass
class RunReport:
    run_id: int
    scheduled_for: str
    status: str
    reason: str | None
    tally: Tally


@dataclass
class CampaignReport:
    campaign: str
    runs: int
    tally: Tally
    by_run: list[RunReport]
    by_provider: dict[str, Tally]
    # Sends that were ever in doubt (the provider may have taken them unseen), by how each was settled:
    # found (the provider's lookup had it), resent, failover, skipped (policy), unsettled (still open).
    in_doubt: dict[str, int] = field(default_factory=dict)
    # Live campaigns with a first-N limit: "completed" once the N-th message was queued, else "active".
    status: str | None = None


def build_report(store: StateStore, audience: AudienceStore | None, state: DesiredState, *,
                 campaign: str | None = None, now: datetime) -> list[CampaignReport]:
    names = [campaign] if campaign else sorted(set(state.campaigns) | {r.campaign for r in store.list_runs(limit=10000)})
    return [_campaign_report(store, audience, state.campaigns.get(name), state.providers, name, now)
            for name in names]


def delivery_report(store: StateStore, name: str) -> CampaignReport:
    """A campaign's counts from the store's grouped counts alone (no message scan): costs and
    conversions are added from one scan of the sent messages."""
    counts = store.delivery_counts(campaign=name)
    total = Tally()
    by_provider: dict[str, Tally] = defaultdict(Tally)
    by_run: dict[int, Tally] = defaultdict(Tally)
    for row in counts:
        total.add(row)
        if row.provider:
            by_provider[row.provider].add(row)
        if row.run_id is not None:
            by_run[row.run_id].add(row)
    runs = store.list_runs(campaign=name, limit=10000)
    for run in runs:
        by_run[run.id].targeted = run.targeted
    live_rows = sum(row.count for row in counts if row.run_id is None)  # live messages have no run
    total.targeted = sum(r.targeted for r in runs) + live_rows
    run_reports = [RunReport(r.id, r.scheduled_for.isoformat(), r.status, r.reason, by_run[r.id]) for r in runs]
    return CampaignReport(name, len(runs), total, run_reports, dict(by_provider), store.in_doubt_counts(campaign=name))


def _campaign_report(store: StateStore, audience: AudienceStore | None, campaign: Campaign | None,
                     state_providers: Mapping[str, Provider], name: str, now: datetime) -> CampaignReport:
    report = delivery_report(store, name)
    report.status = live_status(store, campaign)
    sent_rows = store.list_outbox(campaign=name, statuses=["sent"], limit=SENT_SCAN_LIMIT)
    add_costs(sent_rows, state_providers, report.tally, report.by_provider)
    if audience is not None and campaign is not None and campaign.spec.conversion is not None:
        by_run = defaultdict(Tally, {run.run_id: run.tally for run in report.by_run})
        count_conversions(sent_rows, audience, campaign, now, report.tally, by_run)
    return report


def live_status(store: StateStore, campaign: Campaign | None) -> str | None:
    """"completed" / "active" for an applied live campaign with a first-N (subset) limit, else None."""
    applied = store.get_object("Campaign", campaign.name) if campaign is not None else None
    if campaign is None or applied is None or completion_key(campaign, applied) is None:
        return None
    return "completed" if completed_at(store, campaign, applied) else "active"


def add_costs(rows: Sequence[OutboxRow], providers: Mapping[str, Provider], total: Tally,
               by_provider: dict[str, Tally]) -> None:
    """Recorded message costs, summed per currency of the provider that sent them."""
    for row in rows:
        if row.cost is None or row.provider is None:
            continue
        provider = providers.get(row.provider)
        currency = provider.spec.pricing.currency if provider and provider.spec.pricing else "?"
        for tally in (total, by_provider[row.provider]):
            tally.cost[currency] = round(tally.cost.get(currency, 0.0) + row.cost, 6)


def converted_row_ids(rows: Sequence[OutboxRow], audience: AudienceStore, campaign: Campaign,
                      now: datetime) -> set[int]:
    """Ids of the sent messages whose user did the goal event within the window after the send
    (batched in the audience store: a few queries, not one per message)."""
    goal = campaign.spec.conversion
    assert goal is not None
    pairs = ((str(row.id), row.user_id, row.sent_at) for row in rows if row.sent_at is not None)
    keys = audience.converted_keys(pairs, goal.event, goal.within, goal.where, now)
    return {int(key) for key in keys}


def count_conversions(rows: Sequence[OutboxRow], audience: AudienceStore, campaign: Campaign, now: datetime,
                       total: Tally, by_run: dict[int, Tally]) -> None:
    """A sent message converts when its user does the goal event within the window after the send."""
    converted = converted_row_ids(rows, audience, campaign, now)
    for row in rows:
        if row.id in converted:
            total.converted += 1
            if row.run_id is not None:
                by_run[row.run_id].converted += 1


def report_json(reports: list[CampaignReport]) -> str:
    return json.dumps([asdict(r) for r in reports], indent=2, default=str)


COLUMNS = ("targeted", "queued", "sent", "delivered", "failed", "expired", "converted")


def _row(label: str, tally: Tally) -> str:
    skipped = sum(tally.skipped.values())
    cells = [f"{getattr(tally, c):>10}" for c in COLUMNS] + [f"{skipped:>9}"]
    return f"{label:<30}" + "".join(cells)


def report_table(reports: list[CampaignReport]) -> str:
    header = f"{'campaign / run / provider':<30}" + "".join(f"{c:>10}" for c in COLUMNS) + f"{'skipped':>9}"
    lines = [header, "-" * len(header)]
    for report in reports:
        status = f" {report.status}" if report.status else ""
        lines.append(_row(f"{report.campaign} ({report.runs} runs){status}", report.tally))
        for run in report.by_run:
            lines.append(_row(f"  run {run.run_id} {run.status}", run.tally))
            if run.status in ("failed", "blocked") and run.reason:
                lines.append(f"{'':<30}{run.status}: {run.reason}")
        for provider, tally in sorted(report.by_provider.items()):
            lines.append(_row(f"  via {provider}", tally))
        if report.tally.skipped:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(report.tally.skipped.items()))
            lines.append(f"{'':<30}skipped: {reasons}")
        if report.in_doubt:
            settled = ", ".join(f"{k}={v}" for k, v in sorted(report.in_doubt.items()))
            lines.append(f"{'':<30}in doubt: {sum(report.in_doubt.values())} ({settled})")
        if report.tally.cost:
            costs = ", ".join(f"{amount:.4f} {currency}" for currency, amount in sorted(report.tally.cost.items()))
            lines.append(f"{'':<30}cost: {costs}")
    return "\n".join(lines)


def summary_dict(reports: list[CampaignReport]) -> dict[str, Any]:
    return {r.campaign: {k: v for k, v in asdict(r.tally).items()} for r in reports}
