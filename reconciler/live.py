"""Live campaigns: turn incoming events into outbox rows now, at a date from the event, or after
an inaction timer (added_to_cart with no purchase within 5 minutes).

Every live message has an idempotency key derived from the campaign, the user and the event (or
the timer), so an event delivered twice, or a timer fired twice after a crash, enqueues one row.
A live campaign with a subset limit sends to the first N qualifying users, then it ends: completion is
recorded when the N-th message is queued, keyed by (campaign, creation, limit) so that a raised limit or
a re-created campaign starts again (docs/scheduler.md, issue 14). Refusals (daily_limit,
campaign_completed, an unusable or past eventDate) are recorded as skipped outbox rows, audited and
counted in herald_skips_total{reason}.

Each (event, campaign) pair is handled on its own: one that fails (an unusable value, a template or
store error) is logged, counted in herald_live_event_failures_total{unit="event"} and audited as
`live_event_failed` with the event and the reason; the other events and campaigns proceed. So is each
due timer: a failing one is retried when its claim lease ends, and after MAX_TIMER_TRIES failures it
is completed and audited as `live_timer_failed` (unit="timer").
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from . import audit
from .audience.reach import LiveAllowance, live_allowance, user_in_audience
from .audience.records import EventRecord, Member
from .loading import DesiredState
from .models import Campaign
from .render import event_context
from .runs import member_context, plan_outbox_items
from .runtime import Runtime
from .scheduling import (
    CancelTimers,
    ScheduleAt,
    SendNow,
    Skip,
    StartTimer,
    ZoneSlot,
    in_campaign_window,
    timer_should_fire,
    trigger_for_event,
)
from .scheduling.limits import limit_day
from .secrets import redact
from .store.base import AppliedObject, OutboxItem, StateStore, Timer, idempotency_key

LOG = logging.getLogger("herald.live")
COMPLETED_KEY = "live:completed:{}:{}:{}"  # campaign, creation (epoch µs), subset limit
LIVE_EVENT_FAILED = "live_event_failed"  # audit action: one event could not be handled for one campaign
LIVE_TIMER_FAILED = "live_timer_failed"  # audit action: a timer failed MAX_TIMER_TRIES times and was dropped
MAX_TIMER_TRIES = 5
TIMER_TRIES_KEY = "live:timer-tries:{}"
MAX_REASON_CHARS = 300


def event_id(event: EventRecord) -> str:
    """Stable identity of an event: from the client's event id when it has one (so a retry keeps it
    even when the server assigned a new `ts`), else from its content (the same event ingested twice
    has the same id)."""
    if event.id is not None:
        payload = json.dumps(["client-id", event.user_id, event.name, event.id])
    else:
        payload = json.dumps([event.user_id, event.name, event.ts.isoformat(), event.properties],
                             sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def handle_events(rt: Runtime, state: DesiredState, events: Sequence[EventRecord]) -> Counter[str]:
    """Apply every live campaign's trigger to each event; returns counts by outcome ("failed" for a
    pair that raised: recorded against that event, never stopping the others)."""
    outcomes: Counter[str] = Counter()
    live = [c for c in state.campaigns.values() if c.spec.type == "live"]
    if not live:
        return outcomes
    members: dict[str, Member | None] = {}
    for event in events:
        for campaign in live:
            outcomes[_handle_isolated(rt, state, campaign, event, members)] += 1
    return outcomes


def _handle_isolated(rt: Runtime, state: DesiredState, campaign: Campaign, event: EventRecord,
                     members: dict[str, Member | None]) -> str:
    try:
        if event.user_id not in members:
            members[event.user_id] = rt.audience.get_user(event.user_id)
        return _handle_one(rt, state, campaign, event, members[event.user_id])
    except Exception as exc:
        _record_failure(rt, campaign, event, exc)
        return "failed"


def _record_failure(rt: Runtime, campaign: Campaign, event: EventRecord, exc: Exception) -> None:
    """Log, count and audit one failed (event, campaign) pair; a failing audit write is only logged."""
    reason = redact(f"{type(exc).__name__}: {exc}")[:MAX_REASON_CHARS]
    eid = event_id(event)
    LOG.warning("live event %s (%s of user %s) failed for campaign %s: %s", eid, event.name, event.user_id,
                campaign.name, reason)
    rt.metrics.live_event_failures.labels(campaign=campaign.name, unit="event").inc()
    _audit_failure(rt, LIVE_EVENT_FAILED, campaign.name, {
        "event_id": eid, "client_event_id": event.id, "user_id": event.user_id, "event": event.name,
        "ts": event.ts.isoformat(), "reason": reason})


def _audit_failure(rt: Runtime, action: str, campaign: str, details: dict[str, Any]) -> None:
    """One audit entry for a failed unit; if the store cannot take it either, the failure is logged."""
    try:
        obj = rt.store.get_object("Campaign", campaign)
        rt.store.append_audit([audit.audit_record(
            action, at=rt.clock.now(), actor=rt.actor, kind="Campaign", name=campaign,
            commit_sha=obj.commit_sha if obj else None, details=details)])
    except Exception as exc:
        LOG.error("could not audit %s for campaign %s: %s", action, campaign, type(exc).__name__)


def _handle_one(rt: Runtime, state: DesiredState, campaign: Campaign, event: EventRecord,
                member: Member | None) -> str:
    now = rt.clock.now()
    eid = event_id(event)
    action = trigger_for_event(campaign, event.name, event.properties, event.ts,
                               member.timezone if member else None, user_id=event.user_id, event_id=eid,
                               settings=state.settings, now=now)
    if isinstance(action, CancelTimers):
        _cancel(rt, action)
        return "timers_cancelled"
    if isinstance(action, StartTimer):
        if action.cancel_first is not None:
            _cancel(rt, action.cancel_first)
        context = {"event": event_context(event), "started_at": action.started_at.isoformat()}
        rt.store.add_timer(campaign.name, event.user_id, action.fire_at, action.key, context)
        return "timer_started"
    if isinstance(action, SendNow | ScheduleAt | Skip):
        if member is None or not member.reachable:
            return "unreachable"
        key = idempotency_key("live", campaign.name, event.user_id, eid)
        if isinstance(action, Skip):
            if not user_in_audience(rt.audience, campaign, state, member.user_id, now):
                return "not_in_audience"
            return refuse(rt, state, campaign, member, key=key, event=event_context(event),
                          reason=skip_reason(action))
        send_at = action.at if isinstance(action, SendNow) else action.send_at
        return enqueue_live(rt, state, campaign, member, send_at=send_at, event=event_context(event), key=key)
    return action.kind


def skip_reason(action: Skip) -> str:
    """`code: detail` for an eventDate the trigger could not use (the code before the colon is counted)."""
    return f"{action.code}: {action.reason}"


def _cancel(rt: Runtime, action: CancelTimers) -> None:
    """Cancel only the timers the missing event answers: started within `within` before it."""
    fire_between = (action.started_from + action.within, action.started_until + action.within)
    rt.store.cancel_timers(action.campaign, action.user_id, fire_between=fire_between)


def enqueue_live(rt: Runtime, state: DesiredState, campaign: Campaign, member: Member, *, send_at: datetime,
                 event: dict[str, Any] | None, key: str) -> str:
    """Enqueue one live message after the audience, live limits, DND and caps checks.

    The daily limit counts the trigger's local day (now, in the campaign zone; the user's in user mode);
    the subset counts this incarnation's messages (queued since the applied object's creation). A refusal
    is recorded (`refuse`); the N-th message queued records completion at once."""
    now = rt.clock.now()
    applied = rt.store.get_object("Campaign", campaign.name)
    if applied is None:
        return "campaign_inactive"
    if not user_in_audience(rt.audience, campaign, state, member.user_id, now):
        return "not_in_audience"  # not a refusal: the campaign was never for this user
    if completed_at(rt.store, campaign, applied) is not None:
        return refuse(rt, state, campaign, member, key=key, event=event, reason="campaign_completed")
    day = limit_day(campaign, state.settings, member.timezone, now)
    allowance = _allowance(rt.store, campaign, applied, day)
    if allowance.complete:
        _complete(rt, campaign, applied)
        return refuse(rt, state, campaign, member, key=key, event=event, reason="campaign_completed")
    if allowance.remaining is not None and allowance.remaining <= 0:
        return refuse(rt, state, campaign, member, key=key, event=event,
                      reason=f"daily_limit: {campaign.spec.audience.dailyLimit} for {day}")
    slots = {member.timezone: ZoneSlot(member.timezone, send_at, send_at, "scheduled")}
    items = plan_outbox_items(rt, state, campaign, [member], slots, key=lambda _m: key, run=None, now=now,
                              event=event, spec_hash=applied.spec_hash, counts_at=now)
    new = rt.store.enqueue(items)
    if not new:
        return "duplicate"  # this event (a client's retry, a redelivery) was handled before
    if items[0].status == "skipped":
        return f"skipped:{items[0].skip_reason}"
    if _allowance(rt.store, campaign, applied, day).complete:
        _complete(rt, campaign, applied)  # the N-th message is queued: the campaign ends now
    return "enqueued"


def _allowance(store: StateStore, campaign: Campaign, applied: AppliedObject, day: str) -> LiveAllowance:
    """Subset and dailyLimit budget: `day`'s messages, and this incarnation's (since its creation)."""
    audience = campaign.spec.audience
    today = store.campaign_sent_count(campaign.name, day=day) if audience.dailyLimit is not None else 0
    total = (store.campaign_sent_count(campaign.name, created_since=applied.created_at)
             if audience.subset is not None else 0)
    return live_allowance(campaign, already_sent_today=today, sent_total=total)


def refuse(rt: Runtime, state: DesiredState, campaign: Campaign, member: Member, *, key: str,
           event: dict[str, Any] | None, reason: str) -> str:
    """Record a live refusal: a skipped outbox row with the message's own key (a redelivered event is
    recorded once), an audit `skip` entry and herald_skips_total{reason}. Returns the reason's label."""
    now = rt.clock.now()
    label = reason.split(":")[0]
    applied = rt.store.get_object("Campaign", campaign.name)
    item = OutboxItem(idempotency_key=key, campaign=campaign.name, user_id=member.user_id, phone=member.phone,
                      not_before=now, context=member_context(member, event),
                      spec_hash=applied.spec_hash if applied else None, status="skipped", skip_reason=reason,
                      limit_day=limit_day(campaign, state.settings, member.timezone, now))
    if not rt.store.enqueue([item]):
        return "duplicate"
    rt.metrics.skips.labels(reason=label).inc()
    rt.store.append_audit([audit.audit_record(
        audit.SKIP, at=now, actor=rt.actor, kind="Campaign", name=campaign.name,
        commit_sha=applied.commit_sha if applied else None,
        details={"messages": 1, "reason": reason, "users": [member.user_id], "live": True})])
    return label


