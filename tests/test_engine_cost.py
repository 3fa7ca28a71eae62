"""The recorded cost of a sent message: the provider's per-segment price for the number's country."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.delivery import message_cost
from reconciler.models import Provider


def provider(pricing: dict[str, Any] | None) -> Provider:
    spec: dict[str, Any] = {"type": "twilio", "accountSid": "AC" + "0" * 32, "from": "+14155550000",
                            "authToken": {"secretRef": {"env": "TWILIO_AUTH_TOKEN"}}}
    if pricing is not None:
        spec["pricing"] = pricing
    return Provider.model_validate({"apiVersion": "herald/v1", "kind": "Provider", "metadata": {"name": "tw"},
                                    "spec": spec})


PRICED = provider({"currency": "USD", "perSegment": {"US": 0.0079, "GB": 0.04, "*": 0.05}})


@pytest.mark.parametrize(("phone", "segments", "expected"), [
    ("+14155550100", 1, 0.0079),  # valid E.164: its country's price
    ("+14155550100", 3, 0.0237),
    ("+447400123456", 2, 0.08),
    ("+919876543210", 1, 0.05),  # a country without its own price: the '*' fallback
    ("+1 415 555 0100", 1, 0.0079),  # not canonical E.164, but its country is still readable
    ("+999123", 1, 0.05),  # no country at all: the fallback
    ("not a number", 2, 0.1),
])
def test_cost_uses_the_country_price_else_the_fallback(phone: str, segments: int, expected: float) -> None:
    assert message_cost(PRICED, phone, segments) == pytest.approx(expected)


def test_no_fallback_price_means_no_cost_for_other_countries() -> None:
    only_us = provider({"currency": "USD", "perSegment": {"US": 0.01}})
    assert message_cost(only_us, "+14155550100", 2) == pytest.approx(0.02)
    assert message_cost(only_us, "+447400123456", 1) is None


def test_unpriced_or_unknown_provider_has_no_cost() -> None:
    assert message_cost(provider(None), "+14155550100", 1) is None
    assert message_cost(None, "+14155550100", 1) is None
