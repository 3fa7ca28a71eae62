"""What the dashboard pages show, read from the state store (and the audience store for conversions).

Plain functions of the stores and a `now`, so tests call them without HTTP. Every page reads one
consistent applied-state snapshot; nothing here writes.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from ..apply import desired_from_applied
from ..audience.store import AudienceStore
from ..audit import KNOWN_ACTIONS
from ..live import completed_at
from ..loading import DesiredState
from ..models import Campaign
from ..models.campaign import Schedule, Trigger
from ..report import (
    SENT_SCAN_LIMIT,
    CampaignReport,
    Tally,
    add_costs,
    converted_row_ids,
    delivery_report,
)
from ..scheduler import campaign_window, runs_between, uses_user_timezone
from ..secrets import redact
from ..store.base import (
    AppliedObject,
    AppliedState,
    AuditEntry,
    AuditQuery,
    DeliveryCount,
    OutboxRow,
    Run,
    StateStore,
)

Status = Literal["active", "paused", "completed", "deleted"]
Unit = Literal["hour", "day", "week"]
UNFINISHED_RUNS = ("planned", "materializing", "sending")
COMMIT_PATTERN = re.compile(r"^[0-9a-fA-F]{4,40}$")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
AUDIT_PAGE_LIMIT = 500
RUN_HISTORY_LIMIT = 200
DETAILS_PREVIEW = 160


# ---------------------------------------------------------------- campaigns


@dataclass(frozen=True)
class NextRun:
    at: datetime  # UTC: when the run opens (the first recipient's moment in user-zone mode)
    local: datetime  # the nominal wall-clock time of the schedule
    user_zones: bool  # the wall-clock time is reached in each recipient's own zone


@dataclass(frozen=True)
class CampaignRow:
    name: str
    status: Status
    type: str | None
    description: str | None
    owner: str | None
    commit_sha: str | None  # the commit that last changed (or deleted) the campaign
    changed_at: datetime | None
    next_run: NextRun | None
    when: str  # schedule or trigger in words
    sent: int


class DesiredCache:
    """The applied state as models, rebuilt only when the applied-state version moves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version: int | None = None
        self._state = DesiredState()

    def get(self, applied: AppliedState) -> DesiredState:
        with self._lock:
            if applied.version != self._version:
                self._state = desired_from_applied(applied)
                self._version = applied.version
            return self._state


def describe_when(campaign: Campaign) -> str:
    spec = campaign.spec
    zone = "each user's zone" if uses_user_timezone(campaign) else (
        spec.timezone.zone if spec.timezone and spec.timezone.zone else "default zone")
    if spec.schedule is not None:
        return f"{_describe_schedule(spec.schedule)} ({zone})"
    if spec.trigger is not None:
        return _describe_trigger(spec.trigger)
    return "-"


def _describe_schedule(schedule: Schedule) -> str:
    if schedule.once is not None:
        return f"once at {schedule.once}"
    if schedule.dates is not None:
        return f"on {len(schedule.dates)} dates from {schedule.dates[0]}"
    if schedule.cron is not None:
        return f"cron {schedule.cron}"
    every = schedule.every
    assert every is not None
    anchor = f" on {every.weekday}" if every.weekday else (f" on day {every.day}" if every.day else "")
    return f"every {every.interval} {every.unit}{anchor} at {every.at}"


def _describe_trigger(trigger: Trigger) -> str:
    if trigger.event is not None:
        return f"on event {trigger.event.name}"
    if trigger.inaction is not None:
        inaction = trigger.inaction
        return f"{inaction.event.name} without {inaction.missing.name} within {_duration(inaction.within)}"
    assert trigger.eventDate is not None
    date = trigger.eventDate
    return f"at {date.event.name}.{date.property} {_duration(date.offset, signed=True)}"


