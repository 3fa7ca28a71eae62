"""Commit status and notifications: report every apply (or failed apply) once per commit and result.

After each reconcile the daemon calls `Notifier.notify_commit(outcome)`. Two channels:
- GitHub: a commit status (POST {apiBaseUrl}/repos/{owner}/{repo}/statuses/{sha}, context
  "herald/apply": success when applied, pending while a freeze window holds it, failure when refused
  or invalid, error when Herald failed).
- A Slack-compatible webhook: {"text": ..., "attachments": [{fields...}], "herald": {structured}}.

Exactly once: what was delivered is remembered in the state store's key/value table under
(sha, result), so polling the same commit again, or restarting the daemon, sends nothing new; a
short store lease keeps two daemons from sending the same report at the same moment. A channel that
failed is tried again on later calls (with backoff on the injected clock, at most MAX_ATTEMPTS times).
Owner alerts (safety-limit blocks, budget breaches) go through the webhook once per (kind, campaign,
run) the same way. Nothing here ever raises into the apply: failures are logged, redacted.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx

from .alerts import Alert, AlertEmailError, alert_recipients, format_alert, send_alert_email
from .clock import Clock, SystemClock
from .models.common import Secret
from .outbound import OutboundPolicy, OutboundRefused, pin
from .runtime import new_worker_id
from .secrets import REDACTOR, SecretError, redact, resolve_secret

if TYPE_CHECKING:
    from .apply import ApplyResult
    from .models import Campaign, Settings
    from .models.settings import EmailAlertSettings
    from .store.base import StateStore

LOG = logging.getLogger("herald.notify")
Result = Literal["applied", "held", "refused", "invalid", "error"]
GITHUB_STATES: dict[str, str] = {"applied": "success", "held": "pending", "refused": "failure",
                                 "invalid": "failure", "error": "error"}
SLACK_COLORS = {"applied": "good", "held": "warning", "refused": "danger", "invalid": "danger",
                "error": "warning"}
STATUS_CONTEXT = "herald/apply"
DEFAULT_GITHUB_API = "https://api.github.com"
GITHUB_TOKEN_ENV = "HERALD_GITHUB_TOKEN"
MAX_DESCRIPTION = 140
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=30)
RETRY_MAX = timedelta(minutes=30)
SEND_LEASE = timedelta(seconds=60)
TIMEOUT_SECONDS = 10.0
COMMIT_KEY = "notify:commit:{sha}:{result}"
OWNER_KEY = "notify:owner:{kind}:{campaign}:{run}"

ChannelStatus = Literal["sent", "already_sent", "failed", "waiting", "gave_up", "skipped", "busy"]


@dataclass(frozen=True)
class CommitOutcome:
    sha: str
    result: Result
    summary: str
    repository: str | None = None  # owner/name
    details: Mapping[str, Any] = field(default_factory=dict)
    target_url: str | None = None


@dataclass(frozen=True)
class NotifyConfig:
    """Resolved from Settings.spec.notifications (and alerts.webhookUrl for owner alerts)."""

    github_repository: str | None = None
    github_api_base: str = DEFAULT_GITHUB_API
    github_token: Secret | None = None  # None: the HERALD_GITHUB_TOKEN environment variable
    github_enabled: bool = False
    webhook_url: str | Secret | None = None
    owner_webhook_url: str | Secret | None = None  # settings.alerts.webhookUrl, else webhook_url
    email: EmailAlertSettings | None = None  # settings.alerts.email: owner alerts by SMTP
    # non-public networks the webhooks and the GitHub API base may use (outbound.py)
    outbound: OutboundPolicy = field(default_factory=OutboundPolicy.from_env)

    @classmethod
    def from_settings(cls, settings: Settings | None) -> NotifyConfig:
        if settings is None:
            return cls()
        notifications = settings.spec.notifications
        github = notifications.github
        return cls(
            github_repository=github.repository if github else None,
            github_api_base=github.apiBaseUrl if github else DEFAULT_GITHUB_API,
            github_token=github.token if github else None,
            github_enabled=github is not None,
            webhook_url=notifications.webhookUrl,
            owner_webhook_url=settings.spec.alerts.webhookUrl or notifications.webhookUrl,
            email=settings.spec.alerts.email,
            outbound=OutboundPolicy.from_settings(settings),
        )


@dataclass
class NotifyReport:
    """What one call did, per channel ("github", "webhook")."""

    channels: dict[str, ChannelStatus] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def outcome_from_apply(sha: str, result: ApplyResult | BaseException, *, repository: str | None = None,
                       target_url: str | None = None) -> CommitOutcome:
    """The outcome of reconcile(): an ApplyResult, an ApplyRefused, or any other exception."""
    from .apply import ApplyRefused, ApplyResult

    if isinstance(result, ApplyResult):
        return CommitOutcome(sha, "applied", result.describe(), repository,
                             {"version": result.version, "changes": dict(result.counts),
                              "applied": result.applied}, target_url)
    if isinstance(result, ApplyRefused):
        kind: Result = "refused"
        if result.reason in ("invalid", "freeze_window"):
            kind = "invalid" if result.reason == "invalid" else "held"
        return CommitOutcome(sha, kind, str(result), repository, {"reason": result.reason, **result.details},
                             target_url)
    return CommitOutcome(sha, "error", f"Herald could not apply this commit: {type(result).__name__}: {result}",
                         repository, {"error": type(result).__name__}, target_url)


_GITHUB_REMOTE = re.compile(r"github\.com[:/]+([A-Za-z0-9_.-]+)/([A-Za-z0-9_.-]+?)(?:\.git)?/?$")


def repository_from_remote(url: str) -> str | None:
    """owner/name of a GitHub remote (https or scp-like), else None."""
    match = _GITHUB_REMOTE.search(url.strip())
    return f"{match.group(1)}/{match.group(2)}" if match else None


def budget_alert(campaign: Campaign, spent: float, *, run_id: str | None = None) -> Alert:
    """The owner alert for a campaign whose spend reached its budget."""
    budget = campaign.spec.budget
    assert budget is not None, "budget_alert needs a campaign with a budget"
    scope = f"run {run_id}" if budget.per == "run" and run_id else budget.per
    return Alert(kind="budget_breach", campaign=campaign.name, owner=campaign.spec.owner,
                 text=(f"budget reached ({scope}): spent {spent:.2f} {budget.currency} of {budget.amount:.2f}. "
                       "Sending stopped; raise spec.budget.amount to continue."),
                 details={"spent": round(spent, 6), "budget": budget.amount, "currency": budget.currency,
                          "per": budget.per, "run_id": run_id})


def truncate(text: str, limit: int = MAX_DESCRIPTION) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _redacted(value: Any) -> Any:
    """Redact every string inside a JSON-like value (redacting serialized JSON would miss escapes)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value


