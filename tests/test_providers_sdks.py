"""The mock provider against the official `twilio` and `vonage` Python SDKs: what they send is
accepted, what they model is answered (create, fetch, error codes), errors raise the SDKs' own
exceptions with the real codes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from reconciler.providers.mock_server import MockState, running_mock_server

twilio_rest = pytest.importorskip("twilio.rest")
twilio_base = pytest.importorskip("twilio.base.exceptions")
vonage = pytest.importorskip("vonage")
vonage_sms = pytest.importorskip("vonage_sms")

ACCOUNT = "AC00000000000000000000000000000001"


@pytest.fixture(scope="module")
def mock() -> Iterator[tuple[str, MockState]]:
    state = MockState(seed=5)
    with running_mock_server(state) as url:
        yield url, state


def _twilio(url: str) -> Any:
    client = twilio_rest.Client(ACCOUNT, "auth-token-1")
    client.api.base_url = f"{url}/twilio"
    return client


def test_twilio_sdk_creates_and_fetches_with_every_modelled_field(mock: tuple[str, MockState]) -> None:
    url, state = mock
    client = _twilio(url)
    created = client.messages.create(to="+14155550123", from_="+14155550100", body="hello from the SDK",
                                      status_callback="https://public.example/receipts/tw")
    assert created.sid.startswith("SM") and created.status == "queued" and created.direction == "outbound-api"
    assert created.date_created is not None and created.date_updated is not None and created.date_sent is None
    assert (created.num_media, created.num_segments, created.price_unit) == ("0", "1", "USD")
    assert set(created.subresource_uris) == {"media", "feedback"}
    fetched = client.messages(created.sid).fetch()
    assert (fetched.sid, fetched.to, fetched.from_, fetched.body) == (
        created.sid, "+14155550123", "+14155550100", "hello from the SDK")
    assert fetched.account_sid == ACCOUNT and fetched.uri.endswith(f"/Messages/{created.sid}.json")
    sent = [m for m in state.query("twilio") if m.provider_message_id == created.sid]
    assert sent[0].fields["StatusCallback"] == "https://public.example/receipts/tw"


def test_twilio_sdk_sees_the_real_error_codes(mock: tuple[str, MockState]) -> None:
    url, _ = mock
    client = _twilio(url)
    with pytest.raises(twilio_base.TwilioRestException) as invalid:
        client.messages.create(to="not-a-number", from_="+14155550100", body="x")
    assert (invalid.value.status, invalid.value.code) == (400, 21211)
    with pytest.raises(twilio_base.TwilioRestException) as missing:
        client.messages("SM" + "0" * 32).fetch()
    assert (missing.value.status, missing.value.code) == (404, 20404)
    other_account = twilio_rest.Client("AC" + "2" * 32, "auth-token-2")
    other_account.api.base_url = f"{url}/twilio"
    mine = client.messages.create(to="+14155550124", from_="+14155550100", body="mine")
    with pytest.raises(twilio_base.TwilioRestException):
        other_account.messages(mine.sid).fetch()


class _ToMock(HTTPAdapter):
    """The SDK always calls https://rest.nexmo.com; send its exact request to the mock instead."""

    def __init__(self, base: str) -> None:
        super().__init__()
        self.base = base

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        assert request.url is not None and request.url.startswith("https://rest.nexmo.com/")
        request.url = f"{self.base}/vonage/" + request.url.removeprefix("https://rest.nexmo.com/")
        return super().send(request, **kwargs)


def _vonage(url: str) -> Any:
    client = vonage.Vonage(vonage.Auth(api_key="a1b2c3d4", api_secret="vonage-secret-1"))
    client.sms.http_client._session.mount("https://", _ToMock(url))
    return client


def test_vonage_sdk_default_request_basic_auth_is_accepted(mock: tuple[str, MockState]) -> None:
    url, state = mock
    client = _vonage(url)
    response = client.sms.send(vonage_sms.SmsMessage(to="447700900001", from_="Herald", text="hello vonage",
                                                     client_ref="herald-1"))
    (message,) = response.messages
    assert message.status == "0" and message.to == "447700900001" and message.client_ref == "herald-1"
    assert message.message_price is not None and message.network is not None
    recorded = [m for m in state.query("vonage") if m.provider_message_id == message.message_id]
    assert recorded[0].to == "+447700900001" and recorded[0].fields["api_secret"] == "***"


def test_vonage_sdk_sees_the_real_error_status(mock: tuple[str, MockState]) -> None:
    url, _ = mock
    client = _vonage(url)
    with pytest.raises(vonage_sms.SmsError) as invalid:
        client.sms.send(vonage_sms.SmsMessage(to="+447700900001", from_="Herald", text="x"))
    assert "Invalid to" in str(invalid.value)
