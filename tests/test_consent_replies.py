"""Consent end to end on the in-process engine (FakeClock, SQLite, DuckDB, the mock provider):
a queued message of a user who texts STOP ends `skipped: opted_out` (audited); START brings them
back for the next campaign; HELP is answered through the same provider; a provider opt-out error
(Twilio 21610) opts the user out; keywords match only whole replies."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import campaign_yaml, engine_world, standard_files
from provider_callbacks import twilio_headers, twilio_inbound, twilio_status
from starlette.applications import Starlette

from reconciler import consent
from reconciler.demo import DEMO_SECRETS, DEMO_START, DemoWorld
from reconciler.http.inbound import inbound_routes
from reconciler.http.proxies import PublicUrl
from reconciler.models.settings import ConsentSettings
from reconciler.store.base import AuditQuery

PUBLIC = "https://public.example"
TOKEN = DEMO_SECRETS["TWILIO_AUTH_TOKEN"]


def _post_inbound(world: DemoWorld, form: dict[str, str], *, token: str = TOKEN) -> httpx.Response:
    rt = world.engine.rt
    app = Starlette(routes=inbound_routes(world.engine.state, rt, router=world.engine.router,
                                          public=PublicUrl(base=PUBLIC)))

    async def post() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8080") as client:
            return await client.post("/inbound/tw", data=form,
                                     headers=twilio_headers(token, f"{PUBLIC}/inbound/tw", form))

    return world.run(post)


def _mock_messages(world: DemoWorld, to: str) -> list[dict[str, Any]]:
    return list(httpx.get(f"{world.mock_url}/_mock/messages", params={"to": to}, timeout=10).json()["messages"])


def _queue(world: DemoWorld, name: str, at: Any) -> None:
    """Commit a campaign for `at`, apply it, and materialize its run without delivering."""
    from reconciler.demo import commit_all

    root = Path(world.repo.working_tree_dir or "")
    (root / "campaigns" / f"{name}.yaml").write_text(campaign_yaml(name, at, everyone=True))
    commit_all(world.repo, f"add {name}")
    world.engine.sync()
    world.clock.set(at)
    world.engine.tick()


def test_stop_while_queued_skips_start_resubscribes_help_answers(tmp_path: Path) -> None:
    with engine_world(tmp_path, standard_files(), population=6) as world:
        rt = world.engine.rt
        _queue(world, "first", DEMO_START + timedelta(minutes=10))
        queued = rt.store.list_outbox(campaign="first")
        assert len(queued) == 6 and all(r.status == "pending" for r in queued)
        victim = queued[0]

        answer = _post_inbound(world, twilio_inbound(victim.phone, "  Stop "))
        assert answer.status_code == 200 and "<Response>" in answer.text
        world.step(sync=False)

        rows = {r.user_id: r for r in rt.store.list_outbox(campaign="first")}
        assert rows[victim.user_id].status == "skipped" and rows[victim.user_id].skip_reason == "opted_out"
        assert sum(r.status == "sent" for r in rows.values()) == 5
        skips = rt.store.query_audit(AuditQuery(actions=("skip",), name="first"))
        assert any(e.details["reason"] == "opted_out" and victim.user_id in e.details["users"] for e in skips)
        ledger = consent.consent_ledger(rt.store)
        assert ledger[-1]["phone"] == victim.phone and ledger[-1]["opted_out"] is True
        assert ledger[-1]["source"] == "keyword" and ledger[-1]["users"] == [victim.user_id]
        texts = [m["body"] for m in _mock_messages(world, victim.phone)]
        assert texts == [ConsentSettings().replies["en"].stop]  # the confirmation, not the campaign

        _post_inbound(world, twilio_inbound(victim.phone, "START"))
        assert consent.current_optouts(consent.consent_ledger(rt.store)) == []
        _queue(world, "second", DEMO_START + timedelta(minutes=30))
        world.step(sync=False)
        second = {r.user_id: r for r in rt.store.list_outbox(campaign="second")}
        assert second[victim.user_id].status == "sent"

        before = len(_mock_messages(world, victim.phone))
        _post_inbound(world, twilio_inbound(victim.phone, "help"))
        after = _mock_messages(world, victim.phone)
        assert len(after) == before + 1 and after[-1]["body"] == ConsentSettings().replies["en"].help
        replies = rt.store.query_audit(AuditQuery(actions=("consent_reply",)))
        assert [e.details["keyword"] for e in replies] == ["stop", "start", "help"]
        assert all(e.details["status"] == "sent" for e in replies)

        for _ in range(3):  # a user (or another auto-responder) repeating HELP gets one answer per 10 min
            _post_inbound(world, twilio_inbound(victim.phone, "HELP"))
        assert len(_mock_messages(world, victim.phone)) == before + 1
        world.clock.set(world.clock.now() + consent.REPLY_COOLDOWN + timedelta(seconds=1))
        _post_inbound(world, twilio_inbound(victim.phone, "HELP"))
        assert len(_mock_messages(world, victim.phone)) == before + 2


def test_forged_inbound_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    with engine_world(tmp_path, standard_files(), population=3) as world:
        world.engine.sync()
        rt = world.engine.rt
        phone = next(iter(rt.audience.iter_members(None, DEMO_START)))[0].phone
        answer = _post_inbound(world, twilio_inbound(phone, "STOP"), token="not-the-auth-token")
        assert answer.status_code == 403
        assert consent.consent_ledger(rt.store) == []
        assert rt.audience.unreachable(rt.audience.users_by_phone(phone)) == {}


def test_provider_opt_out_error_in_a_receipt_opts_the_user_out(tmp_path: Path) -> None:
    """A Twilio status callback with ErrorCode 21610 ("unsubscribed recipient"), sent to the daemon's
    own app: the recipient is opted out (source provider_error) and the next campaign skips them."""
    from reconciler.daemon import Daemon, DaemonOptions

    with engine_world(tmp_path, standard_files(), population=4) as world:
        rt = world.engine.rt
        _queue(world, "first", DEMO_START + timedelta(minutes=10))
        world.step(sync=False)
        sent = [r for r in rt.store.list_outbox(campaign="first") if r.provider == "tw"]
        assert sent, "the group sends through Twilio first"
        victim = sent[0]
        app = Daemon(world.engine, DaemonOptions(public_base_url=PUBLIC)).app
        form = twilio_status(victim.provider_message_id or "", "failed", victim.phone, error_code="21610")

        async def post() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
                return await client.post("/receipts/tw", data=form,
                                         headers=twilio_headers(TOKEN, f"{PUBLIC}/receipts/tw", form))

        assert world.run(post).status_code == 204
        ledger = consent.consent_ledger(rt.store)
        assert [(e["phone"], e["source"], e["provider"], e["opted_out"]) for e in ledger] == [
            (victim.phone, "provider_error", "tw", True)]
        _queue(world, "second", DEMO_START + timedelta(minutes=30))
        world.step(sync=False)
        second = {r.user_id: r for r in rt.store.list_outbox(campaign="second")}
        assert victim.user_id not in second or second[victim.user_id].status == "skipped"
        assert sum(r.status == "sent" for r in second.values()) == 3


@pytest.mark.parametrize(("text", "family"), [
    ("STOP", "stop"), ("stop.", "stop"), (" Unsubscribe ", "stop"), ("quit", "stop"), ("StopAll", "stop"),
    ("start", "start"), ("UNSTOP", "start"), ("help", "help"), ("INFO!", "help"),
    ("please don't stop", None), ("stopping", None), ("", None), ("STOP STOP", None),
])
def test_keywords_match_whole_replies(text: str, family: str | None) -> None:
    assert consent.classify(text, ConsentSettings()) == family


def test_configured_keywords_and_language_replies() -> None:
    settings = ConsentSettings.model_validate({
        "stopKeywords": ["ARRET"], "replies": {"fr": {"help": "Répondez ARRET pour vous désabonner."}},
        "defaultLanguage": "fr"})
    assert consent.classify("arret", settings) == "stop" and consent.classify("STOP", settings) is None
    assert consent.reply_text(settings, "help", None) == "Répondez ARRET pour vous désabonner."
    assert consent.reply_text(settings, "help", "de").startswith("Répondez")


@pytest.mark.parametrize(("raw", "e164"), [
    ("+14155550101", "+14155550101"), ("14155550101", "+14155550101"), ("+1 (415) 555-0101", "+14155550101"),
    ("919876500001", "+919876500001"), ("", None), ("hello", None), ("+1", None),
])
def test_sender_numbers_normalized(raw: str, e164: str | None) -> None:
    assert consent.normalize_phone(raw) == e164


def test_national_numbers_with_a_trunk_zero_need_the_providers_region() -> None:
    assert consent.normalize_phone("09876543210", "IN") == "+919876543210"  # Exotel's shape
    assert consent.normalize_phone("+14155550101", "IN") == "+14155550101"
    assert consent.normalize_phone("919876543210", "IN") == "+919876543210"


def _text_via_mock(world: DemoWorld, sender: str, body: str, *, deliver: bool = True) -> dict[str, Any]:
    """The user texts our Twilio number: the mock applies Twilio's own opt-out handling and hands back
    the signed webhook Twilio would POST, which is delivered to Herald's /inbound/tw (unless not)."""
    made = httpx.post(f"{world.mock_url}/_mock/inbound", timeout=10, json={
        "from": sender, "to": "+14155550100", "body": body, "url": f"{PUBLIC}/inbound/tw", "auth_token": TOKEN})
    made.raise_for_status()
    hook = made.json()
    if deliver:
        app = Starlette(routes=inbound_routes(world.engine.state, world.engine.rt, router=world.engine.router,
                                              public=PublicUrl(base=PUBLIC)))

        async def post() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
                return await c.post("/inbound/tw", data=hook["form"], headers=hook["headers"])

        assert world.run(post).status_code == 200
    return dict(hook)


