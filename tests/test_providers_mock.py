"""The mock provider server itself (realistic by default, dedupe on request, faults, abandoned requests,
lookups in the providers' real shapes, queries) and the CLI commands."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from reconciler.cli import main
from reconciler.clock import FakeClock
from reconciler.providers.mock_server import MockState, running_mock_server

ROOT = Path(__file__).resolve().parent.parent
TWILIO_PATH = "/twilio/2010-04-01/Accounts/AC1/Messages.json"
TWILIO_FORM = {"To": "+14155550123", "From": "+14155550100", "Body": "hello"}
AUTH = {"Authorization": "Basic eDp5"}
SECRETS = {"TWILIO_AUTH_TOKEN": "tok-twilio-1", "VONAGE_API_SECRET": "tok-vonage-1", "VONAGE_SIGNATURE_SECRET": "tok-vsig-1",
           "MSG91_AUTH_KEY": "tok-msg91-1", "EXOTEL_API_TOKEN": "tok-exotel-1", "NETCORE_PASSWORD": "tok-netcore-1",
           "ACME_API_KEY": "tok-acme-1", "DLT_GATEWAY_TOKEN": "tok-dlt-1"}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, MockState]]:
    state = MockState(seed=3)
    with running_mock_server(state) as url:
        yield url, state


@pytest.fixture
def mock(server: tuple[str, MockState]) -> Iterator[tuple[str, MockState]]:
    url, state = server
    httpx.post(f"{url}/_mock/reset").raise_for_status()
    yield url, state


@pytest.fixture
def idempotent(mock: tuple[str, MockState]) -> Iterator[tuple[str, MockState]]:
    """The mock in its deduplicating, request-dropping mode (the idempotent-provider case)."""
    url, state = mock
    httpx.post(f"{url}/_mock/mode", json={"dedupe": True, "finish_abandoned": False}).raise_for_status()
    try:
        yield url, state
    finally:
        httpx.post(f"{url}/_mock/mode", json={"dedupe": False, "finish_abandoned": True}).raise_for_status()


def test_by_default_a_repeated_idempotency_key_is_a_second_message(mock) -> None:
    url, state = mock
    first = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers={**AUTH, "Idempotency-Key": "k-1"})
    again = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers={**AUTH, "Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 201
    assert first.json()["sid"] != again.json()["sid"]  # like Twilio: no deduplication
    assert [m.idempotency_key for m in state.query("twilio")] == ["k-1", "k-1"]
    assert httpx.get(f"{url}/_mock/stats").json()["providers"]["twilio"] == {"requests": 2, "messages": 2}


def test_by_default_a_client_that_gives_up_still_gets_its_message_sent(mock) -> None:
    url, state = mock
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "latency_ms": 400})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH, timeout=0.1)
    assert asyncio.run(_wait_for(lambda: len(state.query("twilio")) == 1, attempts=300)), "the late request was finished"
    stats = httpx.get(f"{url}/_mock/stats").json()["providers"]["twilio"]
    assert stats["abandoned"] == stats["late"] == stats["messages"] == 1


def test_duplicate_idempotency_key_replays_the_first_answer(idempotent) -> None:
    url, _ = idempotent
    first = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers={**AUTH, "Idempotency-Key": "k-1"})
    again = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers={**AUTH, "Idempotency-Key": "k-1"})
    other = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers={**AUTH, "Idempotency-Key": "k-2"})
    assert first.status_code == again.status_code == 201
    assert first.json()["sid"] == again.json()["sid"] != other.json()["sid"]
    stats = httpx.get(f"{url}/_mock/stats").json()
    assert stats["providers"]["twilio"] == {"requests": 3, "messages": 2, "duplicates": 1}
    listed = httpx.get(f"{url}/_mock/messages", params={"provider": "twilio"}).json()
    assert listed["count"] == 2
    assert {m["idempotency_key"] for m in listed["messages"]} == {"k-1", "k-2"}
    assert all(m["fields"]["Body"] == "hello" and m["received_at"] > 0 for m in listed["messages"])


def test_provider_validation_errors_use_the_provider_format(mock) -> None:
    url, _ = mock
    bad = httpx.post(url + TWILIO_PATH, data={**TWILIO_FORM, "To": "12"}, headers=AUTH)
    assert bad.status_code == 400 and bad.json()["code"] == 21211
    assert httpx.post(url + TWILIO_PATH, data=TWILIO_FORM).status_code == 401
    vonage = httpx.post(f"{url}/vonage/sms/json", data={"api_key": "k"}).json()
    assert vonage["messages"][0]["status"] == "2"
    netcore = httpx.post(f"{url}/netcore/BulkSms/SingleMsgApi", data={"feedid": "1"})
    assert "<REQUEST-ERROR>" in netcore.text


def test_faults_rate_limit_times_and_clear(mock) -> None:
    url, _ = mock
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "rate_limited": True, "retry_after": 2, "times": 2})
    answers = [httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH) for _ in range(3)]
    assert [a.status_code for a in answers] == [429, 429, 201]
    assert answers[0].headers["retry-after"] == "2"
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "error_rate": 1.0})
    assert httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH).status_code == 500
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "clear": True})
    assert httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH).status_code == 201
    assert httpx.post(f"{url}/_mock/faults", content=b"not json").status_code == 400


def test_malformed_answer_is_still_a_delivery(mock) -> None:
    url, state = mock
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "malformed": True})
    answer = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH)
    assert answer.status_code == 200 and not answer.text.startswith("{")
    assert len(state.query("twilio")) == 1


def test_client_that_gives_up_is_not_recorded_as_delivered(idempotent) -> None:
    url, state = idempotent
    httpx.post(f"{url}/_mock/faults", json={"provider": "twilio", "latency_ms": 800})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH, timeout=0.15)
    stats = httpx.get(f"{url}/_mock/stats").json()["providers"]["twilio"]
    deadline = asyncio.run(_wait_for(lambda: httpx.get(f"{url}/_mock/stats").json()["providers"]["twilio"]
                                     .get("abandoned") == 1))
    assert deadline, stats
    assert state.query("twilio") == []
    slow_but_patient = httpx.post(url + TWILIO_PATH, data=TWILIO_FORM, headers=AUTH, timeout=5)
    assert slow_but_patient.status_code == 201 and len(state.query("twilio")) == 1


async def _wait_for(condition, attempts: int = 200) -> bool:
    """The mock notices the hang-up within its 5 ms polling step; poll its stats, bounded."""
    for _ in range(attempts):
        if condition():
            return True
        await asyncio.sleep(0.01)
    return False


def test_generic_batched_request_records_each_recipient(mock) -> None:
    url, state = mock
    payload = {"sender": "HERALD", "messages": [{"to": "+14155550120", "text": "a"}, {"to": "+14155550121", "text": "b"}]}
    answer = httpx.post(f"{url}/generic_http/acme-sms-bulk/v2/batch", json=payload, headers={"Idempotency-Key": "b1"})
    assert answer.status_code == 200 and len(answer.json()["messages"]) == 2
    recorded = state.query("acme-sms-bulk")
    assert [(m.to, m.body, m.fields["sender"]) for m in recorded] == [("+14155550120", "a", "HERALD"),
                                                                      ("+14155550121", "b", "HERALD")]
    assert state.query("generic_http") == recorded


def test_cli_test_send_through_the_mock(mock, monkeypatch: pytest.MonkeyPatch) -> None:
    url, state = mock
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HERALD_PROVIDER_BASE_URL", url)
    runner = CliRunner()
    paths = [str(ROOT / "providers"), str(ROOT / "campaigns")]
    ok = runner.invoke(main, ["test-send", "--to", "+14155550123", "--body", "Hi 😀", *paths])
    assert ok.exit_code == 0, ok.output
    assert "provider:    twilio-us" in ok.output and "UCS-2" in ok.output and "segments:    1" in ok.output
    (recorded,) = state.query("twilio")
    assert recorded.provider_message_id in ok.output
    via = runner.invoke(main, ["test-send", "--provider", "msg91-in", "--to", "+919876543210", "--body", "x",
                               "--template-id", "1107160000000000001", "--var", "Ada", *paths])
    assert via.exit_code == 0, via.output
    assert "provider:    msg91-in" in via.output

    httpx.post(f"{url}/_mock/faults", json={"provider": "exotel", "error_rate": 1.0, "status": 401})
    failed = runner.invoke(main, ["test-send", "--provider", "exotel-in", "--to", "+919876543210", "--body", "x",
                                  *paths])
    assert failed.exit_code == 1
    assert "HTTP 401" in failed.output
    assert all(secret not in failed.output for secret in SECRETS.values())
    invalid = runner.invoke(main, ["test-send", "--to", "+1234", "--body", "x", *paths])
    assert invalid.exit_code == 1 and "not a valid phone number" in invalid.output
    usage = runner.invoke(main, ["test-send", "--provider", "nope", "--to", "+14155550123", "--body", "x", *paths])
    assert usage.exit_code == 2


def test_cli_mock_provider_help() -> None:
    result = CliRunner().invoke(main, ["mock-provider", "--help"])
    assert result.exit_code == 0 and "--port" in result.output


def test_cli_receipt_urls_prints_tokens_that_the_receipt_routes_accept(monkeypatch: pytest.MonkeyPatch) -> None:
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from reconciler.http.receipts import receipt_routes
    from reconciler.loading import load_paths

    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    paths = [str(ROOT / "providers"), str(ROOT / "campaigns")]
    result = CliRunner().invoke(main, ["receipt-urls", "--base-url", "https://herald.example/", *paths])
    assert result.exit_code == 0, result.output
    lines = dict(line.split("\t", 1) for line in result.output.strip().splitlines())
    assert lines["twilio-us"].endswith("(signed by the provider)")
    exotel_url = lines["exotel-in"]
    assert exotel_url.startswith("https://herald.example/receipts/exotel-in?token=")

    class Sink:
        def record_receipt(self, *args: object) -> bool:
            return True

    app = Starlette(routes=receipt_routes(load_paths(paths).state, Sink()))
    path = exotel_url.removeprefix("https://herald.example")
    answer = TestClient(app).post(path, data={"SmsSid": "s1", "Status": "delivered"})
    assert answer.status_code == 200


def test_twilio_message_list_reads_with_the_official_sdk_after_the_visibility_delay(mock) -> None:
    """GET …/Messages.json in Twilio's real shape: the twilio SDK pages through it and models every
    field; a message shows only once the configured visibility delay has passed."""
    twilio_rest = pytest.importorskip("twilio.rest")
    url, state = mock
    clock = FakeClock(datetime(2026, 12, 1, 12, 0, tzinfo=UTC))  # visibility follows the mock's clock, not load
    real_clock, state.clock = state.clock, lambda: clock.now().timestamp()
    httpx.post(f"{url}/_mock/mode", json={"visibility_delay": 3.0}).raise_for_status()
    try:
        sids = []
        for i in range(3):
            sids.append(httpx.post(url + TWILIO_PATH, data={**TWILIO_FORM, "Body": f"hello {i}"},
                                   headers=AUTH).json()["sid"])
            clock.advance(timedelta(milliseconds=10))  # distinct creation times: a defined newest-first order
        httpx.post(url + TWILIO_PATH, data={**TWILIO_FORM, "To": "+14155550999"}, headers=AUTH).raise_for_status()
        client = twilio_rest.Client("AC1", "token")
        client.api.base_url = f"{url}/twilio"
        clock.advance(timedelta(seconds=2.9))
        assert client.messages.list(to=TWILIO_FORM["To"]) == []  # not visible yet
        clock.advance(timedelta(seconds=0.2))
        assert len(client.messages.list(to=TWILIO_FORM["To"])) == 3
        listed = client.messages.list(to=TWILIO_FORM["To"], from_=TWILIO_FORM["From"], page_size=2)
        everyone = {m.to for m in client.messages.list()}
    finally:
        state.clock = real_clock
        httpx.post(f"{url}/_mock/mode", json={"visibility_delay": 0.0}).raise_for_status()
    assert [m.sid for m in listed] == sids[::-1]  # newest first, across two pages
    first = listed[-1]
    assert (first.body, first.to, first.from_, first.direction) == ("hello 0", "+14155550123", "+14155550100",
                                                                   "outbound-api")
    assert first.date_created is not None and first.account_sid == "AC1" and first.num_segments == "1"
    assert everyone == {"+14155550123", "+14155550999"}
    assert len(state.query("twilio")) == 4
