"""Consent: who may be messaged, changed by replies (STOP/START), provider errors and the API.

Invariants:
- The audience store's `users.opted_out` is the one switch every send honours: segment queries
  exclude opted-out users when a run is materialized, and the delivery worker re-reads it for every
  claimed message just before sending (`send_time_check`), so a user who opts out after a message
  was queued (time-zone or DND delay, retry) gets a `skipped: opted_out`, never the message.
- Every change is recorded in the append-only audit log as action `consent` (kind `Consent`, name the
  phone number or user id) with its source (keyword, provider_error, api, ingest), time, the message
  that caused it and the provider; `herald optouts` exports the ledger from there. A bulk
  `herald ingest users FILE` records the changes it made (source ingest, message FILE:LINE) through
  IngestLedger, one audit append per ingest batch.
- The daemon counts every recorded change in `herald_consent_changes_total{source,change}`.
- A reply is a keyword only when the whole trimmed message is one (case-insensitive, trailing
  punctuation ignored), as carriers and Twilio match them: "stop" opts out, "please don't stop" does not.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import phonenumbers

from . import audit
from .models.settings import ConsentReplies, ConsentSettings
from .secrets import redact
from .store.base import AuditQuery

if TYPE_CHECKING:
    from .audience.ingest import ConsentRow
    from .audience.store import AudienceStore
    from .clock import Clock
    from .loading import DesiredState
    from .providers.group import GroupRouter
    from .runtime import Runtime
    from .store.base import AuditRecord, OutboxRow, StateStore

LOG = logging.getLogger("herald.consent")
CONSENT = "consent"
CONSENT_REPLY = "consent_reply"
Source = Literal["keyword", "provider_error", "api", "ingest"]
Keyword = Literal["stop", "start", "help"]
MAX_MESSAGE_STORED = 320
# At most one auto-reply per number and keyword in this span: a user repeating HELP, or another
# auto-responder answering ours, costs one message, not a loop. The consent change is always recorded.
REPLY_COOLDOWN = timedelta(minutes=10)
MAX_UNRECORDED_KEPT = 1000


@dataclass(frozen=True)
class ConsentChange:
    phone: str | None
    user_ids: tuple[str, ...]
    opted_out: bool
    source: Source
    at: datetime
    message: str | None = None
    provider: str | None = None

    def details(self) -> dict[str, Any]:
        return {"phone": self.phone, "users": list(self.user_ids), "opted_out": self.opted_out,
                "source": self.source, "message": self.message, "provider": self.provider}

    def audit_entry(self, actor: str) -> AuditRecord:
        return audit.audit_record(CONSENT, at=self.at, actor=actor, kind="Consent",
                                  name=self.phone or (self.user_ids[0] if self.user_ids else None),
                                  details=self.details())


def settings_of(state: DesiredState | None) -> ConsentSettings:
    settings = state.settings if state is not None else None
    return settings.spec.consent if settings is not None else ConsentSettings()


def normalize_phone(raw: str | None, region: str | None = None) -> str | None:
    """E.164 from what providers post: '+14155550100', '14155550100' (Vonage msisdn), '+1 (415) …',
    and, given the provider's `region`, national numbers with a trunk prefix ('09876543210', Exotel)."""
    if not raw:
        return None
    text = raw.strip()
    national = region is not None and text.startswith("0") and not text.startswith("00")
    if not text.startswith("+") and not national:
        text = "+" + text.lstrip("0")
    try:
        parsed = phonenumbers.parse(text, region if national else None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def classify(text: str | None, settings: ConsentSettings) -> Keyword | None:
    """The keyword family of a whole reply, or None for any other text."""
    if not text:
        return None
    word = text.strip().rstrip(".!").strip().upper()
    for family, words in (("stop", settings.stopKeywords), ("start", settings.startKeywords),
                          ("help", settings.helpKeywords)):
        if word in {w.upper() for w in words}:
            return family  # type: ignore[return-value]
    return None


def reply_text(settings: ConsentSettings, keyword: Keyword, language: str | None) -> str:
    """The configured auto-reply in the user's language (else the default language, else English)."""
    replies = (settings.replies.get(language or "") or settings.replies.get(settings.defaultLanguage)
               or ConsentReplies())
    return str(getattr(replies, keyword))


# ---------------------------------------------------------------- recording changes


def record_change(rt: Runtime, *, phone: str | None, opted_out: bool, source: Source,
                  message: str | None = None, provider: str | None = None,
                  user_ids: Sequence[str] | None = None) -> ConsentChange:
    """Apply a consent change to the audience store at once and audit it. `user_ids` default to every
    stored user with this phone; a number no user has is still recorded (the ledger keeps it)."""
    now = rt.clock.now()
    ids = tuple(user_ids) if user_ids is not None else tuple(rt.audience.users_by_phone(phone) if phone else ())
    if ids:
        rt.audience.set_opted_out(ids, opted_out, now=now)
    text = redact(message)[:MAX_MESSAGE_STORED] if message else None
    change = ConsentChange(phone, ids, opted_out, source, now, text, provider)
    rt.store.append_audit([change.audit_entry(rt.actor)])
    count_changes(rt, [change])
    LOG.info("consent: %s %s (%s via %s)", phone or ",".join(ids), "opted out" if opted_out else "opted in",
             source, provider or "-")
    return change


def record_ingested(rt: Runtime, changes: Sequence[tuple[str, str | None, bool]]) -> list[ConsentChange]:
    """Audit consent changes that arrived with user records (the store already holds them)."""
    now = rt.clock.now()
    recorded = [ConsentChange(phone, (user_id,), opted_out, "ingest", now, "user record")
                for user_id, phone, opted_out in changes]
    if recorded:
        rt.store.append_audit([c.audit_entry(rt.actor) for c in recorded])
        count_changes(rt, recorded)
    return recorded


def count_changes(rt: Runtime, changes: Iterable[ConsentChange]) -> None:
    """herald_consent_changes_total{source, change="opt_out"|"opt_in"}, once per recorded change."""
    for change in changes:
        rt.metrics.consent_changes.labels(source=change.source,
                                          change="opt_out" if change.opted_out else "opt_in").inc()


@dataclass
class IngestLedger:
    """The consent ledger of one bulk `herald ingest users FILE`: each stored batch's changes are
    appended to the state store's audit log in one write (source `ingest`, message `FILE:LINE`, the
    clock's time when the batch was stored).

    Invariants: the state store is opened at the first change, so an ingest that changes no consent
    never touches it. A state store that cannot be opened or written never fails the ingest (the
    audience store already holds the change, and every send honours it): from the first failure on,
    no write is tried again, every change is counted in `unrecorded` (the first MAX_UNRECORDED_KEPT
    kept in `unrecorded_rows` to be named) and `error` says why."""

    open_store: Callable[[], StateStore]
    clock: Clock
    actor: str
    file: str
    where: str = "the state store"  # shown to people: the store's URL without credentials
    recorded: int = 0
    unrecorded: int = 0
    unrecorded_rows: list[ConsentRow] = field(default_factory=list)
    error: str | None = None
    _store: StateStore | None = field(default=None, init=False, repr=False)

    def __call__(self, rows: list[ConsentRow]) -> None:
        if self.error is None:
            try:
                self._append(rows)
                return
            except Exception as exc:  # the state store is down or refuses: the ingest goes on
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                self.error = redact(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)
                LOG.warning("consent changes of %s not recorded: %s", self.file, self.error)
        self.unrecorded += len(rows)
        self.unrecorded_rows.extend(rows[:max(0, MAX_UNRECORDED_KEPT - len(self.unrecorded_rows))])

    def _append(self, rows: list[ConsentRow]) -> None:
        if self._store is None:
            self._store = self.open_store()
        now = self.clock.now()
        self._store.append_audit_bulk([
            ConsentChange(row.phone, (row.user_id,), row.opted_out, "ingest", now,
                          f"{self.file}:{row.line}"[-MAX_MESSAGE_STORED:]).audit_entry(self.actor)
            for row in rows])
        self.recorded += len(rows)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


def user_language(audience: AudienceStore, user_ids: Sequence[str]) -> str | None:
    for user_id in user_ids:
        member = audience.get_user(user_id)
        language = member.properties.get("language") if member else None
        if isinstance(language, str) and language:
            return language.lower()
    return None


@dataclass(frozen=True)
class InboundMessage:
    provider: str  # provider name (metadata.name)
    sender: str  # E.164
    text: str
    recipient: str | None = None  # our number the reply was sent to
    message_id: str | None = None


@dataclass(frozen=True)
class InboundOutcome:
    keyword: Keyword | None
    change: ConsentChange | None
    replied: str | None  # "sent", "failed", "throttled" (answered within REPLY_COOLDOWN), None (no reply)


async def handle_inbound(rt: Runtime, state: DesiredState, router: GroupRouter | None,
                         inbound: InboundMessage) -> InboundOutcome:
    """STOP family → opt out, START family → opt in, HELP → the help text; each keyword answered with
    its configured reply through the same provider (whose configured sender is the number written to)."""
    import asyncio

    settings = settings_of(state)
    keyword = classify(inbound.text, settings)
    if keyword is None:
        return InboundOutcome(None, None, None)
    change = None
    if keyword in ("stop", "start"):
        change = await asyncio.to_thread(record_change, rt, phone=inbound.sender, opted_out=keyword == "stop",
                                         source="keyword", message=inbound.text, provider=inbound.provider)
    ids = change.user_ids if change else tuple(await asyncio.to_thread(rt.audience.users_by_phone, inbound.sender))
    language = await asyncio.to_thread(user_language, rt.audience, ids)
    text = reply_text(settings, keyword, language)
    if not text or router is None:
        return InboundOutcome(keyword, change, None)
    if await asyncio.to_thread(_replied_recently, rt, inbound.sender, keyword):
        return InboundOutcome(keyword, change, "throttled")
    return InboundOutcome(keyword, change, await _reply(rt, router, inbound, keyword, text))


def _replied_recently(rt: Runtime, phone: str, keyword: Keyword) -> bool:
    since = rt.clock.now() - REPLY_COOLDOWN
    recent = rt.store.query_audit(AuditQuery(actions=(CONSENT_REPLY,), kind="Consent", name=phone, since=since,
                                             limit=50, newest_first=True))
    return any(entry.details.get("keyword") == keyword for entry in recent)


async def _reply(rt: Runtime, router: GroupRouter, inbound: InboundMessage, keyword: Keyword, text: str) -> str:
    import asyncio

    from .providers.base import OutboundMessage

    message = OutboundMessage(message_id=f"reply-{uuid.uuid4().hex}", to=inbound.sender, body=text,
                              metadata={"campaign": "", "run": "", "reply_to": inbound.message_id or ""})
    try:
        (result,) = await router.send_via(inbound.provider, [message])
        status, error, sid = result.status, result.error, result.provider_message_id
    except Exception as exc:  # a reply that cannot go out must not lose the consent change
        status, error, sid = "failed", redact(f"{type(exc).__name__}: {exc}"), None
    await asyncio.to_thread(rt.store.append_audit, [audit.audit_record(
        CONSENT_REPLY, at=rt.clock.now(), actor=rt.actor, kind="Consent", name=inbound.sender,
        details={"keyword": keyword, "provider": inbound.provider, "status": status, "error": error,
                 "provider_message_id": sid, "text": text})])
    return "sent" if status == "sent" else "failed"


# ---------------------------------------------------------------- send time and provider errors


def send_time_check(audience: AudienceStore, rows: Sequence[OutboxRow]) -> tuple[list[OutboxRow], dict[str, list[OutboxRow]]]:
    """Split claimed rows into those that may go out and, by reason (opted_out, invalid_phone), those
    whose user may not be messaged any more. One query per 500 users."""
    refused_users = audience.unreachable(r.user_id for r in rows)
    keep: list[OutboxRow] = []
    refused: dict[str, list[OutboxRow]] = defaultdict(list)
    for row in rows:
        reason = refused_users.get(row.user_id)
        if reason is None:
            keep.append(row)
        else:
            refused[reason].append(row)
    return keep, dict(refused)


def opt_out_codes(state: DesiredState | None) -> Mapping[str, frozenset[str]]:
    return {kind: frozenset(codes) for kind, codes in settings_of(state).optOutErrorCodes.items()}


def is_opt_out_error(state: DesiredState | None, provider: str | None, code: str | None) -> bool:
    """Does this provider error code mean the recipient opted out (e.g. Twilio 21610)?"""
    if not provider or not code or state is None or provider not in state.providers:
        return False
    kind = state.providers[provider].spec.type
    return code in opt_out_codes(state).get(kind, frozenset())


def opt_out_from_errors(rt: Runtime, state: DesiredState | None,
                        failures: Iterable[tuple[str, str, str | None, str | None]]) -> list[ConsentChange]:
    """(user id, phone, provider, error code) of failed sends: users whose failure means "opted out"
    at the provider are opted out here too, so later campaigns skip them."""
    changes = []
    for user_id, phone, provider, code in failures:
        if is_opt_out_error(state, provider, code):
            changes.append(record_change(rt, phone=phone, opted_out=True, source="provider_error",
                                         message=f"{provider} error {code}", provider=provider,
                                         user_ids=[user_id]))
    return changes


# ---------------------------------------------------------------- export


def consent_ledger(store: StateStore, *, limit: int = 1_000_000) -> list[dict[str, Any]]:
    """Every recorded consent change, oldest first."""
    entries = store.query_audit(AuditQuery(actions=(CONSENT,), limit=limit))
    return [{"at": e.at.isoformat(), **{k: e.details.get(k) for k in
                                        ("phone", "users", "opted_out", "source", "message", "provider")}}
            for e in entries]


def current_optouts(ledger: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The latest change per phone (or user) that is an opt-out: who is opted out now, and why."""
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in ledger:
        key = entry.get("phone") or ",".join(entry.get("users") or [])
        latest[str(key)] = entry
    return [dict(entry) for entry in latest.values() if entry.get("opted_out")]


RECEIPT_RECIPIENT_FIELDS = ("To", "to", "msisdn", "mobile", "number", "phone")


def opt_out_from_receipt(rt: Runtime, state: DesiredState | None, provider: str, error_code: str | None,
                         raw: Mapping[str, str]) -> ConsentChange | None:
    """A delivery receipt whose error code means "opted out" opts its recipient out."""
    if not is_opt_out_error(state, provider, error_code):
        return None
    phone = next((normalize_phone(raw[k]) for k in RECEIPT_RECIPIENT_FIELDS if raw.get(k)), None)
    if phone is None:
        return None
    return record_change(rt, phone=phone, opted_out=True, source="provider_error",
                         message=f"{provider} receipt error {error_code}", provider=provider)