def completion_key(campaign: Campaign, applied: AppliedObject) -> str | None:
    """Where completion of this incarnation and limit is recorded; None without a subset limit."""
    subset = campaign.spec.audience.subset
    if campaign.spec.type != "live" or subset is None:
        return None
    created = int(applied.created_at.timestamp() * 1_000_000)
    return COMPLETED_KEY.format(campaign.name, created, subset.limit)


def completed_at(store: StateStore, campaign: Campaign, applied: AppliedObject) -> str | None:
    """When this live campaign (this creation, this limit) reached its first-N limit; None if it has not."""
    key = completion_key(campaign, applied)
    value = store.kv_get(key) if key else None
    return str(value) if value else None


def _complete(rt: Runtime, campaign: Campaign, applied: AppliedObject) -> None:
    key = completion_key(campaign, applied)
    if key is None or rt.store.kv_get(key):
        return
    rt.store.kv_set(key, rt.clock.now().isoformat())
    subset = campaign.spec.audience.subset
    rt.store.append_audit([audit.audit_record(
        "campaign_completed", at=rt.clock.now(), actor=rt.actor, kind="Campaign", name=campaign.name,
        commit_sha=applied.commit_sha,
        details={"reason": "subset limit reached", "limit": subset.limit if subset else None,
                 "created_at": applied.created_at.isoformat()})])


