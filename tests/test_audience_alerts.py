"""Owner alerts: logged always, posted to a Slack-compatible webhook, redacted, never raising."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from test_audience_support import make_campaign, make_settings

from reconciler.alerts import LogAlertSink, WebhookAlertSink, alert_sink_from_settings, safety_block_alert
from reconciler.audience import safety_check
from reconciler.secrets import REDACTOR


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    received: list[dict[str, Any]]
    status: int


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.received.append(json.loads(self.rfile.read(length)))
        self.send_response(self.server.status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


@pytest.fixture
def webhook() -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.received, httpd.status = [], 200
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _blocked_alert() -> Any:
    campaign = make_campaign("flash", audience={"safetyLimit": 100})
    return safety_block_alert(campaign, safety_check(250, campaign, None), run_id="r-1")


def test_safety_alert_is_posted_as_slack_text(webhook: _Server, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{webhook.server_address[1]}/hooks/T000/B000/secretpath"
    sink = alert_sink_from_settings(make_settings(alerts={"webhookUrl": url}))
    assert isinstance(sink, WebhookAlertSink)
    with caplog.at_level(logging.WARNING, logger="herald.alerts"):
        assert sink.send(_blocked_alert())
    assert len(webhook.received) == 1
    text = webhook.received[0]["text"]
    assert set(webhook.received[0]) == {"text"}
    assert "flash" in text and "owner@example.com" in text and "250 users qualify" in text and "100" in text
    assert "250 users qualify" in caplog.text


def test_webhook_failures_are_logged_not_raised(webhook: _Server, caplog: pytest.LogCaptureFixture) -> None:
    webhook.status = 500
    url = f"http://127.0.0.1:{webhook.server_address[1]}/hook-token-xyz"
    sink = WebhookAlertSink(url)
    with caplog.at_level(logging.ERROR, logger="herald.alerts"):
        assert not sink.send(_blocked_alert())
    assert "HTTP 500" in caplog.text
    unreachable = WebhookAlertSink("http://127.0.0.1:9/nothing-listens", timeout=1)
    assert not unreachable.send(_blocked_alert())
    assert "hook-token-xyz" not in caplog.text


def test_alert_text_is_redacted(webhook: _Server) -> None:
    REDACTOR.register("sk_live_abcdef123")
    url = f"http://127.0.0.1:{webhook.server_address[1]}/h"
    alert = _blocked_alert()
    leaky = type(alert)(alert.kind, alert.campaign, alert.owner, alert.text + " token sk_live_abcdef123")
    WebhookAlertSink(url).send(leaky)
    assert "sk_live_abcdef123" not in webhook.received[0]["text"]


def test_without_a_webhook_alerts_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    sink = alert_sink_from_settings(make_settings())
    assert isinstance(sink, LogAlertSink)
    with caplog.at_level(logging.WARNING, logger="herald.alerts"):
        assert sink.send(_blocked_alert())
    assert "safety_block" in caplog.text and "flash" in caplog.text
