"""Which URL a provider called (reconciler/http/proxies.py): the public URL, the forwarded URL from a
trusted proxy only (last value wins), the request's own URL otherwise; and the Twilio URL variants."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from reconciler.http.proxies import ProxyConfigError, PublicUrl, normalize_public_url, parse_networks
from reconciler.http.receipts import twilio_algorithm, twilio_url_variants


def _request(peer: str, headers: dict[str, str], path: str = "/receipts/tw", query: str = "") -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "10.1.2.3:8080", **headers}.items()]
    return Request({"type": "http", "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
                    "query_string": query.encode(), "headers": raw, "client": (peer, 40000),
                    "server": ("10.1.2.3", 8080)})


TRUSTING = PublicUrl(base="https://public.example", trusted=parse_networks("10.0.0.0/8, fd00::/8"))


@pytest.mark.parametrize(("headers", "forwarded"), [
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"}, "https://edge.example"),
    ({"X-Forwarded-Proto": "http, https", "X-Forwarded-Host": "spoof.example, edge.example"}, "https://edge.example"),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example", "X-Forwarded-Port": "8443"},
     "https://edge.example:8443"),
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example", "X-Forwarded-Port": "443"}, "https://edge.example"),
    ({"Forwarded": 'for=1.2.3.4;proto=http;host=a.example, for="[2001:db8::1]";proto=https;host="b.example"'},
     "https://b.example"),
    ({"Forwarded": "proto=https;host=[2001:db8::5]:8443"}, "https://[2001:db8::5]:8443"),
    ({"X-Forwarded-Proto": "https"}, "https://10.1.2.3:8080"),  # proxy keeps the Host header
])
def test_trusted_proxy_headers(headers: dict[str, str], forwarded: str) -> None:
    found = TRUSTING.candidates(_request("10.9.9.9", headers, query="a=1"))
    assert found == ["https://public.example/receipts/tw?a=1", f"{forwarded}/receipts/tw?a=1"]


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"},
    {"Forwarded": "proto=https;host=edge.example"},
])
def test_untrusted_peers_forwarded_headers_are_ignored(headers: dict[str, str]) -> None:
    assert TRUSTING.candidates(_request("192.0.2.7", headers)) == ["https://public.example/receipts/tw"]
    bare = PublicUrl(trusted=parse_networks("10.0.0.0/8"))
    assert bare.candidates(_request("192.0.2.7", headers)) == ["http://10.1.2.3:8080/receipts/tw"]


@pytest.mark.parametrize("headers", [
    {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "edge.example"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example/evil?"},
    {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "user@edge.example"},
])
def test_nonsense_forwarded_values_are_not_used(headers: dict[str, str]) -> None:
    assert TRUSTING.candidates(_request("10.9.9.9", headers)) == ["https://public.example/receipts/tw"]


def test_configuration_errors() -> None:
    assert normalize_public_url("https://herald.example/sms/") == "https://herald.example/sms"
    for bad in ("ftp://x.example", "herald.example", "https://x.example/?a=1", "https://"):
        with pytest.raises(ProxyConfigError):
            normalize_public_url(bad)
    with pytest.raises(ProxyConfigError, match="nope"):
        parse_networks("10.0.0.0/8,nope")
    assert parse_networks(" 127.0.0.1 , ::1 ,") == parse_networks(["127.0.0.1/32", "::1/128"])


def test_twilio_url_variants_and_algorithm_header() -> None:
    assert twilio_url_variants("https://h.example/r?x=1") == ["https://h.example/r?x=1", "https://h.example:443/r?x=1"]
    assert twilio_url_variants("https://h.example:443/r") == ["https://h.example/r", "https://h.example:443/r"]
    assert twilio_url_variants("http://h.example:8080/r") == ["http://h.example/r", "http://h.example:8080/r"]
    assert twilio_algorithm(None) == "HMAC_SHA1"
    assert twilio_algorithm("key=webhooks_sharedkey_1, algorithm=HMAC_SHA256") == "HMAC_SHA256"
    assert twilio_algorithm("key=only") == "HMAC_SHA1"


class _Multi(dict[str, list[str]]):
    """A multi-valued form as frameworks hand it to the official validator (getall)."""

    def getall(self, key: str) -> list[str]:
        return self[key]


def test_twilio_validation_agrees_with_the_official_request_validator() -> None:
    import hashlib

    from twilio.request_validator import RequestValidator

    from reconciler.http.receipts import twilio_request_valid

    token, url = "auth-token-9", "https://public.example/inbound/tw"
    official = RequestValidator(token)
    repeated = _Multi({"MediaUrl": ["https://b.example/2", "https://a.example/1"], "Body": ["hi"]})
    signature = official.compute_signature(url, repeated)
    assert twilio_request_valid(token, [url], repeated, b"", signature, "HMAC_SHA1")
    assert not twilio_request_valid(token, [url], {**repeated, "Body": ["ho"]}, b"", signature, "HMAC_SHA1")
    body = b'{"MessageSid":"SM1","MessageStatus":"delivered"}'
    signed_url = f"{url}?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = official.compute_signature(signed_url, {})
    assert official.validate(signed_url, body.decode(), signature)
    assert twilio_request_valid(token, [signed_url], {}, body, signature, "HMAC_SHA1")
    assert not twilio_request_valid(token, [signed_url], {}, body.replace(b"delivered", b"failed"), signature,
                                    "HMAC_SHA1")
    sha256 = official.compute_signature(url, {"Body": "hi"}, "HMAC_SHA256")
    assert twilio_request_valid(token, [url], {"Body": ["hi"]}, b"", sha256, "HMAC_SHA256")
    assert not twilio_request_valid(token, [url], {"Body": ["hi"]}, b"", sha256, "HMAC_SHA1")
    assert not twilio_request_valid(token, [url], {"Body": ["hi"]}, b"", sha256, "HMAC_MD5")
