"""In-doubt sends: settled by asking the provider, or by the group's `inDoubt` policy — never guessed.

A claimed outbox row is IN DOUBT when the provider may have accepted it without Herald knowing:
- the router answered `in_doubt` (the request was written, then a timeout, a dropped connection or
  a 500/502/504 — see providers/base.py), recorded with the provider it went to and the time window;
- or a previous claim of the row ended without a release or a record (`OutboxRow.abandoned_claim`:
  the worker crashed or lost its lease, maybe after sending): every provider of the group is a
  suspect, the window runs from the row's last not_before to now.

Invariants (what `settle` decides, in order):
1. Nothing is decided before `until + lookup delay` of the suspects that have a lookup: until then the
   provider's list may not show a message it did accept, so the row waits (`wait`).
2. Every suspect with a lookup is asked. Found → the row is `sent` with that provider's id (`found`).
   A lookup that fails → ask again later (`wait`); never resend on a failed lookup.
3. Not found anywhere and every suspect could be asked → resend (`resent`), the suspect first.
4. A suspect without a lookup → the group's policy: skip (default: recorded skipped with the reason,
   no duplicate), resend (same provider first) or failover (the group's other providers only).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from .models import ProviderGroup
from .providers.base import InDoubt, OutboundMessage, ProviderError
from .providers.group import GroupRouter
from .store.base import OutboxRow

# Lower bound of an abandoned claim's send window: its row's not_before (a claim needs not_before <= now),
# less this margin for clock differences between daemons.
ABANDONED_MARGIN = timedelta(seconds=60)
LOOKUP_RETRY = timedelta(seconds=5)
MAX_DOUBT_CLAIMS = 20  # lookups that keep failing for this many claims: recorded skipped, never resent
Action = Literal["wait", "found", "resend", "skip"]


@dataclass(frozen=True)
class Doubt:
    """Which providers may have the message, and when it may have been sent to them."""

    providers: tuple[str, ...]
    since: datetime
    until: datetime
    reason: str

    def to_json(self) -> str:
        return json.dumps({"providers": list(self.providers), "since": self.since.isoformat(),
                           "until": self.until.isoformat(), "reason": self.reason})

    @classmethod
    def from_json(cls, text: str | None) -> Doubt | None:
        if not text:
            return None
        data = json.loads(text)
        return cls(tuple(data.get("providers") or ()), datetime.fromisoformat(data["since"]),
                   datetime.fromisoformat(data["until"]), str(data.get("reason", "")))


@dataclass(frozen=True)
class Verdict:
    action: Action
    doubt: Doubt
    provider: str | None = None  # found: where
    provider_message_id: str | None = None
    prefer: str | None = None  # resend: this provider first
    exclude: tuple[str, ...] = ()  # resend: never these (failover policy)
    settled: str | None = None  # found | resent | failover | skipped
    retry_at: datetime | None = None  # wait: claim again then
    reason: str = ""


def doubt_of(row: OutboxRow, group: ProviderGroup | None, now: datetime) -> Doubt | None:
    """The row's doubt, if any: the recorded one, widened to every provider of the group and up to now
    when a previous claim was abandoned. None: a fresh row, send it normally."""
    recorded = Doubt.from_json(row.doubt)
    if not row.abandoned_claim:
        return recorded
    since = row.not_before - ABANDONED_MARGIN
    providers = tuple(group.spec.providers) if group is not None else ()
    if recorded is not None:
        since = min(since, recorded.since)
        providers = tuple(dict.fromkeys((*recorded.providers, *providers)))
    return Doubt(providers, since, now, "a previous claim ended without a record (worker crash or lost lease)")


def sent_in_doubt(provider: str | None, since: datetime, until: datetime, reason: str,
                  previous: Doubt | None = None) -> Doubt:
    """The doubt a resend (or first send) left at `provider`. A previous doubt the resend followed
    stays part of it: a provider without lookup can never be cleared (failover must not go back to
    it), and looking up a provider again over the wider window is harmless."""
    new = Doubt((provider,) if provider else (), since, until, reason)
    if previous is None:
        return new
    providers = tuple(dict.fromkeys((*new.providers, *previous.providers)))
    return Doubt(providers, min(since, previous.since), until, reason)


async def settle(router: GroupRouter, group: ProviderGroup | None, message: OutboundMessage, doubt: Doubt,
                 now: datetime, claim_count: int) -> Verdict:
    """Decide what happens to one in-doubt message now (module docstring, rules 1-4)."""
    lookups = [p for p in doubt.providers if router.can_look_up(p)]
    delay = max((router.lookup_delay(p) for p in lookups), default=0.0)
    ready_at = doubt.until + timedelta(seconds=delay)
    if now < ready_at:
        return Verdict("wait", doubt, retry_at=ready_at)
    for provider in lookups:
        found = await router.look_up(provider, InDoubt(message, doubt.since, doubt.until))
        if isinstance(found, ProviderError):
            reason = f"lookup at {provider} failed: {found.message}"
            if claim_count >= MAX_DOUBT_CLAIMS:
                return Verdict("skip", doubt, settled="skipped",
                               reason=f"in_doubt: {reason} ({claim_count} claims); not resent")
            return Verdict("wait", doubt, retry_at=now + LOOKUP_RETRY, reason=reason)
        if found.provider_message_id is not None:
            return Verdict("found", doubt, provider=provider, provider_message_id=found.provider_message_id,
                           settled="found")
    blind = [p for p in doubt.providers if p not in lookups]
    first = doubt.providers[0] if len(doubt.providers) == 1 else None
    if not blind:
        return Verdict("resend", doubt, prefer=first, settled="resent")
    policy = group.spec.inDoubt if group is not None else "skip"
    if policy == "resend":
        return Verdict("resend", doubt, prefer=blind[0], settled="resent")
    others = [p for p in group.spec.providers if p not in blind] if group is not None else []
    if policy == "failover" and others:
        return Verdict("resend", doubt, exclude=tuple(blind), settled="failover")
    return Verdict("skip", doubt, settled="skipped",
                   reason=f"in_doubt: may have been sent by {', '.join(blind)} ({doubt.reason}); "
                          f"not resent (inDoubt {policy})")