class NotifyError(RuntimeError):
    """One channel failed (the message is already redacted)."""


class Notifier:
    """Reports apply results and owner alerts. Also an AlertSink (`send`), so it can replace
    Runtime.alerts and give owner alerts the same once-per-run guarantee."""

    def __init__(self, store: StateStore, config: NotifyConfig | Callable[[], NotifyConfig], *,
                 clock: Clock | None = None, client: httpx.Client | None = None,
                 environ: Mapping[str, str] | None = None, owner: str | None = None,
                 timeout: float = TIMEOUT_SECONDS, max_attempts: int = MAX_ATTEMPTS,
                 logger: logging.Logger = LOG) -> None:
        self.store = store
        self._config = config
        self.clock: Clock = clock or SystemClock()
        self._own_client = client is None
        self.client = client or httpx.Client(timeout=timeout, follow_redirects=False)
        self.environ = environ
        self.owner = owner or new_worker_id()
        self.max_attempts = max_attempts
        self.logger = logger
        self._warned: set[str] = set()

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            self.logger.warning("%s", message)

    def config(self) -> NotifyConfig:
        return self._config() if callable(self._config) else self._config

    # ------------------------------------------------------------ commits

    def notify_commit(self, outcome: CommitOutcome) -> NotifyReport:
        """Report `outcome` through every configured channel that has not reported it yet. Never raises."""
        report = NotifyReport()
        try:
            config = self.config()
            channels = self._commit_channels(config, outcome, report)
            key = COMMIT_KEY.format(sha=outcome.sha, result=outcome.result)
            self._deliver_once(key, channels, report)
        except Exception as exc:  # a report must never break the apply
            self.logger.error("notifying commit %s failed: %s", outcome.sha[:12], redact(f"{type(exc).__name__}: {exc}"))
            report.errors["notifier"] = redact(str(exc))
        return report

    def _commit_channels(self, config: NotifyConfig, outcome: CommitOutcome,
                         report: NotifyReport) -> dict[str, Callable[[], None]]:
        channels: dict[str, Callable[[], None]] = {}
        if config.github_enabled:
            repository = config.github_repository or outcome.repository
            token = self._github_token(config)
            if repository is None or token is None:
                reason = "no repository" if repository is None else f"no token ({GITHUB_TOKEN_ENV})"
                report.channels["github"], report.errors["github"] = "skipped", reason
                self._warn_once(f"GitHub commit status skipped: {reason}")
            else:
                channels["github"] = lambda: self._post_status(config.github_api_base, repository, token, outcome)
        webhook = config.webhook_url
        if webhook is not None:
            channels["webhook"] = lambda: self._post_webhook(self._resolve(webhook),
                                                             commit_payload(outcome, config, self.clock.now()))
        return channels

    def _github_token(self, config: NotifyConfig) -> str | None:
        if config.github_token is not None:
            try:
                return resolve_secret(config.github_token, self.environ, use="notification")
            except SecretError as exc:
                self.logger.error("GitHub token: %s", exc)
                return None
        token = (self.environ if self.environ is not None else os.environ).get(GITHUB_TOKEN_ENV) or None
        if token is not None:
            REDACTOR.register(token)
        return token

    def _resolve(self, value: str | Secret) -> str:
        try:
            url = value if isinstance(value, str) else resolve_secret(value, self.environ, use="notification")
        except SecretError as exc:
            raise NotifyError(f"webhook URL: {exc}") from None
        REDACTOR.register(url)  # a webhook URL grants posting rights
        return url

    def _post_status(self, api_base: str, repository: str, token: str, outcome: CommitOutcome) -> None:
        owner, name = repository.split("/", 1)
        url = (f"{api_base.rstrip('/')}/repos/{quote(owner, safe='')}/{quote(name, safe='')}"
               f"/statuses/{quote(outcome.sha, safe='')}")
        body: dict[str, Any] = {"state": GITHUB_STATES[outcome.result], "context": STATUS_CONTEXT,
                                "description": truncate(redact(outcome.summary))}
        if outcome.target_url:
            body["target_url"] = outcome.target_url
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
                   "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "herald"}
        self._post(url, body, headers, what="GitHub commit status")

    def _post_webhook(self, url: str, payload: dict[str, Any]) -> None:
        self._post(url, payload, {"User-Agent": "herald"}, what="webhook")

    def _post(self, url: str, body: dict[str, Any], headers: dict[str, str], *, what: str) -> None:
        """POST to `url` after the outbound policy (normalized, resolved, every address checked, the
        connection pinned to a checked address). Redirects are not followed."""
        try:
            request = pin(url, self.config().outbound)
        except OutboundRefused as exc:
            raise NotifyError(redact(f"{what}: refused: {exc}")) from None
        if request.url != url and redact(url) != url:
            REDACTOR.register(request.url)  # a secret webhook URL stays secret with its address in it
        try:
            response = self.client.post(request.url, json=body, headers={**headers, **request.headers},
                                        extensions=request.extensions)
        except httpx.HTTPError as exc:
            raise NotifyError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
        if response.status_code >= 300:
            detail = truncate(response.text, 200) if response.text else ""
            raise NotifyError(redact(f"{what}: HTTP {response.status_code} {detail}".strip()))

    # ------------------------------------------------------------ owner alerts

    def notify_owner(self, alert: Alert) -> bool:
        """Send the alert through the webhook once per (kind, campaign, run). Always logged (once).
        True when it was delivered now or before; never raises."""
        report = NotifyReport()
        try:
            config = self.config()
            run = alert.details.get("run_id") or alert.details.get("run") or "-"
            key = OWNER_KEY.format(kind=alert.kind, campaign=alert.campaign, run=run)
            channels: dict[str, Callable[[], None]] = {"log": lambda: self._log_alert(alert)}
            webhook = config.owner_webhook_url
            if webhook is not None:
                channels["webhook"] = lambda: self._post_webhook(self._resolve(webhook), alert_payload(alert))
            email = config.email
            if email is not None and alert_recipients(email, alert):
                channels["email"] = lambda: self._send_email(email, alert, config.outbound)
            self._deliver_once(key, channels, report)
        except Exception as exc:
            self.logger.error("owner alert for %s failed: %s", alert.campaign, redact(f"{type(exc).__name__}: {exc}"))
            return False
        return all(status in ("sent", "already_sent") for status in report.channels.values())

    def send(self, alert: Alert) -> bool:
        """AlertSink protocol."""
        return self.notify_owner(alert)

    def _send_email(self, settings: EmailAlertSettings, alert: Alert, policy: OutboundPolicy) -> None:
        try:
            send_alert_email(settings, alert, environ=self.environ, policy=policy)
        except AlertEmailError as exc:
            raise NotifyError(str(exc)) from None

    def _log_alert(self, alert: Alert) -> None:
        self.logger.warning("alert %s campaign=%s owner=%s: %s", alert.kind, alert.campaign, alert.owner,
                            redact(alert.text))

    # ------------------------------------------------------------ once

    def _deliver_once(self, key: str, channels: Mapping[str, Callable[[], None]], report: NotifyReport) -> None:
        """Run each channel not yet delivered for `key`, recording the outcome in the store's kv."""
        now = self.clock.now()
        record = self._record(key)
        due = {name: send for name, send in channels.items() if self._due(record.get(name), now, report, name)}
        if not due:
            return
        lease = f"notify:{key}"
        if not self.store.try_lease(lease, self.owner, now, SEND_LEASE):
            report.channels.update(dict.fromkeys(due, "busy"))  # another daemon is sending it now
            return
        try:
            record = self._record(key)  # re-read under the lease: the other daemon may have just finished
            for name, send in due.items():
                if not self._due(record.get(name), now, report, name):
                    continue
                record[name] = self._attempt(name, send, record.get(name), report)
                self.store.kv_set(key, record)
        finally:
            self.store.release_lease(lease, self.owner)

    def _record(self, key: str) -> dict[str, Any]:
        saved = self.store.kv_get(key)
        return dict(saved) if isinstance(saved, Mapping) else {}

    def _due(self, entry: Mapping[str, Any] | None, now: datetime, report: NotifyReport, name: str) -> bool:
        if entry is None:
            return True
        if entry.get("status") == "sent":
            report.channels[name] = "already_sent"
            return False
        attempts = int(entry.get("attempts", 0))
        if attempts >= self.max_attempts:
            report.channels[name] = "gave_up"
            return False
        retry_at = entry.get("retry_at")
        if retry_at and datetime.fromisoformat(retry_at) > now:
            report.channels[name] = "waiting"
            return False
        return True

    def _attempt(self, name: str, send: Callable[[], None], entry: Mapping[str, Any] | None,
                 report: NotifyReport) -> dict[str, Any]:
        attempts = int(entry.get("attempts", 0)) + 1 if entry else 1
        now = self.clock.now()
        try:
            send()
        except NotifyError as exc:
            report.channels[name], report.errors[name] = "failed", str(exc)
            self.logger.error("%s (attempt %d of %d)", exc, attempts, self.max_attempts)
            delay = min(RETRY_MAX, RETRY_BASE * 2 ** (attempts - 1))
            return {"status": "failed", "attempts": attempts, "error": str(exc), "at": now.isoformat(),
                    "retry_at": (now + delay).isoformat()}
        report.channels[name] = "sent"
        return {"status": "sent", "attempts": attempts, "at": now.isoformat()}


