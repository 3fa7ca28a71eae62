"""Each adapter's exact request and its reading of success and error answers, against fixtures built
from the providers' public documentation (tests/fixtures/providers/*.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from reconciler.config import RuntimeConfig
from reconciler.models import Provider
from reconciler.providers import OutboundMessage, ProviderError, build_adapter
from reconciler.providers.base import idempotency_key

FIXTURES = Path(__file__).parent / "fixtures" / "providers"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))


def provider_of(fixture: dict[str, Any]) -> Provider:
    return Provider.model_validate({"apiVersion": "herald/v1", "kind": "Provider",
                                    "metadata": {"name": fixture["name"]}, "spec": fixture["spec"]})


def message_of(data: dict[str, Any]) -> OutboundMessage:
    return OutboundMessage(data["message_id"], data["to"], data["body"], data.get("template_id"),
                           tuple(data.get("template_variables") or ()))


def messages_of(fixture: dict[str, Any]) -> list[OutboundMessage]:
    return [message_of(m) for m in fixture.get("messages", [fixture.get("message")]) if m]


def adapter_for(fixture: dict[str, Any], config: RuntimeConfig | None = None):
    client = httpx.AsyncClient()
    return build_adapter(provider_of(fixture), client, config or RuntimeConfig(), environ=fixture["env"])


def request_body(request: httpx.Request) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return json.loads(request.content)
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True))


@pytest.mark.parametrize("name", NAMES)
def test_request_matches_documented_shape(name: str) -> None:
    fixture = load(name)
    adapter = adapter_for(fixture)
    batch = messages_of(fixture)
    request = adapter.build_request(batch)
    expected = fixture["request"]
    assert request.method == expected["method"]
    assert str(request.url) == expected["url"]
    for header, value in expected["headers"].items():
        assert request.headers.get(header, "").split(";")[0] == value, header
    assert request.headers["Idempotency-Key"] == idempotency_key(batch)
    assert request_body(request) == expected.get("json", expected.get("form"))


def _response(spec: dict[str, Any], request: httpx.Request) -> httpx.Response:
    content = json.dumps(spec["body"]).encode() if "body" in spec else spec.get("text", "").encode()
    headers = {"content-type": "application/json" if "body" in spec else "text/plain", **spec.get("headers", {})}
    return httpx.Response(spec["status"], headers=headers, content=content, request=request)


CASES = [(name, index) for name in NAMES for index in range(len(load(name)["responses"]))]


@pytest.mark.parametrize(("name", "index"), CASES, ids=[f"{n}-{load(n)['responses'][i]['name']}" for n, i in CASES])
def test_answer_is_read_as_documented(name: str, index: int) -> None:
    fixture = load(name)
    spec = fixture["responses"][index]
    adapter = adapter_for(fixture)
    batch = messages_of(fixture)
    outcomes = adapter.parse_response(_response(spec, adapter.build_request(batch)), batch)
    expect = spec["expect"]
    if "ids" in expect:
        assert outcomes == expect["ids"]
        return
    (outcome,) = outcomes
    if "id" in expect:
        assert outcome == expect["id"]
        return
    assert isinstance(outcome, ProviderError), outcome
    assert outcome.retryable is expect["retryable"]
    if "scope" in expect:
        assert outcome.scope == expect["scope"]
    if "code" in expect:
        assert outcome.code == expect["code"]
    if "retry_after" in expect:
        assert outcome.retry_after == expect["retry_after"]
    for secret in fixture["env"].values():
        assert secret not in outcome.message


def test_base_url_points_every_adapter_at_the_mock() -> None:
    config = RuntimeConfig(provider_base_url="http://127.0.0.1:8765")
    expected = {
        "twilio": "http://127.0.0.1:8765/twilio/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json",
        "vonage": "http://127.0.0.1:8765/vonage/sms/json",
        "msg91": "http://127.0.0.1:8765/msg91/api/v5/flow/",
        "exotel": "http://127.0.0.1:8765/exotel/v1/Accounts/heraldexample1/Sms/send.json",
        "netcore": "http://127.0.0.1:8765/netcore/BulkSms/SingleMsgApi",
        "generic": "http://127.0.0.1:8765/generic_http/acme-sms/v2/messages?region=eu",
    }
    for name, url in expected.items():
        fixture = load(name)
        request = adapter_for(fixture, config).build_request(messages_of(fixture))
        assert str(request.url) == url


def test_spec_base_url_wins_over_runtime_base_url() -> None:
    fixture = load("twilio")
    fixture["spec"]["baseUrl"] = "https://twilio.internal.example/"
    request = adapter_for(fixture, RuntimeConfig(provider_base_url="http://127.0.0.1:1")).build_request(
        messages_of(fixture))
    assert str(request.url).startswith("https://twilio.internal.example/2010-04-01/")


def test_generic_query_and_form_formats_and_separators() -> None:
    fixture = load("generic")
    fixture["spec"].update(bodyFormat="query", method="GET", templateVariablesFormat="pipe",
                           url="https://gw.example/send?to=$$To")
    fixture["spec"]["headers"] = {}
    request = adapter_for(fixture).build_request(messages_of(fixture))
    assert request.method == "GET"
    assert request.url.params["to"] == "+14155550123"
    assert request.url.params["vars"] == "Ada|10%"
    assert request.content == b""
    fixture["spec"].update(bodyFormat="form", method="POST", templateVariablesFormat="comma")
    request = adapter_for(fixture).build_request(messages_of(fixture))
    assert request_body(request)["vars"] == "Ada,10%"


def test_generic_comma_batching_joins_recipients_and_splits_distinct_texts() -> None:
    fixture = load("generic-batched")
    fixture["spec"]["batching"]["join"] = "comma"
    fixture["spec"]["bodyFormat"] = "form"
    adapter = adapter_for(fixture)
    batch = messages_of(fixture)
    same_text = [OutboundMessage(m.message_id, m.to, "Same for all", m.template_id) for m in batch]
    body = request_body(adapter.build_request(same_text))
    assert body["to"] == "+14155550120,+14155550121,+14155550122"
    assert body["text"] == "Same for all"
    assert body["campaign"] == "spring"


def test_batched_generic_refuses_personalized_headers_at_runtime() -> None:
    from reconciler.providers import ProviderConfigError

    fixture = load("generic-batched")
    fixture["spec"]["headers"] = {"X-To": "$$To"}
    with pytest.raises(ProviderConfigError, match=r"headers\.X-To"):
        adapter_for(fixture)
    fixture["spec"]["headers"] = {}
    fixture["spec"]["globals"] = {"user": "{{ user.first_name }}"}
    with pytest.raises(ProviderConfigError, match=r"globals\.user"):
        adapter_for(fixture)


def test_batch_idempotency_key_is_derived_from_all_message_ids() -> None:
    a = [OutboundMessage("m1", "+14155550120", "x"), OutboundMessage("m2", "+14155550121", "x")]
    b = [OutboundMessage("m1", "+14155550120", "x"), OutboundMessage("m3", "+14155550121", "x")]
    assert idempotency_key(a) == idempotency_key(list(a))
    assert idempotency_key(a) != idempotency_key(b)
    assert idempotency_key(a[:1]) == "m1"


def test_msg91_without_template_fails_for_the_message_only() -> None:
    fixture = load("msg91")
    fixture["message"]["template_id"] = None
    adapter = adapter_for(fixture)
    with pytest.raises(ProviderError) as caught:
        adapter.build_request(messages_of(fixture))
    assert caught.value.scope == "message" and not caught.value.retryable


def test_exotel_status_callback_carries_the_receipt_token() -> None:
    from reconciler.providers import receipt_token

    fixture = load("exotel")
    fixture["spec"]["statusCallbackUrl"] = "https://herald.example/receipts/exotel-in"
    request = adapter_for(fixture).build_request(messages_of(fixture))
    token = receipt_token(provider_of(fixture), fixture["env"])
    assert request_body(request)["StatusCallback"] == f"https://herald.example/receipts/exotel-in?token={token}"


def test_msg91_keeps_its_flow_id_when_the_campaign_gives_a_dlt_template_id() -> None:
    fixture = load("msg91")
    fixture["spec"]["templateId"] = "64f0c1e2d6fc0512a46b3b22"
    adapter = adapter_for(fixture)
    dlt = messages_of(fixture)[0]  # template_id 1107160000000000002: a DLT id
    assert request_body(adapter.build_request([dlt]))["template_id"] == "64f0c1e2d6fc0512a46b3b22"
    flow = OutboundMessage(dlt.message_id, dlt.to, dlt.body, "65aa00000000000000000001")
    assert request_body(adapter.build_request([flow]))["template_id"] == "65aa00000000000000000001"
