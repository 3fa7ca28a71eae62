"""Apply a Plan: record its desired specs as applied at the commit, atomically, with audit entries.

Apply executes exactly what the plan says, in one store transaction that first checks the plan is
not stale (the applied-state version is still the one it was computed against). Applying the same
commit twice changes nothing the second time. Refusals (stale plan, prune guard, invalid commit)
raise ApplyRefused and are recorded in the audit log once per commit and reason.

Freeze windows (Settings.freezeWindows) hold applies that change objects: the commit is not applied,
FreezeHeld is raised and one "apply_held" audit entry is written per commit; the daemon applies it
on the first poll after the window ends. The windows that count are the APPLIED Settings, never the
incoming commit's, so a commit cannot lift its own freeze. `override_freeze=True` applies anyway and
records a "freeze_override" entry in the same transaction as the apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from . import audit
from .clock import Clock
from .gitsource import CommitSnapshot
from .loading import DesiredState
from .models import KINDS, Campaign, Settings
from .plan import Plan, ReachEstimator, compute_plan
from .scheduling.guards import ActiveFreeze, active_freeze
from .secrets import redact
from .store.base import (
    AppliedState,
    AuditQuery,
    AuditRecord,
    ChangeSet,
    ObjectDelete,
    ObjectWrite,
    StaleStateError,
    StateStore,
)

MAX_DIFF_IN_AUDIT = 50
RECONCILE_ATTEMPTS = 3
PAST_TENSE = {"create": "created", "update": "updated", "delete": "deleted", "pause": "paused",
              "resume": "resumed", "noop": "unchanged"}


class ApplyRefused(RuntimeError):
    """The plan was not applied; nothing changed (except the audit entry saying so)."""

    reason = "refused"
    audit_action = audit.APPLY_REFUSED

    def __init__(self, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(redact(message))
        self.details = dict(details or {})


class StalePlanError(ApplyRefused):
    reason = "stale_plan"


class PruneGuardError(ApplyRefused):
    reason = "prune_guard"


class InvalidDesiredState(ApplyRefused):
    reason = "invalid"


class WrongStoreError(ApplyRefused):
    reason = "other_store"


class NotAStorePlan(ApplyRefused):
    """A plan computed against a git ref (`herald plan --base-ref`) describes a review, not a store."""

    reason = "base_ref_plan"


class FreezeHeld(ApplyRefused):
    """A freeze window of the applied Settings is in force: the commit waits for its end."""

    reason = "freeze_window"
    audit_action = audit.APPLY_HELD


def freeze_details(freeze: ActiveFreeze) -> dict[str, Any]:
    from .models.common import format_duration

    return {"cron": freeze.window.cron, "duration": format_duration(freeze.window.duration),
            "deliveries": freeze.window.deliveries, "started_at": freeze.started_at.isoformat(),
            "ends_at": freeze.ends_at.isoformat()}


def applied_settings(applied: AppliedState) -> Settings | None:
    """The Settings document in force (applied), or None when none was ever applied."""
    found = applied.of_kind("Settings")
    return Settings.model_validate(found[0].spec) if found else None


def applied_freeze(applied: AppliedState, now: datetime) -> ActiveFreeze | None:
    """The freeze window of the APPLIED Settings in force at `now` (the incoming commit's do not count)."""
    settings = applied_settings(applied)
    return active_freeze(settings, now) if settings is not None else None


@dataclass(frozen=True)
class ApplyResult:
    applied: bool  # False when there was nothing to do (same commit, no changes)
    version: int
    commit_sha: str | None
    counts: dict[str, int] = field(default_factory=dict)
    cancelled_outbox: int = 0
    cancelled_runs: int = 0
    cancelled_timers: int = 0

    def describe(self) -> str:
        if not self.applied:
            return f"Nothing to apply: the applied state (version {self.version}) already matches."
        parts = [f"{n} {PAST_TENSE[action]}" for action, n in self.counts.items() if n and action != "noop"]
        commit = f" commit {self.commit_sha[:10]}" if self.commit_sha else ""
        text = (f"Applied{commit}: {', '.join(parts) or 'no object changes'}; "
                f"applied-state version is now {self.version}.")
        if self.cancelled_outbox or self.cancelled_runs or self.cancelled_timers:
            text += (f" Cancelled {self.cancelled_outbox} queued messages, {self.cancelled_runs} runs and "
                     f"{self.cancelled_timers} timers of deleted campaigns.")
        return text


def _refuse(store: StateStore, error: ApplyRefused, *, clock: Clock, actor: str, commit_sha: str | None) -> None:
    """Record the refusal (once per commit and reason, so a polling daemon does not repeat it), then raise."""
    details = {"reason": error.reason, "message": str(error), **error.details}
    if commit_sha is not None:
        earlier = store.query_audit(AuditQuery(commit=commit_sha, actions=[error.audit_action],
                                                     newest_first=True, limit=1))
        if earlier and earlier[0].details.get("reason") == error.reason:
            raise error
    store.append_audit([audit.audit_record(error.audit_action, at=clock.now(), actor=actor,
                                           commit_sha=commit_sha, details=details)])
    raise error


def check_plan(plan: Plan, current: AppliedState, *, allow_prune: bool, override_freeze: bool = False,
               now: datetime | None = None) -> ApplyRefused | None:
    """Why `plan` may not be applied to `current` at `now`, or None."""
    if plan.base_ref is not None:
        return NotAStorePlan(f"this plan was computed against git ref {plan.base_ref}, not a state store; "
                             "plan against the store (without --base-ref) to apply")
    if plan.store_id is not None and current.store_id is not None and plan.store_id != current.store_id:
        return WrongStoreError("the plan was computed against a different state store",
                               {"plan_store": plan.store_id, "store": current.store_id})
    if plan.base_version != current.version:
        return StalePlanError(
            f"stale plan: it was computed against applied-state version {plan.base_version}, but the state is "
            f"now at version {current.version}; run `herald plan` again",
            {"plan_version": plan.base_version, "current_version": current.version})
    freeze = applied_freeze(current, now) if now is not None and _changes_objects(plan) else None
    if freeze is not None and not override_freeze:
        return FreezeHeld(
            f"freeze window in force (cron '{freeze.window.cron}', until {freeze.ends_at:%Y-%m-%d %H:%MZ}): "
            "the apply is held and the last applied state keeps running; it applies after the window, "
            "or now with --override-freeze", {"freeze": freeze_details(freeze)})
    if plan.prune.tripped and not allow_prune:
        return PruneGuardError(f"prune guard: {plan.prune.describe()}; re-run with --allow-prune to apply it",
                               {"prune_guard": plan.prune.to_dict()})
    return None


def _changes_objects(plan: Plan) -> bool:
    return plan.has_changes or bool(plan.clear_overrides)


def apply_plan(store: StateStore, plan: Plan, *, clock: Clock, actor: str, allow_prune: bool = False,
               audit_stale: bool = True, override_freeze: bool = False) -> ApplyResult:
    """Apply `plan` atomically. Raises ApplyRefused (recorded in audit) when it may not be applied.

    audit_stale=False raises StalePlanError without an audit entry (for callers that re-plan).
    A freeze window of the applied Settings raises FreezeHeld ("apply_held" in audit) unless
    override_freeze, which applies and records "freeze_override".
    """
    current = store.applied_state()
    commit_sha = plan.commit_sha
    now = clock.now()
    problem = check_plan(plan, current, allow_prune=allow_prune, override_freeze=override_freeze, now=now)
    if isinstance(problem, StalePlanError) and not audit_stale:
        raise problem
    if problem is not None:
        _refuse(store, problem, clock=clock, actor=actor, commit_sha=commit_sha)
    if not plan.has_changes and not plan.clear_overrides and commit_sha == current.commit_sha:
        return ApplyResult(applied=False, version=current.version, commit_sha=current.commit_sha)
    writes = [ObjectWrite(c.kind, c.name, c.spec or {}, c.spec_hash or "", bool(c.paused_after))
              for c in plan.actionable if c.action != "delete"]
    deletes = [ObjectDelete(c.kind, c.name) for c in plan.actionable if c.action == "delete"]
    records = _audit_records(plan, at=now, actor=actor, allow_prune=allow_prune)
    freeze = applied_freeze(current, now) if _changes_objects(plan) else None
    if freeze is not None:  # only reachable with override_freeze
        details = {**freeze_details(freeze), "changes": plan.counts()}
        records[0] = replace(records[0], details={**records[0].details, "freeze_override": True})
        records.insert(1, audit.audit_record(audit.FREEZE_OVERRIDE, at=now, actor=actor, commit_sha=commit_sha,
                                             details=details))
    try:
        outcome = store.apply_changes(ChangeSet(
            base_version=plan.base_version, commit_sha=commit_sha, applied_at=now, writes=writes,
            deletes=deletes, clear_overrides=plan.clear_overrides, audit=records))
    except StaleStateError as exc:  # another apply won the race between our check and our write
        stale = StalePlanError(f"stale plan: {exc}", {"plan_version": exc.expected, "current_version": exc.actual})
        if not audit_stale:
            raise stale from None
        _refuse(store, stale, clock=clock, actor=actor, commit_sha=commit_sha)
        raise  # unreachable: _refuse raises
    return ApplyResult(applied=True, version=outcome.version, commit_sha=commit_sha, counts=plan.counts(),
                       cancelled_outbox=outcome.cancelled_outbox, cancelled_runs=outcome.cancelled_runs,
                       cancelled_timers=outcome.cancelled_timers)


def _audit_records(plan: Plan, *, at: Any, actor: str, allow_prune: bool) -> list[AuditRecord]:
    commit = plan.commit
    summary: dict[str, Any] = {
        "changes": plan.counts(), "base_version": plan.base_version, "source": plan.source,
    }
    if commit:
        summary.update(author=commit.author, subject=commit.subject, committed_at=commit.committed_at.isoformat())
    if plan.prune.tripped:
        summary.update(allow_prune=allow_prune, prune_guard=plan.prune.to_dict())
    if plan.clear_overrides:
        summary["drift_resolved"] = [f"{k}/{n}" for k, n in plan.clear_overrides]
    records = [audit.audit_record(audit.APPLY, at=at, actor=actor, commit_sha=plan.commit_sha, details=summary)]
    for change in plan.actionable:
        details: dict[str, Any] = {"spec_hash": change.spec_hash, "old_hash": change.old_hash}
        if change.diff:
            details["diff"] = [d.to_dict() for d in change.diff[:MAX_DIFF_IN_AUDIT]]
            if len(change.diff) > MAX_DIFF_IN_AUDIT:
                details["diff_truncated"] = len(change.diff)
        if change.paused_after is not None:
            details["paused"] = change.paused_after
        if change.source:
            details["source"] = change.source
        records.append(audit.audit_record(change.action, at=at, actor=actor, kind=change.kind, name=change.name,
                                          commit_sha=plan.commit_sha, details=details))
    return records


def reconcile(store: StateStore, snapshot: CommitSnapshot, *, clock: Clock, actor: str = "daemon",
              allow_prune: bool = False, reach: ReachEstimator | None = None, source: str = "",
              override_freeze: bool = False) -> ApplyResult:
    """Load, validate, plan and apply one commit (the daemon's reconcile step). Idempotent.

    A commit that is already the applied one is not even parsed (polling an unchanged branch is
    cheap); operator overrides do not need a re-apply. Inside a freeze window of the applied
    Settings a changing commit raises FreezeHeld (audited once per commit) unless override_freeze.
    """
    current = store.applied_state()
    if current.commit_sha == snapshot.sha:
        return ApplyResult(applied=False, version=current.version, commit_sha=current.commit_sha)
    loaded = snapshot.load()
    if not loaded.ok:
        errors = [d.format() for d in loaded.errors]
        first = errors[0][:300] if errors else ""
        _refuse(store, InvalidDesiredState(f"commit {snapshot.sha[:10]} has {len(errors)} validation error(s),"
                                           f" first: {first}", {"errors": errors[:20]}),
                clock=clock, actor=actor, commit_sha=snapshot.sha)
    for attempt in range(RECONCILE_ATTEMPTS):
        plan = compute_plan(loaded.state, current, commit=snapshot.info, source=source, clock=clock, reach=reach)
        try:
            return apply_plan(store, plan, clock=clock, actor=actor, allow_prune=allow_prune,
                              audit_stale=attempt == RECONCILE_ATTEMPTS - 1, override_freeze=override_freeze)
        except StalePlanError:
            # Another daemon (or an operator) changed the state meanwhile: re-plan against it.
            current = store.applied_state()
            if current.commit_sha == snapshot.sha:
                return ApplyResult(applied=False, version=current.version, commit_sha=current.commit_sha)
    raise AssertionError("unreachable: the last attempt audits and raises")


# ---------------------------------------------------------------- the applied state as models


def desired_from_applied(applied: AppliedState) -> DesiredState:
    """The applied objects as models, for the scheduler and workers (not the git head).

    A campaign's `spec.paused` here is the effective value, operator overrides included.
    """
    state = DesiredState()
    for (kind, _), obj in sorted(applied.objects.items()):
        model = KINDS[kind].model_validate(obj.spec)
        if isinstance(model, Campaign) and model.spec.paused != obj.paused:
            model = model.model_copy(update={"spec": model.spec.model_copy(update={"paused": obj.paused})})
        state.add(model)
    return state


# ---------------------------------------------------------------- operator overrides (drift)


def set_campaign_paused(store: StateStore, name: str, paused: bool, *, clock: Clock, actor: str,
                        reason: str | None = None) -> tuple[int, bool]:
    """`herald pause` / `herald resume`: an override outside git, shown as drift in later plans.

    Returns (applied-state version, changed). Pausing stops workers from claiming the campaign's
    queued messages and the scheduler from starting runs; resuming lets both continue.
    """
    action = audit.PAUSE if paused else audit.RESUME
    record = audit.audit_record(action, at=clock.now(), actor=actor, kind="Campaign", name=name,
                                details={"override": True, "reason": reason})
    return store.set_override("Campaign", name, paused, actor=actor, reason=reason, audit=record)
