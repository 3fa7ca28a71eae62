"""A plan is a value: the difference between a commit's desired state and the applied state.

`compute_plan` has no side effects: it reads a DesiredState, an AppliedState snapshot (taken from
the store in one transaction, or AppliedState.empty() in CI) and the commit, and returns a Plan
that can be rendered (text, JSON, markdown), saved (`herald plan --out FILE`) and applied. Apply
executes exactly what the plan says, and refuses it when the applied state moved since (stale).
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from .clock import Clock, SystemClock
from .gitsource import CommitInfo
from .loading import DesiredState, LoadedDocument
from .models import Campaign, Document, Provider, ProviderGroup
from .review import BudgetCheck, CostEstimate, CountryRoute, Preview, Reviewer, check_budget, format_money
from .secrets import redact, register_secret_value
from .store.base import AppliedObject, AppliedState, Override

PLAN_FORMAT = 1
NEXT_RUNS_SHOWN = 3
KIND_ORDER = ("Settings", "Provider", "ProviderGroup", "Segment", "Campaign")
DEFAULT_PRUNE_MAX_SHARE = 0.5

Action = Literal["create", "update", "delete", "pause", "resume", "noop"]
ReachEstimator = Callable[[Campaign, DesiredState], int | None]


class _Absent:
    """A field that does not exist on one side of a diff (distinct from JSON null)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


# ---------------------------------------------------------------- canonical specs


def canonical_spec(document: Document) -> dict[str, Any]:
    """The document as JSON data, defaults left out so that writing a default equals omitting it."""
    return document.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def spec_hash(spec: Mapping[str, Any]) -> str:
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def git_paused(spec: Mapping[str, Any] | None) -> bool:
    inner = (spec or {}).get("spec")
    return bool(inner.get("paused", False)) if isinstance(inner, Mapping) else False


# ---------------------------------------------------------------- plan values


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any = ABSENT
    new: Any = ABSENT

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path}
        if self.old is not ABSENT:
            data["old"] = self.old
        if self.new is not ABSENT:
            data["new"] = self.new
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FieldChange:
        return cls(data["path"], data.get("old", ABSENT), data.get("new", ABSENT))


@dataclass(frozen=True)
class MessageImpact:
    encoding: str
    units: int
    segments: int
    approximate: bool  # the body has variables; counted with them rendered empty


@dataclass(frozen=True)
class Impact:
    summary: str | None = None  # one line about a non-campaign object (provider type, group order)
    provider_group: str | None = None
    provider_group_is_default: bool = False
    next_runs: tuple[datetime, ...] = ()
    trigger: str | None = None
    message: MessageImpact | None = None
    estimated_reach: int | None = None
    notes: tuple[str, ...] = ()
    previews: tuple[Preview, ...] = ()
    routes: tuple[CountryRoute, ...] = ()
    cost: CostEstimate | None = None
    sample_source: str | None = None  # where preview users came from
    secrets: tuple[str, ...] = ()  # names (env:X, file:y) of every secret sending the campaign uses

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.summary,
            "provider_group": self.provider_group,
            "provider_group_is_default": self.provider_group_is_default,
            "next_runs": [t.isoformat() for t in self.next_runs],
            "trigger": self.trigger,
            "message": None if self.message is None else {
                "encoding": self.message.encoding, "units": self.message.units,
                "segments": self.message.segments, "approximate": self.message.approximate},
            "estimated_reach": self.estimated_reach,
            "notes": list(self.notes),
            "previews": [p.to_dict() for p in self.previews],
            "routes": [r.to_dict() for r in self.routes],
            "cost": self.cost.to_dict() if self.cost else None,
            "sample_source": self.sample_source,
            "secrets": list(self.secrets),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Impact:
        message = data.get("message")
        return cls(
            summary=data.get("summary"),
            provider_group=data.get("provider_group"),
            provider_group_is_default=bool(data.get("provider_group_is_default")),
            next_runs=tuple(datetime.fromisoformat(t) for t in data.get("next_runs", [])),
            trigger=data.get("trigger"),
            message=MessageImpact(**message) if message else None,
            estimated_reach=data.get("estimated_reach"),
            notes=tuple(data.get("notes", [])),
            previews=tuple(Preview.from_dict(p) for p in data.get("previews", [])),
            routes=tuple(CountryRoute.from_dict(r) for r in data.get("routes", [])),
            cost=CostEstimate.from_dict(data["cost"]) if data.get("cost") else None,
            sample_source=data.get("sample_source"),
            secrets=tuple(data.get("secrets", [])),
        )


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    spec: dict[str, Any] | None = None  # the new canonical document (None for delete and noop)
    spec_hash: str | None = None
    old_hash: str | None = None
    diff: tuple[FieldChange, ...] = ()
    paused_after: bool | None = None  # campaigns: effective pause once applied (overrides included)
    impact: Impact | None = None
    source: str | None = None  # path:line of the document

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.name)

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind, "name": self.name, "action": self.action, "spec": self.spec,
            "spec_hash": self.spec_hash, "old_hash": self.old_hash, "diff": [d.to_dict() for d in self.diff],
            "paused_after": self.paused_after, "impact": self.impact.to_dict() if self.impact else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        impact = data.get("impact")
        return cls(
            kind=data["kind"], name=data["name"], action=data["action"], spec=data.get("spec"),
            spec_hash=data.get("spec_hash"), old_hash=data.get("old_hash"),
            diff=tuple(FieldChange.from_dict(d) for d in data.get("diff", [])),
            paused_after=data.get("paused_after"), impact=Impact.from_dict(impact) if impact else None,
            source=data.get("source"),
        )


