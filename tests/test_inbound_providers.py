"""/inbound/{provider} for every provider type, in each provider's real shape and signed the way it
signs (Twilio by the official RequestValidator, Vonage by the official SDK's signer), or with the
receipt token; POST /v1/consent; default status callbacks from the public URL."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from provider_callbacks import twilio_headers, twilio_inbound
from starlette.applications import Starlette
from starlette.testclient import TestClient

from reconciler import consent
from reconciler.audience.records import parse_user
from reconciler.audience.store import open_audience_store
from reconciler.clock import FakeClock
from reconciler.config import RuntimeConfig
from reconciler.http.inbound import inbound_routes
from reconciler.http.proxies import PublicUrl
from reconciler.loading import DesiredState, load_paths
from reconciler.providers.base import OutboundMessage
from reconciler.providers.registry import build_adapter, receipt_token
from reconciler.runtime import Runtime
from reconciler.store import open_state_store

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {"TWILIO_AUTH_TOKEN": "tok-twilio-1", "VONAGE_API_SECRET": "tok-vonage-1", "VONAGE_SIGNATURE_SECRET": "tok-vsig-1",
           "MSG91_AUTH_KEY": "tok-msg91-1", "EXOTEL_API_TOKEN": "tok-exotel-1", "NETCORE_PASSWORD": "tok-netcore-1",
           "ACME_API_KEY": "tok-acme-1", "DLT_GATEWAY_TOKEN": "tok-dlt-1"}
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ADMIN = "admin-token-consent-1"
PUBLIC = "https://herald.example"
PHONES = {"u-us": "+14155550123", "u-in": "+919876543210", "u-uk": "+447700900123"}


@dataclass
class World:
    client: TestClient
    rt: Runtime
    state: DesiredState

    def opted_out(self, user: str) -> bool:
        return self.rt.audience.unreachable([user]) == {user: "opted_out"}

    def token(self, provider: str) -> str:
        return receipt_token(self.state.providers[provider]) or ""


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    state = load_paths([str(ROOT / "providers"), str(ROOT / "campaigns")]).state
    clock = FakeClock(NOW)
    store = open_state_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock)
    audience = open_audience_store("duckdb:///:memory:")
    audience.upsert_users([parse_user({"id": u, "phone": p}) for u, p in PHONES.items()], now=NOW)
    rt = Runtime(store=store, audience=audience, clock=clock, config=RuntimeConfig(admin_token=ADMIN))
    app = Starlette(routes=inbound_routes(state, rt, public=PublicUrl(base=PUBLIC)))
    try:
        yield World(TestClient(app), rt, state)
    finally:
        store.close()
        audience.close()


def test_vonage_inbound_signed_by_the_official_sdk(world: World) -> None:
    from vonage_http_client.auth import Auth

    signer = Auth(api_key="a1b2c3d4", signature_secret=SECRETS["VONAGE_SIGNATURE_SECRET"], signature_method="sha256")
    params = {"msisdn": "447700900123", "to": "447700900000", "messageId": "0A0000000123ABCD1", "text": "Stop",
              "type": "text", "keyword": "STOP", "api-key": "a1b2c3d4", "message-timestamp": "2026-06-01 12:00:00",
              "timestamp": str(int(NOW.timestamp())), "nonce": "2b7a3f1e"}
    signed = {**params, "sig": signer.sign_params(dict(params))}
    tampered = {**signed, "msisdn": "14155550123"}
    assert world.client.post("/inbound/vonage-global", data=tampered).status_code == 403
    assert not world.opted_out("u-us")
    answer = world.client.post("/inbound/vonage-global", data=signed)
    assert answer.status_code == 204 and world.opted_out("u-uk")
    (entry,) = consent.consent_ledger(world.rt.store)
    assert (entry["phone"], entry["source"], entry["provider"], entry["message"]) == (
        "+447700900123", "keyword", "vonage-global", "Stop")


@pytest.mark.parametrize(("provider", "fields"), [
    ("exotel-in", {"SmsSid": "b6f3c1", "From": "09876543210", "To": "08039591111", "Body": "STOP"}),
    ("msg91-in", {"sender": "919876543210", "message": "stop", "keyword": "STOP", "inNumber": "9221", "requestId": "r1"}),
    ("netcore-in", {"mobile": "919876543210", "message": "UNSUBSCRIBE", "longcode": "9222"}),
    ("acme-sms", {"from": "+919876543210", "text": "Quit", "id": "in-1"}),
])
def test_token_providers_inbound_opt_out(world: World, provider: str, fields: dict[str, str]) -> None:
    assert world.client.post(f"/inbound/{provider}", data=fields).status_code == 403  # no token
    assert world.client.post(f"/inbound/{provider}?token=wrong", data=fields).status_code == 403
    assert not world.opted_out("u-in")
    answer = world.client.post(f"/inbound/{provider}?token={world.token(provider)}", data=fields)
    assert answer.status_code == 200 and world.opted_out("u-in")
    assert consent.current_optouts(consent.consent_ledger(world.rt.store))[0]["provider"] == provider


def test_twilio_advanced_opt_out_type_and_start(world: World) -> None:
    url = f"{PUBLIC}/inbound/twilio-us"
    stop = {**twilio_inbound(PHONES["u-us"], "arrête"), "OptOutType": "STOP"}
    assert world.client.post("/inbound/twilio-us", data=stop,
                             headers=twilio_headers(SECRETS["TWILIO_AUTH_TOKEN"], url, stop)).status_code == 200
    assert world.opted_out("u-us")
    start = twilio_inbound(PHONES["u-us"], "start")
    assert world.client.post("/inbound/twilio-us", data=start,
                             headers=twilio_headers(SECRETS["TWILIO_AUTH_TOKEN"], url, start)).status_code == 200
    assert not world.opted_out("u-us")
    chat = twilio_inbound(PHONES["u-us"], "stop sending me coupons please")
    world.client.post("/inbound/twilio-us", data=chat, headers=twilio_headers(SECRETS["TWILIO_AUTH_TOKEN"], url, chat))
    assert not world.opted_out("u-us") and len(consent.consent_ledger(world.rt.store)) == 2


def test_malformed_and_unknown_are_4xx(world: World) -> None:
    token = world.token("exotel-in")
    assert world.client.post(f"/inbound/exotel-in?token={token}", data={"Body": "STOP"}).status_code == 400
    assert world.client.post(f"/inbound/exotel-in?token={token}",
                             data={"From": "not a number", "Body": "STOP"}).status_code == 400
    assert world.client.post(f"/inbound/exotel-in?token={token}", content=b"\xff\xfe",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 400
    assert world.client.post("/inbound/nobody", data={"From": "+14155550123"}).status_code == 404


def test_consent_api(world: World) -> None:
    body = {"user_id": "u-uk", "opted_out": True, "message": "asked by phone call"}
    assert world.client.post("/v1/consent", json=body).status_code == 401
    assert world.client.post("/v1/consent", json={"opted_out": True},
                             headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 400
    answer = world.client.post("/v1/consent", json=body, headers={"Authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200 and world.opted_out("u-uk")
    assert consent.consent_ledger(world.rt.store)[-1]["source"] == "api"
    back = {"phone": "+447700900123", "opted_out": False}
    assert world.client.post("/v1/consent", json=back, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert not world.opted_out("u-uk")


def _counted(world: World, source: str, change: str) -> float:
    return world.rt.metrics.registry.get_sample_value("herald_consent_changes_total",
                                                      {"source": source, "change": change}) or 0.0


def test_consent_changes_are_counted_by_source_and_change(world: World) -> None:
    """herald_consent_changes_total{source,change}: keyword replies, the API, provider error codes."""
    url = f"{PUBLIC}/inbound/twilio-us"
    for text in ("STOP", "stop sending me coupons please", "START"):
        form = twilio_inbound(PHONES["u-us"], text)
        assert world.client.post("/inbound/twilio-us", data=form,
                                 headers=twilio_headers(SECRETS["TWILIO_AUTH_TOKEN"], url, form)).status_code == 200
    assert (_counted(world, "keyword", "opt_out"), _counted(world, "keyword", "opt_in")) == (1, 1)
    body = {"user_id": "u-uk", "opted_out": True}
    assert world.client.post("/v1/consent", json=body, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    assert (_counted(world, "api", "opt_out"), _counted(world, "api", "opt_in")) == (1, 0)
    assert consent.opt_out_from_receipt(world.rt, world.state, "twilio-us", "30003", {"To": PHONES["u-in"]}) is None
    assert consent.opt_out_from_receipt(world.rt, world.state, "twilio-us", "21610", {"To": PHONES["u-in"]})
    assert _counted(world, "provider_error", "opt_out") == 1 and world.opted_out("u-in")
    rendered = world.rt.metrics.render().decode()
    assert 'herald_consent_changes_total{change="opt_out",source="keyword"} 1.0' in rendered
    assert len(consent.consent_ledger(world.rt.store)) == 4  # one count per recorded change


@pytest.mark.parametrize(("provider", "field", "expected"), [
    ("twilio-us", "StatusCallback", f"{PUBLIC}/receipts/twilio-us"),
    ("vonage-global", "callback", f"{PUBLIC}/receipts/vonage-global"),  # signs its callbacks: no token
    ("exotel-in", "StatusCallback", f"{PUBLIC}/receipts/exotel-in?token="),
])
def test_public_url_gives_each_send_its_status_callback(world: World, provider: str, field: str,
                                                        expected: str) -> None:
    async def request() -> httpx.Request:
        async with httpx.AsyncClient() as client:
            adapter = build_adapter(world.state.providers[provider], client, RuntimeConfig(public_url=PUBLIC))
            return adapter.build_request([OutboundMessage("k1", "+919876543210", "hello")])

    sent = asyncio.run(request())
    form = {k: v[0] for k, v in parse_qs(sent.content.decode()).items()}
    assert form[field].startswith(expected)
    without = asyncio.run(_without_public(world, provider))
    assert field not in without or not without[field].startswith(PUBLIC)


async def _without_public(world: World, provider: str) -> dict[str, str]:
    async with httpx.AsyncClient() as client:
        adapter = build_adapter(world.state.providers[provider], client, RuntimeConfig())
        sent = adapter.build_request([OutboundMessage("k1", "+919876543210", "hello")])
    return {k: v[0] for k, v in parse_qs(sent.content.decode()).items()}


def test_opt_outs_arriving_with_user_records_are_audited_as_ingest(world: World) -> None:
    """POST /v1/users with opted_out / subscribed: only real changes are recorded (source ingest)."""
    from reconciler.http.events import event_routes

    async def on_consent(changes: list[tuple[str, str | None, bool]]) -> None:
        await asyncio.to_thread(consent.record_ingested, world.rt, changes)

    app = Starlette(routes=event_routes(world.rt.audience, token=ADMIN, clock=world.rt.clock, on_consent=on_consent))
    client, auth = TestClient(app), {"Authorization": f"Bearer {ADMIN}"}
    users = [{"id": "u-us", "opted_out": True}, {"id": "u-in", "subscribed": True},  # u-in: no change
             {"id": "u-new", "phone": "+14155550199", "opted_out": True}, {"id": "u-new2", "phone": "+14155550198"}]
    assert client.post("/v1/users", json=users, headers=auth).status_code == 202
    ledger = consent.consent_ledger(world.rt.store)
    assert sorted((e["users"][0], e["phone"], e["opted_out"], e["source"]) for e in ledger) == [
        ("u-new", "+14155550199", True, "ingest"), ("u-us", "+14155550123", True, "ingest")]
    assert world.opted_out("u-us") and world.opted_out("u-new")
    assert _counted(world, "ingest", "opt_out") == 2
    assert client.post("/v1/users", json=[{"id": "u-us", "opted_out": True}], headers=auth).status_code == 202
    assert len(consent.consent_ledger(world.rt.store)) == 2  # the same value again is no change
    assert client.post("/v1/users", json=[{"id": "u-us", "subscribed": True}], headers=auth).status_code == 202
    assert consent.consent_ledger(world.rt.store)[-1]["opted_out"] is False


def test_twilio_shared_key_signs_hmac_sha256_callbacks(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """With webhookSigningKey, a callback carrying X-Twilio-Webhooks-Signature-Settings is checked with
    the SharedKey secret (HMAC-SHA256); without the header only the auth token verifies."""
    from reconciler.models.common import Secret

    monkeypatch.setenv("TWILIO_SHARED_KEY", "shared-key-secret-3")
    provider = world.state.providers["twilio-us"]
    key = Secret.model_validate({"secretRef": {"env": "TWILIO_SHARED_KEY"}})
    world.state.providers["twilio-us"] = provider.model_copy(
        update={"spec": provider.spec.model_copy(update={"webhookSigningKey": key})})
    url, form = f"{PUBLIC}/inbound/twilio-us", twilio_inbound(PHONES["u-us"], "STOP")
    shared = twilio_headers("shared-key-secret-3", url, form, algorithm="HMAC_SHA256")
    without_settings = {k: v for k, v in shared.items() if k != "X-Twilio-Webhooks-Signature-Settings"}
    assert world.client.post("/inbound/twilio-us", data=form, headers=without_settings).status_code == 403
    assert not world.opted_out("u-us")
    assert world.client.post("/inbound/twilio-us", data=form, headers=shared).status_code == 200
    assert world.opted_out("u-us")