def _duration(value: timedelta, *, signed: bool = False) -> str:
    seconds = int(value.total_seconds())
    sign = "-" if seconds < 0 else ("+" if signed else "")
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{sign}{seconds // size}{unit}"
    return f"{sign}{seconds}s"


def next_run(campaign: Campaign, obj: AppliedObject, state: DesiredState, now: datetime,
             last_run: datetime | None = None) -> NextRun | None:
    """The first run after both `now` and the last run the scheduler created (stored by opening time)."""
    if campaign.spec.type != "past_behavior" or obj.paused:
        return None
    after = max(now, last_run) if last_run else now
    runs = runs_between(campaign, state.settings, created_at=obj.created_at, after=after, limit=1, by="opens_at")
    if not runs:
        return None
    return NextRun(at=runs[0].opens_at, local=runs[0].local, user_zones=uses_user_timezone(campaign))


def campaign_status(campaign: Campaign, obj: AppliedObject, state: DesiredState, now: datetime,
                    upcoming: NextRun | None, unfinished_runs: int, *, live_completed: bool = False) -> Status:
    """`live_completed`: a live campaign reached its first-N limit (live.completed_at)."""
    if obj.paused:
        return "paused"
    if live_completed:
        return "completed"
    if unfinished_runs:
        return "active"
    _, end = campaign_window(campaign, state.settings)
    if end is not None and now >= end:
        return "completed"
    if campaign.spec.type == "past_behavior" and upcoming is None:
        return "completed"
    return "active"


def _sent_by_campaign(counts: Iterable[DeliveryCount]) -> dict[str, int]:
    sent: dict[str, int] = defaultdict(int)
    for row in counts:
        if row.status == "sent":
            sent[row.campaign] += row.count
    return sent


def _unfinished_by_campaign(store: StateStore) -> dict[str, int]:
    found: dict[str, int] = defaultdict(int)
    for run in store.list_runs(statuses=UNFINISHED_RUNS, limit=10_000):
        found[run.campaign] += 1
    return found


def campaign_rows(store: StateStore, cache: DesiredCache, now: datetime) -> list[CampaignRow]:
    """Every campaign that is applied, or was and has been deleted (by a commit)."""
    applied = store.applied_state()
    state = cache.get(applied)
    sent = _sent_by_campaign(store.delivery_counts())
    unfinished = _unfinished_by_campaign(store)
    rows: list[CampaignRow] = []
    for obj in applied.of_kind("Campaign"):
        campaign = state.campaigns[obj.name]
        upcoming = next_run(campaign, obj, state, now, store.last_run_time(obj.name))
        rows.append(CampaignRow(
            name=obj.name, status=campaign_status(campaign, obj, state, now, upcoming, unfinished[obj.name],
                                                  live_completed=completed_at(store, campaign, obj) is not None),
            type=campaign.spec.type, description=campaign.metadata.description, owner=campaign.spec.owner,
            commit_sha=obj.commit_sha, changed_at=obj.applied_at, next_run=upcoming,
            when=describe_when(campaign), sent=sent.get(obj.name, 0)))
    rows.extend(_deleted_rows(store, applied, sent))
    return sorted(rows, key=lambda r: (r.status == "deleted", r.name))


def _deleted_rows(store: StateStore, applied: AppliedState, sent: dict[str, int]) -> list[CampaignRow]:
    deletions: dict[str, AuditEntry] = {}
    for entry in store.query_audit(AuditQuery(kind="Campaign", actions=("delete",), limit=10_000)):
        if entry.name and applied.get("Campaign", entry.name) is None:
            deletions[entry.name] = entry  # oldest first: the latest deletion wins
    names = set(deletions) | {n for n in sent if applied.get("Campaign", n) is None}
    return [_deleted_row(store, name, deletions.get(name), sent.get(name, 0)) for name in sorted(names)]


def _deleted_row(store: StateStore, name: str, deletion: AuditEntry | None, sent: int) -> CampaignRow:
    campaign = _last_known_spec(store, deletion)
    return CampaignRow(
        name=name, status="deleted", type=campaign.spec.type if campaign else None,
        description=campaign.metadata.description if campaign else None,
        owner=campaign.spec.owner if campaign else None,
        commit_sha=deletion.commit_sha if deletion else None, changed_at=deletion.at if deletion else None,
        next_run=None, when=describe_when(campaign) if campaign else "-", sent=sent)


def _last_known_spec(store: StateStore, deletion: AuditEntry | None) -> Campaign | None:
    old_hash = deletion.details.get("old_hash") if deletion else None
    spec = store.spec_by_hash(old_hash) if isinstance(old_hash, str) else None
    if spec is None:
        return None
    try:
        return Campaign.model_validate(spec)
    except ValueError:  # a spec from an older model version: show the name only
        return None


# ---------------------------------------------------------------- one campaign: report and timeline


@dataclass
class Bucket:
    start: datetime
    label: str
    tally: Tally = field(default_factory=Tally)


@dataclass
class Timeline:
    unit: Unit
    buckets: list[Bucket]


@dataclass(frozen=True)
class RunRow:
    run: Run
    tally: Tally


@dataclass
class CampaignDetail:
    row: CampaignRow
    campaign: Campaign | None
    report: CampaignReport
    timeline: Timeline
    by_provider: dict[str, Tally]
    runs: list[RunRow]
    recent_audit: list[AuditEntry]
    scanned_rows: int
    scan_truncated: bool


def choose_unit(first: datetime, last: datetime) -> Unit:
    span = last - first
    if span <= timedelta(hours=48):
        return "hour"
    if span <= timedelta(days=120):
        return "day"
    return "week"


def bucket_start(moment: datetime, unit: Unit) -> datetime:
    moment = moment.astimezone(UTC)
    if unit == "hour":
        return moment.replace(minute=0, second=0, microsecond=0)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if unit == "day" else day - timedelta(days=day.weekday())


def bucket_label(start: datetime, unit: Unit) -> str:
    if unit == "hour":
        return start.strftime("%Y-%m-%d %H:00")
    if unit == "day":
        return start.strftime("%Y-%m-%d")
    return start.strftime("week of %Y-%m-%d")


def tick_label(start: datetime, unit: Unit) -> str:
    """The short form under the chart's x axis."""
    return start.strftime({"hour": "%m-%d %H:00", "day": "%m-%d", "week": "wk %m-%d"}[unit])


_STEP: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}