def fire_due_timers(rt: Runtime, state: DesiredState, limit: int = 500) -> Counter[str]:
    """Inaction timers that came due: re-check that the missing event did not happen, then enqueue.

    Each timer is isolated: one that raises stays claimed ("retry_later": another try when its lease
    ends) until it has failed MAX_TIMER_TRIES times, then it is completed as "failed" and audited."""
    now = rt.clock.now()
    outcomes: Counter[str] = Counter()
    timers = rt.store.due_timers(rt.worker_id, now, limit, rt.leases.timer)
    finished = []
    for timer in timers:
        outcome = _fire_isolated(rt, state, timer)
        outcomes[outcome] += 1
        if outcome != "retry_later":
            finished.append(timer.id)
    if finished:
        rt.store.complete_timers(rt.worker_id, finished)
    return outcomes


def _fire_isolated(rt: Runtime, state: DesiredState, timer: Timer) -> str:
    try:
        return _fire(rt, state, timer)
    except Exception as exc:
        return _timer_failed(rt, timer, exc)


def _timer_failed(rt: Runtime, timer: Timer, exc: Exception) -> str:
    """Count one failed try of `timer` (in the store's kv); the last allowed try ends it, audited."""
    reason = redact(f"{type(exc).__name__}: {exc}")[:MAX_REASON_CHARS]
    rt.metrics.live_event_failures.labels(campaign=timer.campaign, unit="timer").inc()
    key = TIMER_TRIES_KEY.format(timer.id)
    try:
        tries = int(rt.store.kv_get(key) or 0) + 1
        rt.store.kv_set(key, tries)
    except Exception:  # the state store itself is failing: try again when the lease ends
        LOG.warning("live timer %s of campaign %s failed and cannot be counted: %s", timer.key, timer.campaign,
                    reason)
        return "retry_later"
    LOG.warning("live timer %s of campaign %s failed (try %d of %d): %s", timer.key, timer.campaign, tries,
                MAX_TIMER_TRIES, reason)
    if tries < MAX_TIMER_TRIES:
        return "retry_later"
    _audit_failure(rt, LIVE_TIMER_FAILED, timer.campaign, {
        "timer": timer.key, "user_id": timer.user_id, "fire_at": timer.fire_at.isoformat(), "tries": tries,
        "reason": reason})
    return "failed"


def _fire(rt: Runtime, state: DesiredState, timer: Timer) -> str:
    campaign = state.campaigns.get(timer.campaign)
    if campaign is None or campaign.spec.paused or campaign.spec.trigger is None:
        return "campaign_inactive"
    inaction = campaign.spec.trigger.inaction
    if inaction is None:
        return "not_inaction"
    started_at = datetime.fromisoformat(timer.context["started_at"])
    missing = rt.audience.events_for(timer.user_id, inaction.missing.name, started_at, now=rt.clock.now())
    if not timer_should_fire(started_at, inaction.within, [e.ts for e in missing]):
        return "cancelled_by_event"
    if not in_campaign_window(campaign, state.settings, timer.fire_at):
        return "outside_window"
    member = rt.audience.get_user(timer.user_id)
    if member is None or not member.reachable:
        return "unreachable"
    return enqueue_live(rt, state, campaign, member, send_at=rt.clock.now(), event=timer.context.get("event"),
                        key=idempotency_key("timer", timer.campaign, timer.key))