# ---------------------------------------------------------------- payloads


def commit_payload(outcome: CommitOutcome, config: NotifyConfig, at: datetime) -> dict[str, Any]:
    repository = config.github_repository or outcome.repository
    where = f" in {repository}" if repository else ""
    verb = {"applied": "applied", "held": "held (freeze window) for", "refused": "refused",
            "invalid": "rejected (invalid)",
            "error": "failed to apply"}[outcome.result]
    text = f"Herald {verb} commit {outcome.sha[:10]}{where}: {outcome.summary}"
    fields = [{"title": "Result", "value": outcome.result, "short": True},
              {"title": "Commit", "value": outcome.sha[:10], "short": True}]
    if repository:
        fields.append({"title": "Repository", "value": repository, "short": True})
    attachment: dict[str, Any] = {"color": SLACK_COLORS[outcome.result], "fields": fields, "footer": STATUS_CONTEXT}
    if outcome.target_url:
        attachment["title_link"] = outcome.target_url
        attachment["title"] = "Details"
    payload = {
        "text": text,
        "attachments": [attachment],
        "herald": {"event": "commit", "sha": outcome.sha, "repository": repository, "result": outcome.result,
                   "state": GITHUB_STATES[outcome.result], "summary": outcome.summary,
                   "details": dict(outcome.details), "target_url": outcome.target_url, "at": at.isoformat()},
    }
    return dict(_redacted(payload))


def alert_payload(alert: Alert) -> dict[str, Any]:
    fields = [{"title": "Campaign", "value": alert.campaign, "short": True},
              {"title": "Kind", "value": alert.kind, "short": True}]
    if alert.owner:
        fields.append({"title": "Owner", "value": alert.owner, "short": True})
    payload = {
        "text": format_alert(alert),
        "attachments": [{"color": "danger", "fields": fields, "footer": "herald/alert"}],
        "herald": {"event": "alert", "kind": alert.kind, "campaign": alert.campaign, "owner": alert.owner,
                   "text": alert.text, "details": dict(alert.details)},
    }
    return dict(_redacted(payload))