@dataclass(frozen=True)
class Drift:
    """A change made outside git (an operator override) and what this plan does with it."""

    kind: str
    name: str
    git_paused: bool  # what the commit being planned says
    live_paused: bool  # what is in force now because of the override
    actor: str
    reason: str | None
    since: datetime
    resolution: Literal["kept", "resolved", "deleted"]

    @property
    def address(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "git_paused": self.git_paused,
                "live_paused": self.live_paused, "actor": self.actor, "reason": self.reason,
                "since": self.since.isoformat(), "resolution": self.resolution}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Drift:
        return cls(kind=data["kind"], name=data["name"], git_paused=data["git_paused"],
                   live_paused=data["live_paused"], actor=data["actor"], reason=data.get("reason"),
                   since=datetime.fromisoformat(data["since"]), resolution=data["resolution"])


@dataclass(frozen=True)
class PruneCheck:
    """How many active campaigns this plan deletes or pauses, against Settings.pruneGuard.maxShare."""

    active: int
    removed: tuple[str, ...]
    max_share: float

    @property
    def tripped(self) -> bool:
        if not self.active or not self.removed:
            return False
        return len(self.removed) > self.max_share * self.active or len(self.removed) >= self.active

    def describe(self) -> str:
        share = len(self.removed) / self.active if self.active else 0.0
        return (f"this plan deletes or pauses {len(self.removed)} of {self.active} active campaigns "
                f"({share:.0%}; the limit is {self.max_share:.0%} and never all of them)")

    def to_dict(self) -> dict[str, Any]:
        return {"active": self.active, "removed": list(self.removed), "max_share": self.max_share,
                "tripped": self.tripped}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneCheck:
        return cls(active=data["active"], removed=tuple(data["removed"]), max_share=data["max_share"])


@dataclass(frozen=True)
class Plan:
    created_at: datetime
    base_version: int
    base_commit: str | None
    store_id: str | None
    commit: CommitInfo | None
    source: str
    changes: tuple[Change, ...]
    drift: tuple[Drift, ...] = ()
    prune: PruneCheck = field(default_factory=lambda: PruneCheck(0, (), DEFAULT_PRUNE_MAX_SHARE))
    base_ref: str | None = None  # planned against this git ref's desired state (a review), not a store
    budgets: tuple[BudgetCheck, ...] = ()
    format: int = PLAN_FORMAT

    @property
    def commit_sha(self) -> str | None:
        return self.commit.sha if self.commit else None

    @property
    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action != "noop"]

    @property
    def has_changes(self) -> bool:
        return bool(self.actionable)

    @property
    def clear_overrides(self) -> list[tuple[str, str]]:
        return [(d.kind, d.name) for d in self.drift if d.resolution == "resolved"]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("create", "update", "delete", "pause", "resume", "noop"), 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    def summary(self) -> str:
        c = self.counts()
        return (f"{c['create']} to create, {c['update']} to update, {c['delete']} to delete, "
                f"{c['pause']} to pause, {c['resume']} to resume, {c['noop']} unchanged")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created_at": self.created_at.isoformat(),
            "base_version": self.base_version,
            "base_commit": self.base_commit,
            "store_id": self.store_id,
            "commit": self.commit.to_dict() if self.commit else None,
            "source": self.source,
            "summary": self.counts(),
            "changes": [c.to_dict() for c in self.changes],
            "drift": [d.to_dict() for d in self.drift],
            "prune_guard": self.prune.to_dict(),
            "base_ref": self.base_ref,
            "budgets": [b.to_dict() for b in self.budgets],
        }

    def to_json(self) -> str:
        return redact(json.dumps(self.to_dict(), indent=2, ensure_ascii=False))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"unsupported plan format {data.get('format')!r} (expected {PLAN_FORMAT})")
        commit = data.get("commit")
        return cls(
            created_at=datetime.fromisoformat(data["created_at"]),
            base_version=int(data["base_version"]),
            base_commit=data.get("base_commit"),
            store_id=data.get("store_id"),
            commit=CommitInfo.from_dict(commit) if commit else None,
            source=data.get("source", ""),
            changes=tuple(Change.from_dict(c) for c in data["changes"]),
            drift=tuple(Drift.from_dict(d) for d in data.get("drift", [])),
            prune=PruneCheck.from_dict(data["prune_guard"]),
            base_ref=data.get("base_ref"),
            budgets=tuple(BudgetCheck.from_dict(b) for b in data.get("budgets", [])),
        )

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------- diff


