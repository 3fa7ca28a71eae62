"""A deployment behind TLS and a proxy, end to end with `herald run` processes (real clock):

- started with --public-url https://public.example and a trusted proxy (127.0.0.1/32), the daemon
  asks Twilio for a StatusCallback to the public receipt URL with every message;
- status callbacks signed by the official twilio RequestValidator for the public URL are accepted and
  recorded: as signed, with the ':443' variant, with HMAC-SHA256 (X-Twilio-Webhooks-Signature-Settings),
  and for the URL a trusted proxy forwards (X-Forwarded-* and RFC 7239 Forwarded);
- tampered callbacks are refused, and a daemon that does not trust 127.0.0.1 refuses forwarded headers;
- STOP through the inbound webhook opts the user out, HELP is answered, `herald optouts` exports it
  while the daemon runs.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_harness import (
    ADMIN_TOKEN,
    ROOT,
    DaemonProcess,
    Mock,
    ingest,
    mock_provider,
    population,
    schedule_soon,
    standard_files,
    wait_for,
    write_repo,
)
from provider_callbacks import twilio_headers, twilio_inbound, twilio_status

from reconciler.demo import DEMO_SECRETS
from reconciler.store import open_state_store

PUBLIC = "https://public.example"
TOKEN = DEMO_SECRETS["TWILIO_AUTH_TOKEN"]
USERS = 4


@pytest.fixture
def mock() -> Iterator[Mock]:
    with mock_provider() as running:
        yield running


def _daemon(tmp_path: Path, mock: Mock, repo: str, trusted: str, name: str) -> DaemonProcess:
    return DaemonProcess(workdir=tmp_path / "work", repo=repo, state_url=f"sqlite:///{tmp_path / 'state.db'}",
                         audience_url=f"duckdb:///{tmp_path / 'audience.duckdb'}", mock_url=mock.url, name=name,
                         extra_args=["--public-url", PUBLIC, "--trusted-proxies", trusted])


def _post(daemon: DaemonProcess, path: str, form: dict[str, str], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{daemon.base_url}{path}", data=form, headers=headers, timeout=10)


def _delivery(state_url: str, sid: str) -> str | None:
    store = open_state_store(state_url, create=False)
    try:
        row = store.find_by_provider_message_id("tw", sid)
        return row.delivery_status if row else None
    finally:
        store.close()


def _twilio_sent(mock: Mock) -> list[dict[str, Any]]:
    return mock.messages("twilio")


def test_public_url_trusted_proxy_and_signatures_end_to_end(tmp_path: Path, mock: Mock) -> None:
    repo = write_repo(tmp_path / "repo", standard_files())
    ingest(f"duckdb:///{tmp_path / 'audience.duckdb'}", population(USERS))
    daemon = _daemon(tmp_path, mock, str(tmp_path / "repo"), "127.0.0.1/32", "trusting")
    daemon.start()
    try:
        daemon.wait_healthy()
        schedule_soon(repo, daemon, lambda when: {"campaigns/blast.yaml": standard_files(when)["campaigns/blast.yaml"]})
        wait_for(lambda: len(_twilio_sent(mock)) + len(mock.messages("vonage")) >= USERS, 60, "the campaign's sends",
                 on_timeout=daemon.log_tail)
        sent = _twilio_sent(mock)
        assert sent and all(m["fields"]["StatusCallback"] == f"{PUBLIC}/receipts/tw" for m in sent)
        message = sent[0]
        sid, to = message["provider_message_id"], message["to"]
        url = f"{PUBLIC}/receipts/tw"

        form = twilio_status(sid, "sent", to)
        assert _post(daemon, "/receipts/tw", form, twilio_headers(TOKEN, url, form)).status_code == 204
        assert _delivery(daemon.state_url, sid) == "sent"

        tampered = {**twilio_status(sid, "delivered", to)}
        headers = twilio_headers(TOKEN, url, tampered)
        tampered["MessageStatus"] = "undelivered"
        assert _post(daemon, "/receipts/tw", tampered, headers).status_code == 403
        wrong_url = twilio_status(sid, "delivered", to)
        assert _post(daemon, "/receipts/tw", wrong_url,
                     twilio_headers(TOKEN, "https://elsewhere.example/receipts/tw", wrong_url)).status_code == 403
        assert _delivery(daemon.state_url, sid) == "sent"

        with_port = twilio_status(sid, "sent", to)
        assert _post(daemon, "/receipts/tw", with_port,
                     twilio_headers(TOKEN, "https://public.example:443/receipts/tw", with_port)).status_code == 204
        sha256 = twilio_status(sid, "delivered", to)
        assert _post(daemon, "/receipts/tw", sha256,
                     twilio_headers(TOKEN, url, sha256, algorithm="HMAC_SHA256")).status_code == 204
        assert _delivery(daemon.state_url, sid) == "delivered"

        edge = twilio_status(sid, "delivered", to)
        forwarded = {**twilio_headers(TOKEN, "https://edge.example/receipts/tw", edge),
                     "X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"}
        assert _post(daemon, "/receipts/tw", edge, forwarded).status_code == 204
        rfc = {**twilio_headers(TOKEN, "https://edge2.example/receipts/tw", edge),
               "Forwarded": 'for=198.51.100.7;proto=https;host="edge2.example"'}
        assert _post(daemon, "/receipts/tw", edge, rfc).status_code == 204

        user_phone = to
        stop = twilio_inbound(user_phone, "STOP")
        answer = _post(daemon, "/inbound/tw", stop, twilio_headers(TOKEN, f"{PUBLIC}/inbound/tw", stop))
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
        help_ = twilio_inbound(user_phone, "HELP")
        assert _post(daemon, "/inbound/tw", help_,
                     twilio_headers(TOKEN, f"{PUBLIC}/inbound/tw", help_)).status_code == 200
        wait_for(lambda: any("STOP to unsubscribe" in m["body"] for m in mock.messages("twilio") if m["to"] == user_phone),
                 30, "the HELP reply")
        exported = subprocess.run([sys.executable, "-m", "reconciler.cli", "optouts", "--state", daemon.state_url],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
        assert exported.returncode == 0, exported.stderr
        rows = list(csv.DictReader(io.StringIO(exported.stdout)))
        assert [(r["phone"], r["source"], r["provider"]) for r in rows] == [(user_phone, "keyword", "tw")]
    finally:
        assert daemon.terminate() == 0, daemon.log_tail()

    untrusting = _daemon(tmp_path, mock, str(tmp_path / "repo"), "192.0.2.0/24", "untrusting")
    untrusting.start()
    try:
        untrusting.wait_healthy()
        again = twilio_status(sid, "delivered", to)
        spoofed = {**twilio_headers(TOKEN, "https://edge.example/receipts/tw", again),
                   "X-Forwarded-Proto": "https", "X-Forwarded-Host": "edge.example"}
        assert _post(untrusting, "/receipts/tw", again, spoofed).status_code == 403
        rfc_spoofed = {**twilio_headers(TOKEN, "https://edge2.example/receipts/tw", again),
                       "Forwarded": "proto=https;host=edge2.example"}
        assert _post(untrusting, "/receipts/tw", again, rfc_spoofed).status_code == 403
        assert _post(untrusting, "/receipts/tw", again, twilio_headers(TOKEN, url, again)).status_code == 204
    finally:
        assert untrusting.terminate() == 0, untrusting.log_tail()


def test_bad_public_url_and_proxy_list_are_usage_errors(tmp_path: Path) -> None:
    for args in (["--public-url", "ftp://x.example"], ["--trusted-proxies", "10.0.0.0/8, not-a-net"]):
        result = subprocess.run([sys.executable, "-m", "reconciler.cli", "run", "--repo", str(tmp_path), *args,
                                 "--state", f"sqlite:///{tmp_path / 's.db'}"],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path, check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler.cli", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env, check=False)


def test_read_commands_beside_a_running_daemon_on_the_embedded_store(tmp_path: Path, mock: Mock) -> None:
    """`herald report`, `reach`, `audit` and `optouts` while `herald run` holds the DuckDB file: read
    through the daemon's snapshot with the admin token; without it a clear message, never a traceback."""
    repo = write_repo(tmp_path / "repo", standard_files())
    ingest(f"duckdb:///{tmp_path / 'audience.duckdb'}", population(USERS))
    daemon = _daemon(tmp_path, mock, str(tmp_path / "repo"), "127.0.0.1/32", "reader")
    daemon.start()
    try:
        daemon.wait_healthy()
        schedule_soon(repo, daemon, lambda when: {"campaigns/blast.yaml": standard_files(when)["campaigns/blast.yaml"]})
        wait_for(lambda: mock.accepted() >= USERS, 60, "the campaign's sends", on_timeout=daemon.log_tail)
        base = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        stores = {"HERALD_STATE_URL": daemon.state_url, "HERALD_AUDIENCE_URL": daemon.audience_url}
        env = {**base, **stores, "HERALD_ADMIN_TOKEN": ADMIN_TOKEN, "HERALD_DAEMON_URL": daemon.base_url}
        report = _cli("report", "--format", "json", env=env, cwd=tmp_path)
        assert report.returncode == 0 and "Traceback" not in report.stderr, report.stderr
        assert '"blast"' in report.stdout
        reach = _cli("reach", "blast", str(tmp_path / "repo" / "providers"), str(tmp_path / "repo" / "campaigns"),
                     "--format", "json", env=env, cwd=tmp_path)
        assert reach.returncode == 0, reach.stderr
        assert json.loads(reach.stdout)["qualified"] == USERS
        audit = _cli("audit", "--campaign", "blast", env=env, cwd=tmp_path)
        assert audit.returncode == 0 and "send" in audit.stdout, audit.stderr
        optouts = _cli("optouts", env=env, cwd=tmp_path)
        assert optouts.returncode == 0 and optouts.stdout.startswith("at,phone"), optouts.stderr

        no_token = {**base, **stores}
        refused = _cli("report", env=no_token, cwd=tmp_path)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "HERALD_ADMIN_TOKEN" in refused.stderr and "herald run" in refused.stderr
        wrong = _cli("reach", "blast", str(tmp_path / "repo" / "campaigns"), str(tmp_path / "repo" / "providers"),
                     env={**no_token, "HERALD_ADMIN_TOKEN": "wrong", "HERALD_DAEMON_URL": daemon.base_url}, cwd=tmp_path)
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        assert daemon.terminate() == 0, daemon.log_tail()