def row_time(row: OutboxRow) -> datetime:
    """When a message counts on the time axis: its send time, or when its sending failed."""
    return row.sent_at or row.updated_at


def empty_timeline(first: datetime, last: datetime) -> Timeline:
    """Consecutive buckets from the first to the last moment, so the x axis is linear in time."""
    unit = choose_unit(first, last)
    start, end = bucket_start(first, unit), bucket_start(last, unit)
    buckets: list[Bucket] = []
    while start <= end:
        buckets.append(Bucket(start, bucket_label(start, unit)))
        start += _STEP[unit]
    return Timeline(unit, buckets)


def _as_count(row: OutboxRow) -> DeliveryCount:
    return DeliveryCount(row.campaign, row.run_id, row.provider, row.status, row.delivery_status,
                         row.skip_reason, 1)


def timeline_and_providers(rows: Sequence[OutboxRow], audience: AudienceStore | None, campaign: Campaign | None,
                           now: datetime, run_tallies: dict[int, Tally]) -> tuple[Timeline, dict[str, Tally]]:
    """Sent, delivered, failed and converted per time bucket and per provider, in one pass.

    Counting is the report's (Tally.add); a conversion is counted once per sent message with the
    report's rule, and also added to its run's tally in `run_tallies`.
    """
    if not rows:
        return Timeline("hour", []), {}
    times = [row_time(r) for r in rows]
    timeline = empty_timeline(min(times), max(times))
    index = {b.start: b for b in timeline.buckets}
    providers: dict[str, Tally] = defaultdict(Tally)
    converted: set[int] = set()
    if audience is not None and campaign is not None and campaign.spec.conversion is not None:
        converted = converted_row_ids([r for r in rows if r.status == "sent"], audience, campaign, now)
    for row, moment in zip(rows, times, strict=True):
        start = bucket_start(moment, timeline.unit)
        provider = row.provider or "(none)"
        index[start].tally.add(_as_count(row))
        providers[provider].add(_as_count(row))
        if row.id in converted:
            index[start].tally.converted += 1
            providers[provider].converted += 1
            if row.run_id is not None:
                run_tallies.setdefault(row.run_id, Tally()).converted += 1
    return timeline, dict(providers)


def campaign_row(store: StateStore, cache: DesiredCache, name: str, now: datetime) -> CampaignRow | None:
    return next((r for r in campaign_rows(store, cache, now) if r.name == name), None)


def campaign_detail(store: StateStore, audience: AudienceStore | None, cache: DesiredCache, name: str,
                    now: datetime) -> CampaignDetail | None:
    row = campaign_row(store, cache, name, now)
    if row is None:
        return None
    state = cache.get(store.applied_state())
    campaign = state.campaigns.get(name)
    report = delivery_report(store, name)
    run_tallies = {r.run_id: r.tally for r in report.by_run}
    outbox = store.list_outbox(campaign=name, statuses=("sent", "failed"), limit=SENT_SCAN_LIMIT)
    timeline, by_provider = timeline_and_providers(outbox, audience, campaign, now, run_tallies)
    add_costs([r for r in outbox if r.status == "sent"], state.providers, report.tally, report.by_provider)
    for provider, tally in by_provider.items():
        tally.cost = report.by_provider.get(provider, Tally()).cost
    report.tally.converted = sum(b.tally.converted for b in timeline.buckets)
    runs = store.list_runs(campaign=name, limit=RUN_HISTORY_LIMIT)
    recent = store.query_audit(AuditQuery(campaign=name, newest_first=True, limit=20))
    return CampaignDetail(row=row, campaign=campaign, report=report, timeline=timeline, by_provider=by_provider,
                          runs=[RunRow(r, run_tallies.get(r.id, Tally())) for r in runs], recent_audit=recent,
                          scanned_rows=len(outbox), scan_truncated=len(outbox) >= SENT_SCAN_LIMIT)