def test_stop_through_the_mocks_inbound_and_twilio_21610_at_send_time(tmp_path: Path) -> None:
    """The mock behaves like Twilio's default opt-out handling: after STOP it refuses sends to the
    number with 21610. A STOP whose webhook reaches Herald skips the queued message; one whose
    webhook never arrives is learnt from the 21610 of the next send (source provider_error)."""
    with engine_world(tmp_path, standard_files(), population=4) as world:
        rt = world.engine.rt
        _queue(world, "first", DEMO_START + timedelta(minutes=10))
        first, second = rt.store.list_outbox(campaign="first")[:2]
        hook = _text_via_mock(world, first.phone, "STOP")
        assert hook["form"]["OptOutType"] == "STOP" and hook["form"]["From"] == first.phone
        _text_via_mock(world, second.phone, "stop", deliver=False)  # webhook lost: Herald does not know
        world.step(sync=False)
        rows = {r.user_id: r for r in rt.store.list_outbox(campaign="first")}
        assert (rows[first.user_id].status, rows[first.user_id].skip_reason) == ("skipped", "opted_out")
        assert rows[second.user_id].status == "failed" and "21610" in (rows[second.user_id].last_error or "")
        sources = {(e["phone"], e["source"]) for e in consent.consent_ledger(rt.store)}
        assert sources == {(first.phone, "keyword"), (second.phone, "provider_error")}
        counted = rt.metrics.registry.get_sample_value  # the delivery worker's 21610 is counted too
        assert counted("herald_consent_changes_total", {"source": "provider_error", "change": "opt_out"}) == 1
        (stop_reply,) = rt.store.query_audit(AuditQuery(actions=("consent_reply",)))
        assert stop_reply.details["status"] == "failed"  # Twilio blocks our confirmation after its own STOP
        assert _mock_messages(world, first.phone) == [] and _mock_messages(world, second.phone) == []

        _queue(world, "second", DEMO_START + timedelta(minutes=30))
        world.step(sync=False)
        later = {r.user_id: r for r in rt.store.list_outbox(campaign="second")}
        assert first.user_id not in later and second.user_id not in later  # not even selected
        assert sum(r.status == "sent" for r in later.values()) == 2

        _text_via_mock(world, first.phone, "START")
        _queue(world, "third", DEMO_START + timedelta(minutes=50))
        world.step(sync=False)
        third = {r.user_id: r for r in rt.store.list_outbox(campaign="third")}
        assert third[first.user_id].status == "sent" and second.user_id not in third


def test_a_number_that_became_invalid_after_queueing_is_skipped(tmp_path: Path) -> None:
    from reconciler.audience.records import parse_user

    with engine_world(tmp_path, standard_files(), population=3) as world:
        rt = world.engine.rt
        _queue(world, "first", DEMO_START + timedelta(minutes=10))
        victim = rt.store.list_outbox(campaign="first")[0]
        rt.audience.upsert_users([parse_user({"id": victim.user_id, "phone": "+1 555"})], now=world.clock.now())
        world.step(sync=False)
        rows = {r.user_id: r for r in rt.store.list_outbox(campaign="first")}
        assert (rows[victim.user_id].status, rows[victim.user_id].skip_reason) == ("skipped", "invalid_phone")
        assert _mock_messages(world, victim.phone) == []
        assert sum(r.status == "sent" for r in rows.values()) == 2
