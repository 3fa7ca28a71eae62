"""SMS providers: adapters speaking each provider's HTTP API, provider groups with failover, and a
mock provider server for tests and demos."""

from .base import (
    IDEMPOTENCY_HEADER,
    OutboundMessage,
    ProviderAdapter,
    ProviderConfigError,
    ProviderError,
    SendResult,
    idempotency_key,
)
from .group import GroupRouter, InvalidNumber, RetryPolicy, RoutingError, parse_number
from .registry import base_url_for, build_adapter, receipt_token

__all__ = [
    "IDEMPOTENCY_HEADER",
    "GroupRouter",
    "InvalidNumber",
    "OutboundMessage",
    "ProviderAdapter",
    "ProviderConfigError",
    "ProviderError",
    "RetryPolicy",
    "RoutingError",
    "SendResult",
    "base_url_for",
    "build_adapter",
    "idempotency_key",
    "parse_number",
    "receipt_token",
]
