"""Delivery workers: claim outbox rows, render, send through the provider groups, record outcomes.

Exactly-once rules:
- A row is inserted (with its idempotency key) before anything is sent; sending needs a claim.
- A claim is a lease: a worker that dies leaves its rows claimed until the lease ends, then any
  worker re-claims them — in doubt (below) — and anything resent carries the SAME idempotency key
  (header and provider client reference). Only the claiming worker can record the outcome
  (`complete` checks claimed_by).
- Retryable failures (every provider of the group failed transiently) go back to the queue with
  backoff; after MAX_CLAIMS claims they are recorded as failed, never silently dropped.
- An IN-DOUBT send (the provider may have accepted it: no answer after the request was written,
  500/502/504, or a previous claim abandoned by a crash) is never resent blindly: the row goes back
  with its doubt recorded and is settled by doubt.settle — looked up at the provider, else by the
  group's `inDoubt` policy — before anything is sent again. Providers do not deduplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import phonenumbers

from . import audit, consent, doubt
from .linked import LinkedContentFetcher, LinkedUrlPolicy
from .loading import DesiredState
from .models import Campaign, Provider
from .providers.base import OutboundMessage
from .providers.base import SendResult as ProviderResult
from .providers.group import GroupRouter, InvalidNumber, RoutingError, number_region
from .render import Rendered, render_message_async
from .runs import member_from_context
from .runtime import Runtime
from .scheduling import campaign_window
from .secrets import redact
from .store.base import OutboxRow, SendResult, StateStore

LOG = logging.getLogger("herald.delivery")
CLAIM_BATCH = 200
MAX_CLAIMS = 6
DEFER_DELAY = timedelta(seconds=1)
RETRY_BASE = timedelta(seconds=5)
EARLY_RECORD_SECONDS = 0.05
# Sending stops (unsent rows are released for a retry) before the claim's lease ends, so no request of
# this worker is still running when another worker may claim the same rows: that would be a double send.
SEND_SHARE_OF_LEASE = 0.8
LOOKUP_SHARE = 0.5  # of the send time left: in-doubt lookups first, resends and fresh sends after


def message_cost(provider: Provider | None, phone: str, segments: int) -> float | None:
    """Price of one message from the provider's per-segment price for the destination country."""
    if provider is None or provider.spec.pricing is None:
        return None
    prices = provider.spec.pricing.perSegment
    region = _region_of(phone)
    price = prices.get(region or "", prices.get("*"))
    return None if price is None else round(price * segments, 6)


def _region_of(phone: str) -> str | None:
    try:
        return number_region(phone)  # cached: the router has just validated this number to send it
    except InvalidNumber:
        pass  # not canonical E.164 or not valid: whatever region phonenumbers still reads from it
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(phone, None))
    except phonenumbers.NumberParseException:
        return None


@dataclass
class BatchOutcome:
    claimed: int = 0
    sent: int = 0
    failed: int = 0
    retried: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    in_doubt: int = 0  # sends left in doubt by this batch (settled on a later claim)
    settled: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # in-doubt rows settled, by how