def diff_specs(old: Any, new: Any, path: str = "") -> list[FieldChange]:
    """Field-level changes between two JSON values, with dotted paths (lists indexed as [i])."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[FieldChange] = []
        for key in sorted(set(old) | set(new)):
            child = f"{path}.{key}" if path else str(key)
            changes.extend(diff_specs(old.get(key, ABSENT), new.get(key, ABSENT), child))
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (o, n) in enumerate(zip(old, new, strict=True)) for c in diff_specs(o, n, f"{path}[{i}]")]
    return [FieldChange(path, old, new)]


# ---------------------------------------------------------------- compute


@dataclass(frozen=True)
class _Desired:
    document: Document
    loaded: LoadedDocument | None
    spec: dict[str, Any]
    hash: str


def _desired_objects(state: DesiredState) -> dict[tuple[str, str], _Desired]:
    found: dict[tuple[str, str], _Desired] = {}
    loaded = {(d.kind, d.name): d for d in state.documents}
    documents: list[Document] = list(state.objects())
    settings_doc = next((d for d in state.documents if d.kind == "Settings"), None)
    if settings_doc is not None:  # implicit default settings are not an object of their own
        documents.append(state.settings)
    for document in documents:
        key = (document.kind, document.name)
        spec = canonical_spec(document)
        found[key] = _Desired(document, loaded.get(key), spec, spec_hash(spec))
    return found


def applied_from_desired(state: DesiredState, *, commit_sha: str | None, applied_at: datetime) -> AppliedState:
    """A desired state treated as applied (`herald plan --base-ref`): what a pull request is compared to."""
    objects = {
        key: AppliedObject(kind=key[0], name=key[1], spec=want.spec, spec_hash=want.hash, commit_sha=commit_sha,
                           applied_at=applied_at, version=0, created_at=applied_at, paused=git_paused(want.spec))
        for key, want in _desired_objects(state).items()
    }
    return AppliedState(version=0, commit_sha=commit_sha, applied_at=applied_at, store_id=None, objects=objects)


def _sort_key(key: tuple[str, str]) -> tuple[int, str]:
    kind, name = key
    return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), name)


def _action(applied: AppliedObject | None, desired: _Desired | None) -> Action:
    if desired is None:
        return "delete"
    if applied is None:
        return "create"
    if applied.spec_hash == desired.hash:
        return "noop"
    if desired.document.kind == "Campaign":
        was, now = git_paused(applied.spec), git_paused(desired.spec)
        if now and not was:
            return "pause"
        if was and not now:
            return "resume"
    return "update"


def _paused_after(desired: _Desired, override: Override | None) -> bool:
    git = git_paused(desired.spec)
    if override is not None and override.paused != git:
        return override.paused
    return git


def _prune_max_share(applied: AppliedState, state: DesiredState) -> float:
    """The stricter of the applied and the desired limit: a commit cannot loosen its own guard."""
    shares = [state.settings.spec.pruneGuard.maxShare]
    for obj in applied.of_kind("Settings"):
        guard = obj.spec.get("spec", {}).get("pruneGuard", {})
        shares.append(float(guard.get("maxShare", DEFAULT_PRUNE_MAX_SHARE)))
    return min(shares)


def compute_plan(
    state: DesiredState,
    applied: AppliedState,
    *,
    commit: CommitInfo | None = None,
    source: str = "",
    clock: Clock | None = None,
    reach: ReachEstimator | None = None,
    reviewer: Reviewer | None = None,
    base_ref: str | None = None,
) -> Plan:
    """Diff `state` (already validated) against `applied`. Reads nothing else; writes nothing.

    With a `reviewer`, created and changed campaigns get previews, routes and a cost estimate, and
    every active campaign with a budget is checked against its estimate (Plan.budgets).
    """
    now = (clock or SystemClock()).now()
    register_referenced_secrets(state)
    desired = _desired_objects(state)
    changes: list[Change] = []
    for key in sorted(set(desired) | set(applied.objects), key=_sort_key):
        changes.append(_change(key, applied.get(*key), desired.get(key), applied, state, now, reach, reviewer))
    drift = tuple(_drift(applied, desired))
    removed = tuple(
        c.name for c in changes
        if c.kind == "Campaign" and (obj := applied.get(c.kind, c.name)) is not None and not obj.paused
        and (c.action == "delete" or c.paused_after)
    )
    active = sum(1 for obj in applied.of_kind("Campaign") if not obj.paused)
    return Plan(
        created_at=now,
        base_version=applied.version,
        base_commit=applied.commit_sha,
        store_id=applied.store_id,
        commit=commit,
        source=source,
        changes=tuple(changes),
        drift=drift,
        prune=PruneCheck(active, removed, _prune_max_share(applied, state)),
        base_ref=base_ref,
        budgets=_budgets(state, applied, reviewer, now) if reviewer is not None else (),
    )


def _budgets(state: DesiredState, applied: AppliedState, reviewer: Reviewer, now: datetime) -> tuple[BudgetCheck, ...]:
    """Every campaign with a budget, changed or not (a price change can break an unchanged campaign)."""
    checks = []
    for name, campaign in sorted(state.campaigns.items()):
        if campaign.spec.budget is None:
            continue
        obj = applied.get("Campaign", name)
        cost = None
        if not campaign.spec.paused:
            cost = reviewer.review(campaign, state, now=now, created_at=obj.created_at if obj else now).cost
        check = check_budget(campaign, cost)
        if check is not None:
            checks.append(check)
    return tuple(checks)


def _change(key: tuple[str, str], obj: AppliedObject | None, want: _Desired | None, applied: AppliedState,
            state: DesiredState, now: datetime, reach: ReachEstimator | None,
            reviewer: Reviewer | None = None) -> Change:
    kind, name = key
    action = _action(obj, want)
    if want is None:
        return Change(kind, name, "delete", old_hash=obj.spec_hash if obj else None)
    paused_after = _paused_after(want, applied.overrides.get(key)) if kind == "Campaign" else None
    impact = None
    if isinstance(want.document, Campaign) and action != "noop":
        created_at = obj.created_at if obj else now
        impact = campaign_impact(want.document, state, now=now, created_at=created_at,
                                 paused=bool(paused_after), reach=reach)
        if reviewer is not None and action != "pause":
            review = reviewer.review(want.document, state, now=now, created_at=created_at)
            impact = replace(impact, previews=review.previews if reviewer.previews else (), routes=review.routes,
                             cost=review.cost, notes=impact.notes + review.notes,
                             sample_source=getattr(reviewer, "label", None))
    elif action != "noop" and (summary := describe_object(want.document)):
        impact = Impact(summary=summary)
    diff = tuple(diff_specs(obj.spec, want.spec)) if obj is not None and action != "noop" else ()
    source = None
    if want.loaded is not None:
        line, _, _ = want.loaded.locate()
        source = f"{want.loaded.path}:{line}"
    return Change(kind, name, action, spec=want.spec if action != "noop" else None, spec_hash=want.hash,
                  old_hash=obj.spec_hash if obj else None, diff=diff, paused_after=paused_after,
                  impact=impact, source=source)


def _drift(applied: AppliedState, desired: Mapping[tuple[str, str], _Desired]) -> Iterator[Drift]:
    for key, override in sorted(applied.overrides.items()):
        want = desired.get(key)
        obj = applied.get(*key)
        git = git_paused(want.spec) if want else git_paused(obj.spec if obj else None)
        if want is None:
            resolution: Literal["kept", "resolved", "deleted"] = "deleted"
        else:
            resolution = "resolved" if git == override.paused else "kept"
        yield Drift(kind=key[0], name=key[1], git_paused=git, live_paused=override.paused, actor=override.actor,
                    reason=override.reason, since=override.created_at, resolution=resolution)


# ---------------------------------------------------------------- impact


def campaign_impact(campaign: Campaign, state: DesiredState, *, now: datetime, created_at: datetime,
                    paused: bool, reach: ReachEstimator | None = None) -> Impact:
    spec = campaign.spec
    group = spec.providerGroup
    is_default = False
    if group is None:
        default = state.default_group()
        group, is_default = (default.name if default else None), True
    notes: list[str] = []
    runs: tuple[datetime, ...] = ()
    if paused:
        notes.append("paused: no runs are scheduled and queued messages are not sent")
    elif spec.schedule is not None:
        runs, note = next_runs(campaign, state, now=now, created_at=created_at)
        if note:
            notes.append(note)
    estimated = None
    if reach is not None:
        try:
            estimated = reach(campaign, state)
        except Exception as exc:  # an audience store problem must not break a plan
            notes.append(f"reach not estimated: {redact(str(exc))[:120]}")
    from .references import campaign_secrets

    return Impact(provider_group=group, provider_group_is_default=is_default, next_runs=runs,
                  trigger=describe_trigger(campaign), message=message_impact(spec.message.body),
                  estimated_reach=estimated, notes=tuple(notes), secrets=tuple(campaign_secrets(campaign, state)))


def next_runs(campaign: Campaign, state: DesiredState, *, now: datetime, created_at: datetime,
              limit: int = NEXT_RUNS_SHOWN) -> tuple[tuple[datetime, ...], str | None]:
    """Upcoming fire times from the scheduler (reconciler.scheduler.next_fire_times)."""
    from .scheduler import next_fire_times

    try:
        times = next_fire_times(campaign, state.settings, created_at=created_at, after=now, limit=limit)
    except Exception as exc:  # show the problem in the plan rather than failing it
        return (), f"next runs unknown: {exc}"
    return tuple(times), None if times else "no future runs (schedule ended or in the past)"


def describe_object(document: Document) -> str | None:
    if isinstance(document, Provider):
        spec = document.spec
        rate = f", {spec.rateLimit.messagesPerSecond:g} msg/s" if spec.rateLimit else ""
        return f"type {spec.type}{rate}"
    if isinstance(document, ProviderGroup):
        group = document.spec
        text = "providers: " + " → ".join(group.providers)
        if group.countries:
            text += f"; countries: {', '.join(group.countries)}"
        return text + ("; default group" if group.default else "")
    return None


def describe_trigger(campaign: Campaign) -> str | None:
    trigger = campaign.spec.trigger
    if trigger is None:
        return None
    if trigger.event is not None:
        return f"on event {trigger.event.name}"
    if trigger.inaction is not None:
        inaction = trigger.inaction
        from .models.common import format_duration

        return (f"on {inaction.event.name} without {inaction.missing.name} "
                f"within {format_duration(inaction.within)}")
    assert trigger.eventDate is not None
    when = trigger.eventDate
    from .models.common import format_duration

    return f"at {when.event.name}.{when.property} {format_duration(when.offset)}" + (f" at {when.at}" if when.at else "")


def message_impact(body: str) -> MessageImpact:
    """Encoding and segments of the body, variables rendered empty (so a lower bound when it has any)."""
    from .encoding import analyze
    from .render import compile_template, referenced_paths

    try:
        text = compile_template(body).render()
        approximate = bool(referenced_paths(body))
    except Exception:
        text, approximate = body, True
    result = analyze(text)
    return MessageImpact(result.encoding, result.units, result.segments, approximate)


def register_referenced_secrets(state: DesiredState) -> None:
    """Teach the redactor every secret the desired state references (linked-content headers too), so
    none can leak into output. Only the redactor learns the values; nothing is printed, stored or sent.
    """
    from .references import secret_references

    for document in state.objects():
        for _, secret, _ in secret_references(document):
            if secret is not None:
                register_secret_value(secret)


# ---------------------------------------------------------------- rendering

SYMBOLS: dict[str, str] = {"create": "+", "update": "~", "delete": "-", "pause": "~", "resume": "~", "noop": " "}
MAX_VALUE_CHARS = 240
DELETE_NOTE = "pending messages, timers and planned runs are cancelled"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%MZ")


def show_value(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """A diff value for people: JSON, secret references as references, long text shortened."""
    if value is ABSENT:
        return "(absent)"
    if isinstance(value, dict) and "secretRef" in value and set(value) <= {"secretRef", "format"}:
        ref = value["secretRef"]
        where = f"env:{ref['env']}" if "env" in ref else f"file:{ref.get('file')}"
        return f"secretRef({where})" + (f" format {json.dumps(value['format'])}" if "format" in value else "")
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if len(text) > limit:
        text = f"{text[: limit - 1]}… ({len(text)} chars)"
    return text


def _header(plan: Plan) -> list[str]:
    lines = []
    if plan.commit:
        c = plan.commit
        lines.append(f'Herald plan for commit {c.short_sha} "{c.subject}" by {c.author}, {_when(c.committed_at)}')
    else:
        lines.append(f"Herald plan for {plan.source or 'the working tree'} (not a commit)")
    if plan.base_ref is not None:
        base = f" (commit {plan.base_commit[:10]})" if plan.base_commit else ""
        lines.append(f"Against the desired state of {plan.base_ref}{base}, as if it were applied.")
    elif plan.base_version == 0:
        lines.append("Against an empty applied state (nothing applied yet).")
    else:
        base = f" (commit {plan.base_commit[:10]})" if plan.base_commit else ""
        lines.append(f"Against applied state version {plan.base_version}{base}.")
    return lines


def _message_line(message: MessageImpact) -> str:
    plural = "s" if message.segments != 1 else ""
    text = f"{message.encoding}, {message.units} chars, {message.segments} segment{plural}"
    return text + (" (at least; variables rendered empty)" if message.approximate else "")


def impact_lines(impact: Impact) -> list[str]:
    lines = [impact.summary] if impact.summary else []
    if impact.trigger:
        lines.append(f"trigger: {impact.trigger}")
    if impact.provider_group:
        lines.append(f"provider group: {impact.provider_group}" + (" (default)" if impact.provider_group_is_default else ""))
    elif impact.provider_group_is_default:
        lines.append("provider group: none (no default group)")
    if impact.message:
        lines.append(f"message: {_message_line(impact.message)}")
    if impact.next_runs:
        lines.append("next runs: " + ", ".join(_when(t) for t in impact.next_runs))
    if impact.estimated_reach is not None:
        lines.append(f"estimated reach: {impact.estimated_reach:,} users")
    if impact.secrets:
        lines.append("secrets used: " + ", ".join(impact.secrets))
    lines.extend(impact.notes)
    return lines


def _route_text(route: CountryRoute) -> str:
    where = "other" if route.country == "*" else route.country
    if route.group is None:
        return f"{where} → no group"
    price = f" {route.price:g} {route.currency}/segment" if route.price is not None else " (no price)"
    return f"{where} → {route.group}/{route.providers[0]}{price}"


def cost_lines(cost: CostEstimate) -> list[str]:
    lines = []
    segments = f"{cost.segments:g} segment{'s' if cost.segments != 1 else ''}"
    if cost.next_run is not None:
        users = f"{cost.reach:,} users" if cost.reach is not None else "?"
        lines.append(f"cost: next run ≈ {format_money(cost.next_run)} ({users}, {cost.reach_basis}, x {segments})")
    elif cost.per_message:
        lines.append(f"cost: ≈ {format_money(cost.per_message)} per message ({segments}; reach {cost.reach_basis})")
    if cost.month is not None and cost.recurring:
        lines.append(f"cost: next 30 days ≈ {format_money(cost.month)} ({cost.month_basis})")
    return lines


def preview_header(impact: Impact) -> str:
    return f"previews (users from {impact.sample_source or 'samples'}; PII masked):"


def preview_summary(preview: Preview) -> str:
    route = f"{preview.group}/{preview.provider}" if preview.group else "no group"
    if preview.error is not None:
        return f"{preview.user} {preview.country or '?'} {preview.phone} → {route}: does not render: {preview.error}"
    plural = "s" if preview.segments != 1 else ""
    approx = ", stand-ins for event/linked values" if preview.stand_ins else ""
    price = (f", {preview.segments * preview.price:.4f} {preview.currency}" if preview.price is not None
             else ", no price")
    return (f"{preview.user} {preview.country or '?'} {preview.phone} → {route}: {preview.encoding}, "
            f"{preview.units} chars, {preview.segments} segment{plural}{price}{approx}")


def review_lines(impact: Impact) -> list[str]:
    """Routes, cost and previews (text format)."""
    lines = []
    if impact.routes:
        lines.append("routes: " + "; ".join(_route_text(r) for r in impact.routes))
    if impact.cost is not None:
        lines.extend(cost_lines(impact.cost))
    if impact.previews:
        lines.append(preview_header(impact))
        for preview in impact.previews:
            lines.append(f"  {preview_summary(preview)}")
            if preview.text is not None:
                lines.extend(f"    | {line}" for line in preview.text.splitlines() or [""])
    return lines


def budget_lines(plan: Plan) -> list[str]:
    marks = {"ok": "✓", "exceeded": "✗", "unknown": "?"}
    return [f"{marks[b.status]} {b.describe()}" for b in plan.budgets]


def diff_lines(diff: Sequence[FieldChange]) -> list[str]:
    lines = []
    for change in diff:
        if change.old is ABSENT:
            lines.append(f"+ {change.path}: {show_value(change.new)}")
        elif change.new is ABSENT:
            lines.append(f"- {change.path}: {show_value(change.old)}")
        else:
            lines.append(f"~ {change.path}: {show_value(change.old)} → {show_value(change.new)}")
    return lines


def drift_text(item: Drift) -> list[str]:
    state = "paused" if item.live_paused else "resumed"
    git = "paused" if item.git_paused else "active"
    reason = f' ("{item.reason}")' if item.reason else ""
    first = f"! {item.address} was {state} outside git by {item.actor} at {_when(item.since)}{reason}; git says {git}."
    if item.resolution == "resolved":
        second = "resolved: this commit agrees, so the override is cleared."
    elif item.resolution == "deleted":
        second = "the object is deleted by this commit; the override goes with it."
    else:
        verb = "resume" if item.live_paused else "pause"
        second = (f"kept: apply leaves it {state}. Commit `paused: {str(item.live_paused).lower()}` to make it "
                  f"permanent, or run `herald {verb} {item.name}` to return to git.")
    return [first, "    " + second]


def render_text(plan: Plan) -> str:
    lines = [*_header(plan), ""]
    actionable = plan.actionable
    if not actionable:
        lines.append("No changes. The applied state matches the desired state.")
    else:
        lines.append("Herald will perform these actions:")
        for change in actionable:
            lines.append("")
            label = change.action + (f": {DELETE_NOTE}" if change.action == "delete" and change.kind == "Campaign" else "")
            where = f"   {change.source}" if change.source else ""
            lines.append(f"  {SYMBOLS[change.action]} {change.address} ({label}){where}")
            lines.extend(f"      {line}" for line in diff_lines(change.diff))
            if change.impact:
                lines.extend(f"      {line}" for line in impact_lines(change.impact))
                lines.extend(f"      {line}" for line in review_lines(change.impact))
    if plan.budgets:
        lines += ["", "Budgets:"]
        lines.extend(f"  {line}" for line in budget_lines(plan))
    if plan.drift:
        lines += ["", "Drift (changes made outside git):"]
        for item in plan.drift:
            lines.extend(f"  {line}" for line in drift_text(item))
    if plan.prune.tripped:
        lines += ["", f"Prune guard: {plan.prune.describe()}.",
                  "  `herald apply` refuses this plan without --allow-prune."]
    lines += ["", f"Plan: {plan.summary()}."]
    return redact("\n".join(lines)) + "\n"


def render_json(plan: Plan) -> str:
    return plan.to_json() + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_code_block(lines: Sequence[str], language: str) -> list[str]:
    """A fenced block whose fence is longer than any backtick run inside (values may hold backticks)."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence + language, *lines, fence]