def chart_values(timeline: Timeline) -> dict[str, list[int]]:
    return {key: [getattr(b.tally, key) for b in timeline.buckets]
            for key in ("sent", "delivered", "failed", "converted")}


def provider_values(by_provider: dict[str, Tally]) -> dict[str, dict[str, int]]:
    return {name: {"sent": t.sent, "delivered": t.delivered, "failed": t.failed, "converted": t.converted}
            for name, t in by_provider.items()}


# ---------------------------------------------------------------- audit log


@dataclass(frozen=True)
class AuditFilter:
    commit: str | None = None
    campaign: str | None = None
    action: str | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> tuple[AuditFilter, list[str]]:
        """The filter from query parameters, dropping (and reporting) values that cannot match."""
        problems: list[str] = []
        commit = (params.get("commit") or "").strip().lower() or None
        campaign = (params.get("campaign") or "").strip() or None
        action = (params.get("action") or "").strip() or None
        if commit and not COMMIT_PATTERN.match(commit):
            problems.append("commit must be 4 to 40 hexadecimal characters")
            commit = None
        if campaign and not NAME_PATTERN.match(campaign):
            problems.append("campaign must be a campaign name (lowercase letters, digits and '-')")
            campaign = None
        if action and not ACTION_PATTERN.match(action):
            problems.append("unknown action")
            action = None
        return cls(commit, campaign, action), problems

    @property
    def active(self) -> bool:
        return bool(self.commit or self.campaign or self.action)


@dataclass(frozen=True)
class CommitSummary:
    sha: str
    subject: str | None
    author: str | None
    committed_at: str | None
    campaigns: tuple[str, ...]


@dataclass(frozen=True)
class AuditRow:
    entry: AuditEntry
    campaign: str | None  # the campaign the entry is about, for a link
    details: str  # redacted JSON
    preview: str


@dataclass(frozen=True)
class AuditView:
    rows: list[AuditRow]
    truncated: bool
    commit: CommitSummary | None
    actions: tuple[str, ...]


def _details_text(details: dict[str, Any]) -> str:
    return redact(json.dumps(details, ensure_ascii=False, sort_keys=True, default=str))


def audit_row(entry: AuditEntry) -> AuditRow:
    text = _details_text(entry.details)
    preview = text if len(text) <= DETAILS_PREVIEW else text[: DETAILS_PREVIEW - 1] + "…"
    campaign = entry.name if entry.kind == "Campaign" else (
        entry.details.get("campaign") if isinstance(entry.details.get("campaign"), str) else None)
    return AuditRow(entry, campaign, text, preview)


def commit_summary(store: StateStore, commit: str) -> CommitSummary | None:
    entries = store.query_audit(AuditQuery(commit=commit, limit=10_000))
    if not entries:
        return None
    shas = {e.commit_sha for e in entries if e.commit_sha}
    apply = next((e for e in entries if e.action == "apply"), None)
    details = apply.details if apply else {}
    campaigns = tuple(sorted({e.name for e in entries if e.kind == "Campaign" and e.name}))
    sha = next(iter(shas)) if len(shas) == 1 else commit
    return CommitSummary(sha=sha, subject=_text(details.get("subject")), author=_text(details.get("author")),
                         committed_at=_text(details.get("committed_at")), campaigns=campaigns)


def _text(value: Any) -> str | None:
    return redact(str(value)) if value is not None else None


def audit_view(store: StateStore, filt: AuditFilter, limit: int = AUDIT_PAGE_LIMIT) -> AuditView:
    entries = store.query_audit(AuditQuery(
        campaign=filt.campaign, commit=filt.commit, actions=(filt.action,) if filt.action else (),
        newest_first=True, limit=limit + 1))
    summary = commit_summary(store, filt.commit) if filt.commit else None
    actions = tuple(sorted(set(KNOWN_ACTIONS) | ({filt.action} if filt.action else set())))
    return AuditView(rows=[audit_row(e) for e in entries[:limit]], truncated=len(entries) > limit,
                     commit=summary, actions=actions)