class AttemptMarks:
    """The write-ahead "attempted" mark (GroupRouter.before_submit): every request waits, in its slot,
    until its rows are durably marked as sent-maybe on their current claim (store.mark_attempted).
    Marks asked for in the same event-loop iteration share one store write (group commit), so the cost
    is one write per burst of requests, not per message. Invariant: no request is written before its
    rows' mark is committed; a failed mark sends nothing (the rows are released, never attempted)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._keys: list[str] = []
        self._written: asyncio.Future[bool] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def mark(self, messages: Sequence[OutboundMessage]) -> bool:
        loop = asyncio.get_running_loop()
        self._keys.extend(m.message_id for m in messages)
        if self._written is None:
            self._written = loop.create_future()
            loop.call_soon(self._flush)  # after every request of this iteration has queued its keys
        return await asyncio.shield(self._written)

    def _flush(self) -> None:
        keys, written = self._keys, self._written
        self._keys, self._written = [], None
        if written is not None:
            task = asyncio.ensure_future(self._write(keys, written))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _write(self, keys: list[str], written: asyncio.Future[bool]) -> None:
        try:
            await asyncio.to_thread(self.store.mark_attempted, keys)
        except Exception as exc:  # any failure: nothing may be sent unmarked
            LOG.warning("could not mark %d messages as attempted; not sending them now: %s", len(keys),
                        redact(str(exc)))
            written.set_result(False)
        else:
            written.set_result(True)


class DeliveryWorker:
    """One claim → render → send → record loop; run several per daemon (they share the router, and the
    router's AttemptMarks)."""

    def __init__(self, rt: Runtime, router: GroupRouter, state: DesiredState, *,
                 linked: LinkedContentFetcher | None = None, batch_size: int = CLAIM_BATCH) -> None:
        self.rt = rt
        self.router = router
        self.state = state
        self.batch_size = batch_size
        self.linked = linked or LinkedContentFetcher(clock=rt.clock, policy=LinkedUrlPolicy())
        self._campaigns: dict[str, Campaign] = {}
        if router.before_submit is None:
            router.before_submit = AttemptMarks(rt.store).mark
        # outbox id -> (how its doubt is being settled: found, resent, failover; the doubt's JSON)
        self._settling: dict[int, tuple[str, str]] = {}

    def campaign_for(self, row: OutboxRow) -> Campaign | None:
        key = row.spec_hash or f"live:{row.campaign}"
        if key not in self._campaigns:
            spec = self.rt.store.spec_by_hash(row.spec_hash) if row.spec_hash else None
            campaign = Campaign.model_validate(spec) if spec else self.state.campaigns.get(row.campaign)
            if campaign is None:
                return None
            self._campaigns[key] = campaign
        return self._campaigns[key]

    async def run_once(self) -> BatchOutcome:
        """Claim one batch and deliver it. Returns what happened (claimed == 0: nothing was due)."""
        now = self.rt.clock.now()
        deadline = asyncio.get_running_loop().time() + self.rt.leases.outbox.total_seconds() * SEND_SHARE_OF_LEASE
        rows = await asyncio.to_thread(self.rt.store.claim, self.rt.worker_id, self.batch_size, now,
                                     self.rt.leases.outbox)
        outcome = BatchOutcome(claimed=len(rows))
        if not rows:
            return outcome
        by_campaign: dict[str, list[OutboxRow]] = defaultdict(list)
        for row in rows:
            by_campaign[row.campaign].append(row)
        await asyncio.gather(*(self._deliver_campaign(name, group, outcome, deadline)
                               for name, group in by_campaign.items()))
        return outcome

    async def _deliver_campaign(self, name: str, rows: list[OutboxRow], outcome: BatchOutcome,
                                deadline: float | None = None) -> None:
        campaign = self.campaign_for(rows[0])
        if campaign is None:
            await self._skip(rows, "campaign deleted", outcome)
            return
        rows = await self._before_end(name, campaign, rows, outcome)
        rows = await self._consented(rows, outcome)
        ready: list[tuple[OutboxRow, Rendered]] = []
        for row in rows:
            rendered = await self._render(campaign, row)
            if isinstance(rendered, str):
                await self._skip([row], rendered, outcome)
            else:
                ready.append((row, rendered))
        if not ready:
            return
        messages = [OutboundMessage(message_id=row.idempotency_key, to=row.phone, body=r.body,
                                    template_id=campaign.spec.message.templateId,
                                    template_variables=r.template_variables,
                                    metadata={"campaign": name, "run": str(row.run_id or "")})
                    for row, r in ready]
        plans = await self._settle_doubts(campaign, ready, messages, outcome, deadline)
        await asyncio.gather(*(self._send(campaign, [ready[i] for i in picked], [messages[i] for i in picked],
                                          outcome, deadline, exclude=exclude, prefer=prefer)
                               for (exclude, prefer), picked in plans.items()))

    async def _settle_doubts(self, campaign: Campaign, ready: list[tuple[OutboxRow, Rendered]],
                             messages: list[OutboundMessage], outcome: BatchOutcome, deadline: float | None = None,
                             ) -> dict[tuple[tuple[str, ...], str | None], list[int]]:
        """Settle the batch's in-doubt rows (doubt.settle) and plan the sends: indices into `ready` per
        (excluded providers, preferred provider). Fresh rows go out as usual; found, waiting and skipped
        in-doubt rows are written here and not sent."""
        now = self.rt.clock.now()
        plans: dict[tuple[tuple[str, ...], str | None], list[int]] = defaultdict(list)
        verdicts = await asyncio.gather(*(self._verdict(campaign, row, message, now, deadline)
                                          for (row, _), message in zip(ready, messages, strict=True)))
        found: list[SendResult] = []
        waiting: dict[int, str] = {}
        wait_until: dict[int, datetime] = {}
        skipped: list[tuple[OutboxRow, str, str]] = []
        for index, ((row, rendered), verdict) in enumerate(zip(ready, verdicts, strict=True)):
            if verdict is None or verdict.action == "resend":
                if verdict is not None:
                    self._settling[row.id] = (verdict.settled or "resent", verdict.doubt.to_json())
                plans[(verdict.exclude, verdict.prefer) if verdict else ((), None)].append(index)
            elif verdict.action == "found":
                result = ProviderResult(row.idempotency_key, verdict.provider, "sent", verdict.provider_message_id,
                                        None, False, 0, rendered.segments)
                self._settling[row.id] = ("found", verdict.doubt.to_json())
                found.append(self._final(row, rendered, result, now))
            elif verdict.action == "wait":
                waiting[row.id] = verdict.doubt.to_json()
                wait_until[row.id] = verdict.retry_at or now
            else:
                skipped.append((row, verdict.reason, verdict.doubt.to_json()))
        await asyncio.to_thread(self._write_settled, campaign, found, waiting, wait_until, skipped)
        outcome.sent += len(found)
        outcome.settled["found"] += len(found)
        outcome.settled["skipped"] += len(skipped)
        outcome.skipped["in_doubt"] += len(skipped)
        return plans

    async def _verdict(self, campaign: Campaign, row: OutboxRow, message: OutboundMessage,
                       now: datetime, deadline: float | None = None) -> doubt.Verdict | None:
        """None for a fresh row; else what to do with this in-doubt one now. Lookups get at most half
        of the claim's remaining send time (the rest is for resends); a lookup cut short is asked
        again on a later claim (`wait`), never taken as "not found"."""
        if row.doubt is None and not row.abandoned_claim:
            return None
        try:
            group = self.router.group_for(row.phone, campaign.spec.providerGroup)
        except RoutingError:
            group = None
        open_doubt = doubt.doubt_of(row, group, now)
        if open_doubt is None:
            return None
        budget = None if deadline is None else (deadline - asyncio.get_running_loop().time()) * LOOKUP_SHARE
        if budget is not None and budget <= 0:
            return doubt.Verdict("wait", open_doubt, retry_at=now + DEFER_DELAY, reason="no time left to look up")
        try:
            return await asyncio.wait_for(
                doubt.settle(self.router, group, message, open_doubt, now, row.claim_count), budget)
        except TimeoutError:
            return doubt.Verdict("wait", open_doubt, retry_at=now + DEFER_DELAY, reason="lookup took too long")

    def _write_settled(self, campaign: Campaign, found: list[SendResult], waiting: dict[int, str],
                       wait_until: dict[int, datetime], skipped: list[tuple[OutboxRow, str, str]]) -> None:
        """Write the in-doubt rows settled without a send (found, waiting, skipped) and audit them."""
        store = self.rt.store
        if found and store.complete(self.rt.worker_id, found):
            by_provider: dict[str, int] = defaultdict(int)
            for result in found:
                by_provider[f"{result.provider}:sent"] += 1
            store.append_audit([audit.audit_record(
                audit.SEND, at=self.rt.clock.now(), actor=self.rt.actor, kind="Campaign", name=campaign.name,
                details={"messages": len(found), "by_provider_status": dict(by_provider),
                         "in_doubt": "found at the provider by lookup; not resent"})])
        for retry_at in sorted(set(wait_until.values())):
            store.release_in_doubt(self.rt.worker_id, {i: d for i, d in waiting.items() if wait_until[i] == retry_at},
                                   retry_at=retry_at)
        written = [row for row, reason, record in skipped
                   if store.skip_in_doubt(self.rt.worker_id, [row.id], redact(reason), doubt=record)]
        if written:
            self.rt.metrics.skips.labels(reason="in_doubt").inc(len(written))
            store.append_audit([audit.audit_record(
                audit.SKIP, at=self.rt.clock.now(), actor=self.rt.actor, kind="Campaign", name=campaign.name,
                details={"messages": len(written), "reason": redact(skipped[0][1]),
                         "users": [r.user_id for r in written[:20]],
                         "runs": sorted({r.run_id for r in written if r.run_id is not None})})])

    async def _send(self, campaign: Campaign, ready: list[tuple[OutboxRow, Rendered]],
                    messages: list[OutboundMessage], outcome: BatchOutcome, deadline: float | None, *,
                    exclude: tuple[str, ...] = (), prefer: str | None = None) -> None:
        """Send the batch and record accepted messages every EARLY_RECORD_SECONDS while the rest are
        still in flight, so a crash leaves only the last moment's answers unrecorded (in doubt, resent
        after the lease), not the whole batch."""
        if not messages:
            return
        accepted: list[ProviderResult] = []
        started = self.rt.clock.now()
        sending = asyncio.ensure_future(self.router.send(
            messages, group=campaign.spec.providerGroup, deadline=deadline, exclude=exclude, prefer=prefer,
            on_result=lambda result: accepted.append(result) if result.status == "sent" else None))
        early: list[SendResult] = []
        try:
            while not sending.done():
                await asyncio.wait({sending}, timeout=EARLY_RECORD_SECONDS)
                if accepted and not sending.done():
                    taken = list(accepted)
                    accepted.clear()
                    early += await self._complete(ready, taken)
        finally:
            if not sending.done():
                sending.cancel()
        await self._record(campaign, ready, sending.result(), outcome, early=early, started=started)

    async def _complete(self, ready: list[tuple[OutboxRow, Rendered]],
                        results: Sequence[ProviderResult]) -> list[SendResult]:
        """Record these final results now; returns what was written."""
        rendered_by_key = {row.idempotency_key: (row, rendered) for row, rendered in ready}
        now = self.rt.clock.now()
        final = [self._final(*rendered_by_key[r.message_id], r, now) for r in results]
        await asyncio.to_thread(self.rt.store.complete, self.rt.worker_id, final)
        return final

    async def _consented(self, rows: list[OutboxRow], outcome: BatchOutcome) -> list[OutboxRow]:
        """Consent at send time: rows of users who opted out (or whose number became invalid) since
        the message was queued end `skipped: opted_out` / `skipped: invalid_phone`, audited."""
        keep, refused = await asyncio.to_thread(consent.send_time_check, self.rt.audience, rows)
        for reason, skipped in refused.items():
            await self._skip(skipped, reason, outcome)
        return keep

    async def _opt_outs_from(self, ready: list[tuple[OutboxRow, Rendered]], results: Sequence[ProviderResult]) -> None:
        """Failures whose provider code means "opted out" (Twilio 21610) opt the user out here too."""
        by_key = {r.message_id: r for r in results if r.status == "failed" and r.error_code}
        failures = [(row.user_id, row.phone, by_key[row.idempotency_key].provider, by_key[row.idempotency_key].error_code)
                    for row, _ in ready if row.idempotency_key in by_key]
        if failures:
            await asyncio.to_thread(consent.opt_out_from_errors, self.rt, self.state, failures)

    async def _render(self, campaign: Campaign, row: OutboxRow) -> Rendered | str:
        member = member_from_context(row.context)
        event = row.context.get("event")
        linked_values: dict[str, Any] | None = None
        if campaign.spec.message.linkedContent:
            fetched = await asyncio.to_thread(self.linked.fetch, campaign, member, event=event)
            if fetched.action == "skip_user":
                return "linked_content: " + "; ".join(fetched.errors)
            if fetched.action == "abort_run":
                await asyncio.to_thread(self._abort_run, campaign, row, fetched.errors)
                return "linked_content_abort: " + "; ".join(fetched.errors)
            linked_values = fetched.values
        rendered = await render_message_async(campaign, member, event=event, linked=linked_values)
        if isinstance(rendered, Rendered):
            return rendered
        return f"render_error: {rendered.reason}"

    def _abort_run(self, campaign: Campaign, row: OutboxRow, errors: Sequence[str]) -> None:
        cancelled = self.rt.store.cancel_pending(campaign.name, row.run_id)
        self.rt.store.append_audit([audit.audit_record(
            "run_aborted", at=self.rt.clock.now(), actor=self.rt.actor, kind="Campaign", name=campaign.name,
            details={"run_id": row.run_id, "reason": "linked content failed (onError: abort_run)",
                     "errors": list(errors), "cancelled": cancelled})])

    async def _before_end(self, name: str, campaign: Campaign, rows: list[OutboxRow],
                          outcome: BatchOutcome) -> list[OutboxRow]:
        """Nothing is sent at or after the campaign's `end` (the applied version's, so a commit moving `end`
        earlier stops queued messages too): such rows end `skipped: ended`, unless `queuedAfterEnd: deliver`."""
        current = self.state.campaigns.get(name) or campaign
        _, end = campaign_window(current, self.state.settings)
        if end is None or current.spec.queuedAfterEnd == "deliver" or self.rt.clock.now() < end or not rows:
            return rows
        await self._skip(rows, "ended", outcome)
        return []

    async def _skip(self, rows: Sequence[OutboxRow], reason: str, outcome: BatchOutcome) -> None:
        reason = redact(reason)
        await asyncio.to_thread(self._skip_and_audit, rows, reason)
        label = reason.split(":")[0]
        outcome.skipped[label] += len(rows)
        self.rt.metrics.skips.labels(reason=label).inc(len(rows))

    def _skip_and_audit(self, rows: Sequence[OutboxRow], reason: str) -> None:
        skipped = self.rt.store.skip([r.id for r in rows], reason, worker_id=self.rt.worker_id)
        if skipped:
            self.rt.store.append_audit([audit.audit_record(
                audit.SKIP, at=self.rt.clock.now(), actor=self.rt.actor, kind="Campaign", name=rows[0].campaign,
                commit_sha=self._commit_of(rows[0]),
                details={"messages": skipped, "reason": reason, "users": [r.user_id for r in rows[:20]],
                         "runs": sorted({r.run_id for r in rows if r.run_id is not None})})])

    def _final(self, row: OutboxRow, rendered: Rendered, result: ProviderResult, now: datetime) -> SendResult:
        assert result.status != "in_doubt", "an in-doubt send is released with its doubt, never recorded final"
        settling = self._settling.pop(row.id, None)
        provider = self.state.providers.get(result.provider or "")
        self.rt.metrics.sends.labels(provider=result.provider or "none", status=result.status).inc()
        self.rt.metrics.send_wait.observe(max(0.0, (now - row.not_before).total_seconds()))
        return SendResult(
            outbox_id=row.id, status=result.status, provider=result.provider,
            provider_message_id=result.provider_message_id, attempts=result.attempts, error=result.error,
            segments=rendered.segments,
            cost=message_cost(provider, row.phone, rendered.segments) if result.status == "sent" else None,
            doubt_settled=settling[0] if settling else None, doubt=settling[1] if settling else None)

    async def _record(self, campaign: Campaign, ready: list[tuple[OutboxRow, Rendered]],
                      results: Sequence[ProviderResult], outcome: BatchOutcome,
                      early: Sequence[SendResult] = (), started: datetime | None = None) -> None:
        """Record the batch's remaining results (`early` ones are already written) and audit it. In-doubt
        results go back to the queue with their doubt, to be settled before any resend."""
        now = self.rt.clock.now()
        by_key = {r.message_id: r for r in results}
        recorded = {r.outbox_id for r in early}
        fresh: list[SendResult] = []
        retry: list[OutboxRow] = []
        doubtful: list[tuple[OutboxRow, ProviderResult]] = []
        for row, rendered in ready:
            if row.id in recorded:
                continue
            result = by_key[row.idempotency_key]
            if result.status == "in_doubt":
                doubtful.append((row, result))
                continue
            never_attempted = result.attempts == 0  # deferred (send-rate limit, claim deadline): not a failure
            if result.status == "failed" and result.retryable and (never_attempted or row.claim_count < MAX_CLAIMS):
                retry.append(row)
                continue
            fresh.append(self._final(row, rendered, result, now))
        if fresh:
            await asyncio.to_thread(self.rt.store.complete, self.rt.worker_id, fresh)
            await self._opt_outs_from(ready, results)
        if doubtful:
            await asyncio.to_thread(self._release_in_doubt, doubtful, started or now, now)
            outcome.in_doubt += len(doubtful)
        final = [*early, *fresh]
        for row in retry:
            self._settling.pop(row.id, None)  # released: its doubt (if any) is settled on a later claim
            result = by_key[row.idempotency_key]
            if result.attempts == 0:  # deferred; with every circuit open, until one lets a probe through
                backoff = max(DEFER_DELAY, timedelta(seconds=result.retry_after or 0))
            else:
                backoff = RETRY_BASE * (2 ** max(0, row.claim_count - 1))
            error = result.error
            await asyncio.to_thread(self.rt.store.release, self.rt.worker_id, [row.id],
                                    retry_at=now + backoff, error=error)
        sent = sum(1 for r in final if r.status == "sent")
        outcome.sent += sent
        outcome.failed += len(final) - sent
        outcome.retried += len(retry)
        if final:
            await asyncio.to_thread(self._audit_batch, campaign, ready, final)

    def _release_in_doubt(self, doubtful: Sequence[tuple[OutboxRow, ProviderResult]], started: datetime,
                          now: datetime) -> None:
        """Give in-doubt rows back, each not before its provider's lookup can answer (at once when the
        provider has none: the group's policy decides on the next claim)."""
        by_time: dict[datetime, dict[int, str]] = defaultdict(dict)
        for row, result in doubtful:
            settling = self._settling.pop(row.id, None)  # a resend of an in-doubt row: keep that doubt too
            previous = doubt.Doubt.from_json(settling[1] if settling else row.doubt)
            self.rt.metrics.sends.labels(provider=result.provider or "none", status="in_doubt").inc()
            record = doubt.sent_in_doubt(result.provider, started, now, result.error or "no answer", previous)
            delay = self.router.lookup_delay(result.provider) if result.provider else 0.0
            by_time[now + max(DEFER_DELAY, timedelta(seconds=delay))][row.id] = record.to_json()
        for retry_at, doubts in by_time.items():
            self.rt.store.release_in_doubt(self.rt.worker_id, doubts, retry_at=retry_at)

    def _audit_batch(self, campaign: Campaign, ready: list[tuple[OutboxRow, Rendered]],
                     final: Sequence[SendResult]) -> None:
        providers: dict[str, int] = defaultdict(int)
        for result in final:
            providers[f"{result.provider or 'none'}:{result.status}"] += 1
        runs = sorted({row.run_id for row, _ in ready if row.run_id is not None})
        self.rt.store.append_audit([audit.audit_record(
            audit.SEND, at=self.rt.clock.now(), actor=self.rt.actor, kind="Campaign", name=campaign.name,
            commit_sha=self._commit_of(ready[0][0]),
            details={"messages": len(final), "by_provider_status": dict(providers), "runs": runs})])


    def _commit_of(self, row: OutboxRow) -> str | None:
        """The commit of the campaign version this message belongs to (its run's, else the applied one)."""
        if row.run_id is not None:
            run = self.rt.store.get_run(row.run_id)
            if run is not None:
                return run.commit_sha
        obj = self.rt.store.get_object("Campaign", row.campaign)
        return obj.commit_sha if obj else None


async def drain(workers: Sequence[DeliveryWorker], max_batches: int = 1000) -> BatchOutcome:
    """Run the workers until nothing is due (or max_batches): used by the demo and tests."""
    total = BatchOutcome()
    for _ in range(max_batches):
        outcomes = await asyncio.gather(*(w.run_once() for w in workers))
        for o in outcomes:
            total.claimed += o.claimed
            total.sent += o.sent
            total.failed += o.failed
            total.retried += o.retried
            total.in_doubt += o.in_doubt
            for k, v in o.settled.items():
                total.settled[k] += v
            for k, v in o.skipped.items():
                total.skipped[k] += v
        if all(o.claimed == 0 for o in outcomes):
            break
    return total
