"""Owner alerts by e-mail, against a real SMTP server (aiosmtpd) started by the test on 127.0.0.1:
a safety block e-mails the owner naming the campaign, the counts and the commit; login uses the
secretRef credentials (never printed); a server without STARTTLS is refused when STARTTLS is asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from daemon_harness import SETTINGS_YAML, campaign_yaml, engine_world, free_port, providers_yaml

from reconciler.alerts import Alert, AlertEmailError, send_alert_email
from reconciler.demo import DEMO_START, commit_all
from reconciler.models.settings import EmailAlertSettings

SMTP_USER, SMTP_PASSWORD = "herald-alerts", "smtp-pass-6c1d0e"


class Mailbox:
    """aiosmtpd handler: keeps every accepted message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(envelope.original_content)))
        return "250 Message accepted for delivery"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        SMTP_USER.encode(), SMTP_PASSWORD.encode())
    return AuthResult(success=ok)


@contextlib.contextmanager
def smtp_server(*, auth: bool = True) -> Iterator[tuple[Mailbox, int]]:
    mailbox, port = Mailbox(), free_port()
    options: dict[str, Any] = {"authenticator": _authenticator, "auth_require_tls": False,
                               "auth_exclude_mechanism": ["LOGIN"]} if auth else {}
    controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def _settings(port: int, **extra: Any) -> EmailAlertSettings:
    return EmailAlertSettings.model_validate({
        "host": "127.0.0.1", "port": port, "starttls": False, "from": "herald@example.com",
        "username": {"secretRef": {"env": "SMTP_USER"}}, "password": {"secretRef": {"env": "SMTP_PASSWORD"}},
        "to": ["oncall@example.com"], **extra})


def test_safety_block_emails_the_owner_with_campaign_counts_and_commit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", SMTP_USER)
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    with smtp_server() as (mailbox, port):
        settings = SETTINGS_YAML + (
            f"  alerts:\n    email:\n      host: 127.0.0.1\n      port: {port}\n      starttls: false\n"
            "      from: herald@example.com\n      to: [oncall@example.com]\n"
            "      username: {secretRef: {env: SMTP_USER}}\n      password: {secretRef: {env: SMTP_PASSWORD}}\n")
        files = {"providers/providers.yaml": providers_yaml(), "campaigns/settings.yaml": settings}
        with engine_world(tmp_path, files, population=6) as world:
            at = DEMO_START + timedelta(minutes=10)
            root = Path(world.repo.working_tree_dir or "")
            text = campaign_yaml("too-wide", at, everyone=True).replace(
                "  audience:\n", "  audience:\n    safetyLimit: 2\n")
            (root / "campaigns" / "too-wide.yaml").write_text(text)
            commit = commit_all(world.repo, "too wide")
            world.engine.sync()
            world.clock.set(at)
            world.engine.tick()
            world.engine.tick()  # a second tick does not e-mail the same block again
            run = world.engine.rt.store.list_runs(campaign="too-wide")[0]
            assert run.status == "blocked"
    assert len(mailbox.messages) == 1
    recipients, message = mailbox.messages[0]
    assert recipients == ["sre@example.com", "oncall@example.com"]  # the owner, then the copies
    assert "too-wide" in message["Subject"] and "safety block" in message["Subject"]
    body = message.get_payload(decode=True).decode()
    assert "campaign 'too-wide'" in body and "6 users qualify" in body and "safety limit of 2" in body
    assert f"Commit: {commit}" in body and commit[:12] in body
    assert SMTP_PASSWORD not in body


def test_wrong_password_and_missing_starttls_are_errors_without_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USER", SMTP_USER)
    monkeypatch.setenv("SMTP_PASSWORD", "not-the-password-77")
    alert = Alert("run_failed", "c1", "owner@example.com", "run 4 failed", {"run_id": "4"})
    with smtp_server() as (mailbox, port):
        with pytest.raises(AlertEmailError) as refused:
            send_alert_email(_settings(port, timeoutSeconds=2), alert)  # aiosmtpd stalls a failed login
        assert "not-the-password-77" not in str(refused.value) and f"127.0.0.1:{port}" in str(refused.value)
        with pytest.raises(AlertEmailError, match="STARTTLS"):
            send_alert_email(_settings(port, starttls=True), alert)
        assert mailbox.messages == []
        monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
        assert send_alert_email(_settings(port), alert) == ["owner@example.com", "oncall@example.com"]
        assert "run 4 failed" in mailbox.messages[0][1].get_payload(decode=True).decode()


def test_no_address_no_mail() -> None:
    """An owner that is not an address and no `to`: nothing to send, no connection attempted."""
    settings = EmailAlertSettings.model_validate({"host": "127.0.0.1", "port": 9, "from": "h@example.com"})
    assert send_alert_email(settings, Alert("safety_block", "c", "team-growth", "blocked")) == []


def test_a_non_public_smtp_host_needs_allow_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Like webhooks, the SMTP host obeys the outbound policy: loopback only when allowed."""
    from reconciler.outbound import OutboundPolicy, parse_networks

    monkeypatch.setenv("SMTP_USER", SMTP_USER)
    monkeypatch.setenv("SMTP_PASSWORD", SMTP_PASSWORD)
    alert = Alert("safety_block", "c2", "owner@example.com", "blocked", {"run_id": "9"})
    with smtp_server() as (mailbox, port):
        with pytest.raises(AlertEmailError, match="allowNetworks"):
            send_alert_email(_settings(port), alert, policy=OutboundPolicy(()))
        assert mailbox.messages == []
        allowed = OutboundPolicy(parse_networks(["127.0.0.0/8"]))
        assert send_alert_email(_settings(port), alert, policy=allowed) == ["owner@example.com", "oncall@example.com"]