def render_markdown(plan: Plan) -> str:
    """For a pull-request comment: summary table, field diffs in collapsible blocks, drift and guards."""
    if plan.commit:
        title = f"### Herald plan for `{plan.commit.short_sha}` — {_md_cell(plan.commit.subject)}"
    else:
        title = f"### Herald plan for `{_md_cell(plan.source or 'working tree')}`"
    if plan.base_ref is not None:
        base = f"against `{_md_cell(plan.base_ref)}`" + (f" (`{plan.base_commit[:10]}`)" if plan.base_commit else "")
    else:
        base = ("against an empty applied state" if plan.base_version == 0 else
                f"against applied state version {plan.base_version}"
                + (f" (`{plan.base_commit[:10]}`)" if plan.base_commit else ""))
    lines = [title, "", f"**{plan.summary()}** — {base}.", ""]
    exceeded = [b for b in plan.budgets if b.exceeded]
    if exceeded:
        lines += ["> [!CAUTION]", "> **Budget exceeded** — `herald plan --check-budget` fails:"]
        lines += [f"> - {_md_cell(b.describe())}" for b in exceeded]
        lines.append("")
    actionable = plan.actionable
    if actionable:
        lines += ["| | Object | Action | Impact |", "|---|---|---|---|"]
        for change in actionable:
            impact = " · ".join(impact_lines(change.impact)) if change.impact else ""
            if change.action == "delete" and change.kind == "Campaign":
                impact = DELETE_NOTE
            lines.append(f"| `{SYMBOLS[change.action]}` | `{change.address}` | {change.action} | {_md_cell(impact)} |")
        for change in actionable:
            if not change.diff:
                continue
            lines += ["", f"<details><summary><code>{change.address}</code>: {len(change.diff)} field change(s)"
                      "</summary>", ""]
            block = []
            for field_change in change.diff:
                if field_change.old is not ABSENT:
                    block.append(f"- {field_change.path}: {show_value(field_change.old)}")
                if field_change.new is not ABSENT:
                    block.append(f"+ {field_change.path}: {show_value(field_change.new)}")
            lines += [*_md_code_block(block, "diff"), "", "</details>"]
        for change in actionable:
            if change.impact is not None and (change.impact.previews or change.impact.cost or change.impact.routes):
                lines += ["", *_md_review(change)]
    else:
        lines.append("No changes: the applied state matches the desired state.")
    if plan.budgets:
        marks = {"ok": "✅", "exceeded": "❌", "unknown": "❔"}
        lines += ["", "#### Budgets", "", "| | Campaign | Budget | Estimate | Basis |", "|---|---|---|---|---|"]
        for b in plan.budgets:
            estimate = f"{b.estimate:,.2f} {b.currency}" if b.estimate is not None else "not checked"
            lines.append(f"| {marks[b.status]} | `{b.campaign}` | {b.amount:,.2f} {b.currency} per {b.per} | "
                         f"{estimate} | {_md_cell(b.reason)} |")
    if plan.drift:
        lines += ["", "> [!WARNING]", "> **Drift** (changes made outside git):"]
        for item in plan.drift:
            first, second = drift_text(item)
            lines.append(f"> - {first.removeprefix('! ')} {second.strip()}")
    if plan.prune.tripped:
        lines += ["", "> [!CAUTION]", f"> **Prune guard:** {plan.prune.describe()}. "
                  "`herald apply` refuses this plan without `--allow-prune`."]
    return redact("\n".join(lines)) + "\n"


