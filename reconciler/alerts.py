"""Owner alerts (e.g. a run blocked by its safety limit, a run that failed): always logged, optionally
posted to a Slack-compatible webhook as {"text": ...} and e-mailed over SMTP (Settings.spec.alerts.email:
to the campaign owner when it is an address, and to `to`). Everything is redacted; a failing channel is
logged and never breaks the caller. The webhook URL itself is treated as a secret (it grants posting
rights); SMTP credentials are secretRefs and never appear in any output.
"""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from .outbound import OutboundPolicy, OutboundRefused, resolve_host
from .secrets import REDACTOR, redact, resolve_secret

if TYPE_CHECKING:
    from .audience.reach import SafetyVerdict
    from .models import Campaign, Settings
    from .models.settings import EmailAlertSettings

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


def safety_block_alert(campaign: Campaign, verdict: SafetyVerdict, *, run_id: str | None = None,
                       commit_sha: str | None = None) -> Alert:
    run = f" run {run_id}" if run_id else ""
    commit = f" (commit {commit_sha[:12]})" if commit_sha else ""
    return Alert(
        kind="safety_block",
        campaign=campaign.name,
        owner=campaign.spec.owner,
        text=(f"blocked{run}{commit}: {verdict.qualified} users qualify, more than the safety limit of "
              f"{verdict.limit}. Nothing was sent; narrow the audience or raise audience.safetyLimit."),
        details={"qualified": verdict.qualified, "limit": verdict.limit, "source": verdict.source,
                 "run_id": run_id, "commit": commit_sha},
    )


# ---------------------------------------------------------------- e-mail


def _check_host(settings: EmailAlertSettings, policy: OutboundPolicy) -> None:
    try:
        addresses = resolve_host(settings.host, settings.port)
    except OutboundRefused as exc:
        raise AlertEmailError(f"alert e-mail: {exc}") from None
    for address in addresses:
        refusal = policy.address_refusal(address, settings.host)
        if refusal:
            raise AlertEmailError(f"alert e-mail refused: {refusal}")

ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


class AlertEmailError(RuntimeError):
    """The alert e-mail was not accepted (connection, TLS, login or the server's refusal); redacted."""


def alert_recipients(settings: EmailAlertSettings, alert: Alert) -> list[str]:
    """The campaign owner when it is an e-mail address, then settings.to; each address once."""
    found = [alert.owner] if alert.owner and ADDRESS.match(alert.owner) else []
    return list(dict.fromkeys([*found, *settings.to]))


def alert_email(settings: EmailAlertSettings, alert: Alert, recipients: list[str]) -> EmailMessage:
    """Subject names the campaign and kind; the body the text and every detail (counts, commit, run)."""
    message = EmailMessage()
    message["Subject"] = redact(f"[Herald] {alert.kind.replace('_', ' ')}: campaign {alert.campaign}")
    message["From"] = settings.from_
    message["To"] = ", ".join(recipients)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    message["Message-ID"] = make_msgid(domain=settings.from_.rpartition("@")[2] or None)
    lines = [format_alert(alert), "", f"Campaign: {alert.campaign}", f"Kind: {alert.kind}"]
    if alert.owner:
        lines.append(f"Owner: {alert.owner}")
    lines += [f"{key.replace('_', ' ').capitalize()}: {value}" for key, value in alert.details.items()
              if value is not None]
    message.set_content(redact("\n".join(lines)) + "\n")
    return message


def send_alert_email(settings: EmailAlertSettings, alert: Alert, *, environ: Mapping[str, str] | None = None,
                     policy: OutboundPolicy | None = None) -> list[str]:
    """Send the alert; returns the recipients (none: nothing to send). AlertEmailError on any failure.
    STARTTLS (or implicit TLS) verifies the server's certificate with the system's trust store. With a
    `policy`, a host resolving to a non-public address must be in Settings outbound.allowNetworks."""
    recipients = alert_recipients(settings, alert)
    if not recipients:
        return []
    message = alert_email(settings, alert, recipients)
    if policy is not None:
        _check_host(settings, policy)
    try:
        username = resolve_secret(settings.username, environ, use="notification") if settings.username else None
        password = resolve_secret(settings.password, environ, use="notification") if settings.password else None
        context = ssl.create_default_context()
        smtp: smtplib.SMTP = (smtplib.SMTP_SSL(settings.host, settings.port, timeout=settings.timeoutSeconds,
                                               context=context) if settings.tls
                              else smtplib.SMTP(settings.host, settings.port, timeout=settings.timeoutSeconds))
        with smtp:
            if settings.starttls and not settings.tls:
                smtp.starttls(context=context)
            if username is not None:
                smtp.login(username, password or "")
            smtp.send_message(message, to_addrs=recipients)
    except Exception as exc:  # SecretError, OSError, smtplib.SMTPException, ssl.SSLError
        raise AlertEmailError(redact(f"alert e-mail via {settings.host}:{settings.port}: "
                                     f"{type(exc).__name__}: {exc}")[:300]) from None
    return recipients
