"""Owner alerts (e.g. a run blocked by its safety limit): always logged, optionally posted to a
Slack-compatible webhook as {"text": ...}. Everything is redacted; a failing webhook is logged and
never breaks the caller. The webhook URL itself is treated as a secret (it grants posting rights).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .secrets import REDACTOR, redact

if TYPE_CHECKING:
    from .audience.reach import SafetyVerdict
    from .models import Campaign, Settings

LOG = logging.getLogger("herald.alerts")
WEBHOOK_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Alert:
    kind: str  # e.g. "safety_block", "linked_content_abort"
    campaign: str
    owner: str | None
    text: str
    details: dict[str, Any] = field(default_factory=dict)


class AlertSink(Protocol):
    def send(self, alert: Alert) -> bool:
        """Deliver the alert; True when every channel accepted it. Never raises."""
        ...


class LogAlertSink:
    def __init__(self, logger: logging.Logger = LOG) -> None:
        self.logger = logger

    def send(self, alert: Alert) -> bool:
        self.logger.warning("alert %s campaign=%s owner=%s: %s", alert.kind, alert.campaign, alert.owner,
                            redact(alert.text))
        return True


class WebhookAlertSink:
    """Logs, then POSTs {"text": ...} to the webhook (Slack incoming-webhook compatible)."""

    def __init__(self, url: str, *, client: httpx.Client | None = None, logger: logging.Logger = LOG,
                 timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
        REDACTOR.register(url)
        self.url = url
        self.client = client
        self.log_sink = LogAlertSink(logger)
        self.logger = logger
        self.timeout = timeout
        self.delivered = 0

    def send(self, alert: Alert) -> bool:
        self.log_sink.send(alert)
        payload = {"text": redact(format_alert(alert))}
        try:
            if self.client is not None:
                response = self.client.post(self.url, json=payload, timeout=self.timeout)
            else:
                response = httpx.post(self.url, json=payload, timeout=self.timeout)
        except httpx.HTTPError as exc:
            self.logger.error("alert webhook failed: %s", redact(type(exc).__name__))
            return False
        if response.status_code >= 300:
            self.logger.error("alert webhook answered HTTP %s", response.status_code)
            return False
        self.delivered += 1
        return True


def format_alert(alert: Alert) -> str:
    owner = f" (owner {alert.owner})" if alert.owner else ""
    return f"Herald: campaign '{alert.campaign}'{owner}: {alert.text}"


def alert_sink_from_settings(settings: Settings | None, *, client: httpx.Client | None = None,
                             logger: logging.Logger = LOG) -> AlertSink:
    url = settings.spec.alerts.webhookUrl if settings is not None else None
    if url:
        return WebhookAlertSink(url, client=client, logger=logger)
    return LogAlertSink(logger)


def safety_block_alert(campaign: Campaign, verdict: SafetyVerdict, *, run_id: str | None = None) -> Alert:
    run = f" run {run_id}" if run_id else ""
    return Alert(
        kind="safety_block",
        campaign=campaign.name,
        owner=campaign.spec.owner,
        text=(f"blocked{run}: {verdict.qualified} users qualify, more than the safety limit of {verdict.limit}. "
              "Nothing was sent; narrow the audience or raise audience.safetyLimit."),
        details={"qualified": verdict.qualified, "limit": verdict.limit, "source": verdict.source,
                 "run_id": run_id},
    )
