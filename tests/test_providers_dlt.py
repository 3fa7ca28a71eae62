"""Which DLT template id Exotel and Netcore send: a numeric campaign templateId, else the provider's."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest

from reconciler.config import RuntimeConfig
from reconciler.models import Provider
from reconciler.providers import OutboundMessage, build_adapter

SPECS: dict[str, tuple[dict[str, Any], dict[str, str], str]] = {
    "exotel": ({"type": "exotel", "accountSid": "acct1", "apiKey": "key1", "subdomain": "api.in.exotel.com",
                "from": "HERALD", "apiToken": {"secretRef": {"env": "EXOTEL_API_TOKEN"}}},
               {"EXOTEL_API_TOKEN": "exotel-token"}, "DltTemplateId"),
    "netcore": ({"type": "netcore", "feedId": "392001", "username": "herald", "senderId": "HERALD",
                 "password": {"secretRef": {"env": "NETCORE_PASSWORD"}}},
                {"NETCORE_PASSWORD": "netcore-password"}, "templateid"),
}
PROVIDER_TEMPLATE = "1107160000000000009"
CAMPAIGN_TEMPLATE = "1107160000000000042"


def sent_form(kind: str, campaign_template: str | None, provider_template: str | None) -> tuple[dict[str, str], str]:
    spec, env, field = SPECS[kind]
    spec = {**spec, **({"dltTemplateId": provider_template} if provider_template else {})}
    provider = Provider.model_validate({"apiVersion": "herald/v1", "kind": "Provider",
                                        "metadata": {"name": f"{kind}-in"}, "spec": spec})
    adapter = build_adapter(provider, httpx.AsyncClient(), RuntimeConfig(), environ=env)
    request = adapter.build_request([OutboundMessage("m-1", "+919876543210", "Your OTP is 1", campaign_template)])
    return dict(parse_qsl(request.content.decode(), keep_blank_values=True)), field


@pytest.mark.parametrize("kind", sorted(SPECS))
@pytest.mark.parametrize(("campaign", "provider", "expected"), [
    (CAMPAIGN_TEMPLATE, PROVIDER_TEMPLATE, CAMPAIGN_TEMPLATE),  # a numeric campaign id wins
    (CAMPAIGN_TEMPLATE, None, CAMPAIGN_TEMPLATE),
    ("otp-flow", PROVIDER_TEMPLATE, PROVIDER_TEMPLATE),  # not a DLT id (e.g. an MSG91 flow): provider's
    (None, PROVIDER_TEMPLATE, PROVIDER_TEMPLATE),
    ("otp-flow", None, None),  # neither: the field is left out
    (None, None, None),
])
def test_dlt_template_id_choice(kind: str, campaign: str | None, provider: str | None, expected: str | None) -> None:
    form, field = sent_form(kind, campaign, provider)
    assert form.get(field) == expected
