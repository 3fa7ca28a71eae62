"""Delivery receipt endpoints: signatures and tokens are checked, malformed callbacks refused, never 500."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from reconciler.clock import FakeClock
from reconciler.loading import DesiredState, load_paths
from reconciler.providers import receipt_token

ENV = {"TWILIO_AUTH_TOKEN": "twilio-receipt-token", "VONAGE_API_SECRET": "vonage-api-secret",
       "VONAGE_SIGNATURE_SECRET": "vonage-signature-secret", "MSG91_AUTH_KEY": "msg91-auth-key",
       "EXOTEL_API_TOKEN": "exotel-api-token", "NETCORE_PASSWORD": "netcore-password",
       "ACME_API_KEY": "acme-api-key", "DLT_GATEWAY_TOKEN": "dlt-gateway-token"}
BASE = "https://herald.example"


class Sink:
    def __init__(self, known: bool = True, broken: bool = False) -> None:
        self.calls: list[tuple[str, str, str, str | None, dict[str, str]]] = []
        self.known, self.broken = known, broken

    def record_receipt(self, provider: str, provider_message_id: str, status: str, error_code: str | None,
                       raw: Mapping[str, str]) -> bool:
        if self.broken:
            raise RuntimeError("database is down")
        self.calls.append((provider, provider_message_id, status, error_code, dict(raw)))
        return self.known


@pytest.fixture(scope="module")
def state(example_paths_module: list[Any]) -> DesiredState:
    return load_paths(example_paths_module).state


@pytest.fixture(scope="module")
def example_paths_module() -> list[Any]:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return [root / "providers", root / "campaigns"]


def client_for(state: DesiredState, sink: Sink, clock: FakeClock | None = None) -> TestClient:
    from reconciler.http.receipts import receipt_routes

    app = Starlette(routes=receipt_routes(state, sink, clock=clock, public_base_url=BASE, environ=ENV))
    return TestClient(app, base_url="http://internal:8080", raise_server_exceptions=False)


def token(state: DesiredState, name: str) -> str:
    value = receipt_token(state.providers[name], ENV)
    assert value
    return value


# -- Twilio ----------------------------------------------------------------------------------

def twilio_sign(url: str, params: dict[str, str], auth_token: str = ENV["TWILIO_AUTH_TOKEN"]) -> str:
    """Twilio's documented scheme, written out independently of the code under test."""
    payload = url
    for key in sorted(params):
        payload += key + params[key]
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


TWILIO_FORM = {"MessageSid": "SM1f0e8ae6ade43cb3c0ce4525424e404f", "MessageStatus": "undelivered",
               "ErrorCode": "30003", "AccountSid": "AC00000000000000000000000000000001", "To": "+14155550123"}


