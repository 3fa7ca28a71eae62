"""Scheduled runs: decide which runs are due, then materialize each into outbox rows.

A run is created once per (campaign, opening moment) in the state store, so several daemons can
tick the scheduler without creating it twice. Materializing selects the audience, enforces the
safety limit, fans out by time zone, applies DND and frequency caps, and inserts one outbox row per
user keyed by sha256(run id, user id): re-materializing after a crash inserts nothing twice.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from . import audit
from .alerts import Alert, safety_block_alert
from .audience.reach import select_audience
from .audience.records import Member
from .loading import DesiredState
from .models import Campaign
from .runtime import Runtime
from .scheduling import (
    ZoneSlot,
    apply_dnd,
    cap_decision,
    effective_caps,
    effective_dnd,
    expires_at,
    fanout_run,
    local_day_bounds,
    next_due_at,
    plan_catch_up,
    recipient_zone,
)
from .scheduling.limits import limit_day, run_limit_day
from .scheduling.recurrence import Run as ScheduledRun
from .scheduling.recurrence import scheduled_runs
from .secrets import redact
from .store.base import AppliedState, OutboxItem, Run, ScheduleMark, idempotency_key

LOG = logging.getLogger("herald.runs")
MAX_RUN_ATTEMPTS = 5  # materialization failures before a run ends `failed`
MATERIALIZE_BATCH = 2000


def member_context(member: Member, event: dict[str, Any] | None = None) -> dict[str, Any]:
    """What an outbox row keeps to render at send time (the user as selected, the triggering event)."""
    context: dict[str, Any] = {"member": {
        "user_id": member.user_id, "phone": member.phone, "timezone": member.timezone,
        "country": member.country, "properties": member.properties,
    }}
    if event is not None:
        context["event"] = event
    return context


def member_from_context(context: dict[str, Any]) -> Member:
    data = context["member"]
    return Member(user_id=data["user_id"], phone=data["phone"], timezone=data.get("timezone"),
                  country=data.get("country"), properties=dict(data.get("properties") or {}))


# ---------------------------------------------------------------- which runs are due


def schedule_tick(rt: Runtime, state: DesiredState, applied: AppliedState) -> list[Run]:
    """Create the runs that are due now (and record runs the catch-up policy drops). Idempotent.

    Each campaign has its own watermark (store.schedule_marks): the tick that last planned it, and
    when it is next due. A campaign is planned when it has no mark yet (just applied: planned from its
    creation, so it runs even when other campaigns' watermarks already passed its moment — a
    campaign applied by one daemon while another was ticking, or on a host with a skewed clock), when
    it or the Settings changed since its mark, or when its next_due_at has come. Others are not
    enumerated at all.
    """
    now = rt.clock.now()
    marks = rt.store.schedule_marks()
    settings_at = max((o.applied_at for o in applied.of_kind("Settings")), default=None)
    created: list[Run] = []
    for name, campaign in state.campaigns.items():
        obj = applied.get("Campaign", name)
        if obj is None or campaign.spec.type != "past_behavior":
            continue
        mark = marks.get(name)
        if mark is not None and not _needs_planning(mark, obj.applied_at, settings_at, now):
            continue
        plan = plan_catch_up(campaign, state.settings, created_at=obj.created_at,
                             last_run_at=mark.watermark if mark else None, now=now)
        for sched in plan.run:
            run, new = rt.store.create_run(name, sched.opens_at, spec_hash=obj.spec_hash,
                                           commit_sha=obj.commit_sha, seed=random.getrandbits(31))
            if new:
                created.append(run)
        for sched in plan.skipped:
            rt.store.create_run(name, sched.opens_at, spec_hash=obj.spec_hash, commit_sha=obj.commit_sha,
                                seed=0, status="skipped", reason=plan.reason or "missed")
        rt.store.set_schedule_mark(name, watermark=now, next_due_at=next_due_at(
            campaign, state.settings, created_at=obj.created_at, after=now))
    return created


def _needs_planning(mark: ScheduleMark, changed_at: datetime, settings_at: datetime | None,
                    now: datetime) -> bool:
    if changed_at >= mark.updated_at or (settings_at is not None and settings_at >= mark.updated_at):
        return True
    return mark.next_due_at is not None and mark.next_due_at <= now


def scheduled_run_for(campaign: Campaign, state: DesiredState, created_at: datetime,
                      opens_at: datetime) -> ScheduledRun | None:
    """The schedule occurrence a stored run stands for (stored by its opening moment)."""
    found = scheduled_runs(campaign, state.settings, created_at=created_at,
                           after=opens_at - timedelta(microseconds=1), until=opens_at, by="opens_at", limit=1)
    return found[0] if found else None


# ---------------------------------------------------------------- materialization


@dataclass
class MaterializeResult:
    run_id: int
    status: str
    targeted: int = 0
    enqueued: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    reason: str | None = None


def materialize_due_runs(rt: Runtime, state: DesiredState, applied: AppliedState, limit: int = 5
                         ) -> list[MaterializeResult]:
    runs = rt.store.claim_runs(rt.worker_id, rt.clock.now(), rt.leases.run, limit=limit)
    return [_materialize_alone(rt, state, applied, run) for run in runs]


def _materialize_alone(rt: Runtime, state: DesiredState, applied: AppliedState, run: Run) -> MaterializeResult:
    """A bulkhead around one run: whatever it raises is recorded against it, and the other runs claimed
    in the same step (healthy campaigns scheduled at the same moment) materialize as usual."""
    try:
        return materialize_run(rt, state, applied, run)
    except Exception as exc:
        return run_failed(rt, run, exc)


def run_failed(rt: Runtime, run: Run, exc: BaseException) -> MaterializeResult:
    """Record a materialization failure: the run goes back to `planned` (claimed again at the next
    tick) until MAX_RUN_ATTEMPTS failures, then ends `failed` with its reason — audited, counted, its
    owner alerted, and its queued messages cancelled (a half-materialized audience is not sent)."""
    attempts = int(run.counts.get("attempts", 0)) + 1
    reason = redact(f"{type(exc).__name__}: {exc}")[:500]
    counts = {"attempts": attempts, "last_error": reason}
    if attempts < MAX_RUN_ATTEMPTS:
        LOG.warning("run %s of %s failed (attempt %d of %d), retrying: %s", run.id, run.campaign, attempts,
                    MAX_RUN_ATTEMPTS, reason)
        rt.store.update_run(run.id, status="planned", counts=counts, reason=reason, worker_id=rt.worker_id)
        rt.metrics.runs.labels(outcome="retried").inc()
        return MaterializeResult(run.id, "planned", reason=reason)
    LOG.error("run %s of %s failed for good after %d attempts: %s", run.id, run.campaign, attempts, reason)
    if rt.store.update_run(run.id, status="failed", counts=counts, reason=reason, worker_id=rt.worker_id):
        cancelled = rt.store.cancel_pending(run.campaign, run.id)
        rt.store.append_audit([audit.audit_record(
            audit.RUN_FAILED, at=rt.clock.now(), actor=rt.actor, kind="Campaign", name=run.campaign,
            commit_sha=run.commit_sha, details={"run_id": run.id, "scheduled_for": run.scheduled_for.isoformat(),
                                                "attempts": attempts, "reason": reason, "cancelled": cancelled})])
        rt.metrics.runs.labels(outcome="failed").inc()
        rt.alerts.send(Alert(kind="run_failed", campaign=run.campaign, owner=_owner(rt, run),
                             text=f"run {run.id} failed after {attempts} attempts and sends nothing: {reason}",
                             details={"run_id": str(run.id), "reason": reason}))
    return MaterializeResult(run.id, "failed", reason=reason)


def _owner(rt: Runtime, run: Run) -> str | None:
    spec = rt.store.spec_by_hash(run.spec_hash) or {}
    owner = spec.get("spec", {}).get("owner") if isinstance(spec.get("spec"), dict) else None
    return owner if isinstance(owner, str) else None


def materialize_run(rt: Runtime, state: DesiredState, applied: AppliedState, run: Run) -> MaterializeResult:
    obj = applied.get("Campaign", run.campaign)
    spec = rt.store.spec_by_hash(run.spec_hash)
    if obj is None or spec is None or obj.paused:
        reason = "campaign deleted" if obj is None else "campaign paused"
        rt.store.update_run(run.id, status="cancelled", reason=reason, worker_id=rt.worker_id)
        return MaterializeResult(run.id, "cancelled", reason=reason)
    campaign = Campaign.model_validate(spec)
    sched = scheduled_run_for(campaign, state, obj.created_at, run.scheduled_for)
    if sched is None:
        reason = "the schedule no longer has this run"
        rt.store.update_run(run.id, status="cancelled", reason=reason, worker_id=rt.worker_id)
        return MaterializeResult(run.id, "cancelled", reason=reason)
    now = rt.clock.now()
    selection = select_audience(rt.audience, campaign, state, now, seed=run.seed,
                                already_sent_today=_sent_on_run_day(rt, state, campaign, sched))
    details = {"run_id": run.id, "scheduled_for": run.scheduled_for.isoformat(), **selection.to_dict()}
    if selection.blocked:
        return _block(rt, run, campaign, selection.safety.reason, details, selection)
    enqueued, skipped = _enqueue_members(rt, state, campaign, run, sched, selection.members(MATERIALIZE_BATCH),
                                         created_at=obj.created_at)
    counts = {"qualified": selection.qualified, "skipped": skipped, "seed": selection.seed}
    rt.store.update_run(run.id, status="sending", targeted=selection.target, enqueued=enqueued, counts=counts,
                        worker_id=rt.worker_id)
    rt.store.append_audit([audit.audit_record(
        audit.RUN_STARTED, at=now, actor=rt.actor, kind="Campaign", name=campaign.name, commit_sha=run.commit_sha,
        details={**details, "enqueued": enqueued, "skipped": skipped})])
    rt.metrics.runs.labels(outcome="started").inc()
    return MaterializeResult(run.id, "sending", selection.target, enqueued, skipped)


def _sent_on_run_day(rt: Runtime, state: DesiredState, campaign: Campaign, sched: ScheduledRun) -> int:
    """Messages already queued or sent for the run's day (campaign zone's day of the run, or its wall date
    in user mode): what dailyLimit has left. Zero without a dailyLimit (no query)."""
    if campaign.spec.audience.dailyLimit is None:
        return 0
    return rt.store.campaign_sent_count(campaign.name, day=run_limit_day(campaign, state.settings, sched))


def _block(rt: Runtime, run: Run, campaign: Campaign, reason: str, details: dict[str, Any],
           selection: Any) -> MaterializeResult:
    rt.store.update_run(run.id, status="blocked", targeted=selection.qualified, reason=reason,
                        counts={"qualified": selection.qualified, "safety": details["safety"]},
                        worker_id=rt.worker_id)
    rt.store.append_audit([audit.audit_record(
        audit.RUN_BLOCKED, at=rt.clock.now(), actor=rt.actor, kind="Campaign", name=campaign.name,
        commit_sha=run.commit_sha, details=details)])
    rt.alerts.send(safety_block_alert(campaign, selection.safety, run_id=str(run.id), commit_sha=run.commit_sha))
    rt.metrics.runs.labels(outcome="blocked").inc()
    LOG.warning("run %s of %s blocked: %s", run.id, campaign.name, reason)
    return MaterializeResult(run.id, "blocked", selection.qualified, reason=reason)


def _enqueue_members(rt: Runtime, state: DesiredState, campaign: Campaign, run: Run, sched: ScheduledRun,
                     batches: Iterable[list[Member]], *, created_at: datetime) -> tuple[int, dict[str, int]]:
    slots: dict[str | None, ZoneSlot] = {}
    enqueued = 0
    skipped: dict[str, int] = defaultdict(int)
    now = rt.clock.now()
    for members in batches:
        missing = {m.timezone for m in members} - set(slots)
        if missing:
            slots.update(fanout_run(campaign, state.settings, sched, missing,
                                    created_at=created_at, now=now))
        items = plan_outbox_items(rt, state, campaign, members, slots,
                                  key=lambda m: idempotency_key("run", run.id, m.user_id), run=run, now=now)
        enqueued += rt.store.enqueue(items)
        for item in items:
            if item.status == "skipped":
                skipped[item.skip_reason or "skipped"] += 1
    return enqueued, dict(skipped)


def plan_outbox_items(rt: Runtime, state: DesiredState, campaign: Campaign, members: Sequence[Member],
                      slots: dict[str | None, ZoneSlot], *, key: Any, run: Run | None, now: datetime,
                      event: dict[str, Any] | None = None, spec_hash: str | None = None,
                      counts_at: datetime | None = None) -> list[OutboxItem]:
    """One outbox item per member: pending with its send time, or skipped with the reason.

    The spec hash names the campaign version to render (the run's, or the applied one for live messages).
    Each item's `limit_day` is the local day of `counts_at` (a live trigger's moment) when given, else of
    its send time (scheduling.limits).
    """
    dnd = effective_dnd(campaign, state.settings)
    send_times: dict[str, tuple[datetime, datetime] | str] = {}
    for member in members:
        slot = slots.get(member.timezone)
        if slot is None or slot.send_at is None:
            send_times[member.user_id] = f"schedule: {slot.reason if slot else 'no slot'}"
            continue
        zone = recipient_zone(campaign, state.settings, member.timezone)
        decision = apply_dnd(slot.send_at, zone, dnd)
        if decision.send_at is None:
            send_times[member.user_id] = "dnd"
        else:
            send_times[member.user_id] = (decision.send_at, slot.scheduled_for)
    blocked_by_cap = _capped_users(rt, state, campaign, members, send_times)
    items = []
    for member in members:
        timing = send_times[member.user_id]
        base = dict(idempotency_key=key(member), campaign=campaign.name, user_id=member.user_id,
                    phone=member.phone, context=member_context(member, event),
                    run_id=run.id if run else None, spec_hash=run.spec_hash if run else spec_hash)
        if isinstance(timing, str) or member.user_id in blocked_by_cap:
            reason = timing if isinstance(timing, str) else blocked_by_cap[member.user_id]
            items.append(OutboxItem(**base, not_before=now, status="skipped", skip_reason=reason,
                                    limit_day=limit_day(campaign, state.settings, member.timezone, counts_at or now)))
            continue
        send_at, scheduled_for = timing
        day = limit_day(campaign, state.settings, member.timezone, counts_at or send_at)
        items.append(OutboxItem(**base, not_before=send_at, limit_day=day,
                                expires_at=expires_at(campaign, state.settings, now, scheduled_for=scheduled_for)))
    return items


def _capped_users(rt: Runtime, state: DesiredState, campaign: Campaign, members: Sequence[Member],
                  send_times: dict[str, tuple[datetime, datetime] | str]) -> dict[str, str]:
    """Users whose per-day cap (global and/or campaign) is already reached on their local send day."""
    if effective_caps(campaign, state.settings) == (None, None):
        return {}
    by_day: dict[tuple[datetime, datetime], list[str]] = defaultdict(list)
    for member in members:
        timing = send_times[member.user_id]
        if isinstance(timing, tuple):
            zone = recipient_zone(campaign, state.settings, member.timezone)
            by_day[local_day_bounds(timing[0], zone)].append(member.user_id)
    capped: dict[str, str] = {}
    for (start, end), user_ids in by_day.items():
        total = rt.store.sent_count(user_ids, start, until=end)
        own = rt.store.sent_count(user_ids, start, until=end, campaign=campaign.name)
        for user_id in user_ids:
            decision = cap_decision(campaign, state.settings, total.get(user_id, 0), own.get(user_id, 0))
            if not decision.allowed:
                capped[user_id] = f"frequency_cap: {decision.reason}"
    return capped