def _md_review(change: Change) -> list[str]:
    """Cost, routes and previews of one campaign, in an open <details> block."""
    impact = change.impact
    assert impact is not None
    lines = [f"<details open><summary><code>{change.address}</code>: previews and cost</summary>", ""]
    if impact.cost is not None:
        lines += [f"- {_md_cell(line.removeprefix('cost: '))}" for line in cost_lines(impact.cost)]
    if impact.routes:
        lines.append("- routes: " + "; ".join(_md_cell(_route_text(r)) for r in impact.routes))
    if impact.previews:
        lines += ["", f"Previews (users from {_md_cell(impact.sample_source or 'samples')}; PII masked):", "",
                  "| User | Country | Phone | Route | Encoding | Segments | Cost | Message |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in impact.previews:
            route = f"{p.group}/{p.provider}" if p.group else "no group"
            cost = f"{p.segments * p.price:.4f} {p.currency}" if p.price is not None and p.error is None else "—"
            text = f"⚠️ does not render: {p.error}" if p.error is not None else html.escape(p.text or "", quote=False)
            if p.stand_ins and p.error is None:
                text += " _(stand-ins for event/linked values)_"
            lines.append(f"| `{p.user}` | {p.country or '?'} | {p.phone} | {route} | {p.encoding or '—'} | "
                         f"{p.segments if p.error is None else '—'} | {cost} | {_md_cell(text)} |")
    return [*lines, "", "</details>"]


RENDERERS: dict[str, Callable[[Plan], str]] = {"text": render_text, "json": render_json, "markdown": render_markdown}


def render_plan(plan: Plan, fmt: str = "text") -> str:
    try:
        return RENDERERS[fmt](plan)
    except KeyError:
        raise ValueError(f"unknown plan format {fmt!r}; use one of {', '.join(RENDERERS)}") from None