def test_twilio_genuine_callback_is_recorded(state: DesiredState) -> None:
    sink = Sink()
    signature = twilio_sign(f"{BASE}/receipts/twilio-us", TWILIO_FORM)
    answer = client_for(state, sink).post("/receipts/twilio-us", data=TWILIO_FORM,
                                          headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 204
    assert sink.calls == [("twilio-us", "SM1f0e8ae6ade43cb3c0ce4525424e404f", "undelivered", "30003", TWILIO_FORM)]


@pytest.mark.parametrize("forgery", ["wrong token", "tampered status", "other url", "missing"])
def test_twilio_forged_callbacks_get_403(state: DesiredState, forgery: str) -> None:
    sink = Sink()
    url, form, auth_token = f"{BASE}/receipts/twilio-us", dict(TWILIO_FORM), ENV["TWILIO_AUTH_TOKEN"]
    if forgery == "wrong token":
        auth_token = "guessed-token"
    if forgery == "other url":
        url = f"{BASE}/receipts/twilio-service"
    headers = {"X-Twilio-Signature": twilio_sign(url, form, auth_token)}
    if forgery == "tampered status":
        form["MessageStatus"] = "delivered"
    if forgery == "missing":
        headers = {}
    answer = client_for(state, sink).post("/receipts/twilio-us", data=form, headers=headers)
    assert answer.status_code == 403
    assert sink.calls == []


def test_twilio_signature_covers_the_query_string(state: DesiredState) -> None:
    sink = Sink()
    form = {"MessageSid": "SM1", "MessageStatus": "delivered"}
    signature = twilio_sign(f"{BASE}/receipts/twilio-us?run=42", form)
    client = client_for(state, sink)
    assert client.post("/receipts/twilio-us?run=42", data=form, headers={"X-Twilio-Signature": signature}).status_code == 204
    assert client.post("/receipts/twilio-us?run=43", data=form, headers={"X-Twilio-Signature": signature}).status_code == 403


def test_twilio_intermediate_status_is_acknowledged_without_recording(state: DesiredState) -> None:
    sink = Sink()
    form = {"MessageSid": "SM1", "MessageStatus": "queued"}
    answer = client_for(state, sink).post("/receipts/twilio-us", data=form,
                                          headers={"X-Twilio-Signature": twilio_sign(f"{BASE}/receipts/twilio-us", form)})
    assert answer.status_code == 204 and sink.calls == []


def test_twilio_signed_but_malformed_is_400(state: DesiredState) -> None:
    form = {"MessageStatus": "delivered"}
    answer = client_for(state, Sink()).post("/receipts/twilio-us", data=form,
                                            headers={"X-Twilio-Signature": twilio_sign(f"{BASE}/receipts/twilio-us", form)})
    assert answer.status_code == 400


# -- Vonage ----------------------------------------------------------------------------------

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def vonage_params(**extra: str) -> dict[str, str]:
    params = {"msisdn": "447911123456", "to": "Herald", "network-code": "23410", "messageId": "0A0000000123ABCD1",
              "price": "0.03330000", "status": "delivered", "scts": "2612010800", "err-code": "0",
              "api-key": "a1b2c3d4", "client-ref": "run-7f3a:user-42", "message-timestamp": "2026-12-01 08:00:00",
              "timestamp": str(int(NOW.timestamp())), "nonce": "6f1c1d1e-1a1b-4c4d-9e9f-0a0b0c0d0e0f"}
    params.update(extra)
    return params


def vonage_sign(params: dict[str, str], method: str = "md5hash") -> str:
    signed = "".join(f"&{k}={params[k].replace('&', '_').replace('=', '_')}" for k in sorted(params))
    secret = ENV["VONAGE_SIGNATURE_SECRET"]
    if method == "md5hash":
        return hashlib.md5((signed + secret).encode()).hexdigest()
    return hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest().upper()


@pytest.mark.parametrize("method", ["md5hash", "sha256"])
def test_vonage_signed_receipt_get_and_post_json(state: DesiredState, method: str) -> None:
    sink = Sink()
    client = client_for(state, sink, FakeClock(NOW))
    params = vonage_params()
    params["sig"] = vonage_sign(params, method)
    assert client.get("/receipts/vonage-global", params=params).status_code == 204
    failed = vonage_params(status="failed", **{"err-code": "6"})
    failed["sig"] = vonage_sign(failed, method)
    assert client.post("/receipts/vonage-global", content=json.dumps(failed),
                       headers={"content-type": "application/json"}).status_code == 204
    assert [(c[1], c[2], c[3]) for c in sink.calls] == [("0A0000000123ABCD1", "delivered", None),
                                                        ("0A0000000123ABCD1", "failed", "6")]


@pytest.mark.parametrize("forgery", ["missing sig", "tampered", "stale"])
def test_vonage_forged_receipts_get_403(state: DesiredState, forgery: str) -> None:
    sink = Sink()
    params = vonage_params()
    if forgery == "stale":
        params["timestamp"] = str(int(NOW.timestamp()) - 3600)
    params["sig"] = vonage_sign(params)
    if forgery == "tampered":
        params["status"] = "failed"
    if forgery == "missing sig":
        del params["sig"]
    answer = client_for(state, sink, FakeClock(NOW)).get("/receipts/vonage-global", params=params)
    assert answer.status_code == 403 and sink.calls == []


# -- unsigned providers: per-provider token in the callback URL ------------------------------

def test_exotel_status_callback_with_token(state: DesiredState) -> None:
    sink = Sink(known=False)
    form = {"SmsSid": "b6cf1e4bd4a1a2c7d2e6f2c9b6b91a31", "To": "+919876543210", "Status": "failed",
            "DetailedStatus": "FAILED_DLT", "DetailedStatusCode": "30003", "CustomField": "run-7f3a:user-43"}
    client = client_for(state, sink)
    good = client.post(f"/receipts/exotel-in?token={token(state, 'exotel-in')}", data=form)
    assert good.status_code == 200, "unknown message ids are still acknowledged"
    assert sink.calls[0][1:4] == ("b6cf1e4bd4a1a2c7d2e6f2c9b6b91a31", "failed", "30003")
    assert "token" not in sink.calls[0][4]
    assert client.post("/receipts/exotel-in?token=guess", data=form).status_code == 403
    assert client.post("/receipts/exotel-in", data=form).status_code == 403
    assert client.post(f"/receipts/exotel-in?token={token(state, 'msg91-in')}", data=form).status_code == 403


def test_msg91_v3_json_and_v2_form_reports(state: DesiredState) -> None:
    sink = Sink()
    client = client_for(state, sink)
    url = f"/receipts/msg91-in?token={token(state, 'msg91-in')}"
    v3 = {"date": "2026-12-01 08:00:05", "number": "919876543210", "senderId": "HERALD",
          "requestId": "3763646c3058373530393938", "status": "1", "desc": "DELIVERED"}
    assert client.post(url, content=json.dumps(v3), headers={"content-type": "application/json"}).status_code == 200
    v2 = [{"senderId": "HERALD", "requestId": "3763646c3058373530393939", "report": [
        {"date": "2026-12-01 08:00:05", "number": "919876543211", "status": "2", "desc": "FAILED",
         "failedReason": "Number in DND"}]}]
    assert client.post(url, data={"data": json.dumps(v2)}).status_code == 200
    assert [(c[1], c[2], c[3]) for c in sink.calls] == [("3763646c3058373530393938", "delivered", None),
                                                        ("3763646c3058373530393939", "failed", "Number in DND")]
    assert client.post(url, data={"data": "{not json"}).status_code == 400


def test_netcore_and_generic_receipts(state: DesiredState) -> None:
    sink = Sink()
    client = client_for(state, sink)
    assert client.get("/receipts/netcore-in", params={"token": token(state, "netcore-in"), "TID": "81234567890",
                                                      "STATUS": "DELIVRD"}).status_code == 200
    assert client.post(f"/receipts/acme-sms?token={token(state, 'acme-sms')}",
                       content=json.dumps({"message_id": "msg_01HZX", "status": "undelivered", "error_code": "EXPIRED"}),
                       headers={"content-type": "application/json"}).status_code == 200
    assert [(c[0], c[1], c[2], c[3]) for c in sink.calls] == [("netcore-in", "81234567890", "delivered", None),
                                                             ("acme-sms", "msg_01HZX", "undelivered", "EXPIRED")]
    bad = client.post(f"/receipts/acme-sms?token={token(state, 'acme-sms')}", data={"status": "delivered"})
    assert bad.status_code == 400
    weird = client.post(f"/receipts/acme-sms?token={token(state, 'acme-sms')}", data={"id": "1", "status": "teleported"})
    assert weird.status_code == 400


def test_unknown_provider_is_404_and_broken_sink_is_503(state: DesiredState) -> None:
    assert client_for(state, Sink()).post("/receipts/nope", data={}).status_code == 404
    form = {"SmsSid": "x", "Status": "delivered"}
    answer = client_for(state, Sink(broken=True)).post(f"/receipts/exotel-in?token={token(state, 'exotel-in')}",
                                                       data=form)
    assert answer.status_code == 503
    assert "database" not in answer.text


def test_tokens_differ_per_provider_and_follow_the_receipt_secret(state: DesiredState) -> None:
    tokens = {name: receipt_token(provider, ENV) for name, provider in state.providers.items()}
    assert len(set(tokens.values())) == len(tokens)
    rotated = receipt_token(state.providers["exotel-in"], {**ENV, "HERALD_RECEIPT_SECRET": "another-secret"})
    assert rotated != tokens["exotel-in"]


def test_garbage_never_causes_500(state: DesiredState) -> None:
    client = client_for(state, Sink(), FakeClock(NOW))
    bodies = [b"\xff\xfe\x00", b"{", b"[1,2,3]", b"a=b&&&===", b"data=%ZZ"]
    for name in state.providers:
        for body in bodies:
            for content_type in ("application/json", "application/x-www-form-urlencoded"):
                answer = client.post(f"/receipts/{name}?token=x", content=body, headers={"content-type": content_type})
                assert answer.status_code in (400, 403), (name, body, answer.status_code)
