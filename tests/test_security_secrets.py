"""No credential ever leaves the process: run the full demo and a daemon on the example repository,
capture every output — stdout, stderr, DEBUG logs, the audit log, reports, /metrics, /healthz, plans in
every format, every row of the state store and every file written — and grep them for each value
in DEMO_SECRETS (raw, URL-encoded and base64) and the receipt tokens derived from them."""

from __future__ import annotations

import base64
import io
import logging
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import httpx
import pytest
from click.testing import CliRunner
from daemon_harness import ADMIN_TOKEN, DaemonProcess, ingest, mock_provider, wait_for
from git import Repo

from reconciler.cli import main
from reconciler.demo import (
    DEMO_SECRETS,
    DEMO_START,
    commit_all,
    example_sources,
    init_repo,
    sample_population,
)
from reconciler.loading import load_paths
from reconciler.models.common import Secret
from reconciler.providers.registry import receipt_token
from reconciler.secrets import RedactingFilter, resolve_secret

ROOT = Path(__file__).resolve().parent.parent


def forbidden_strings() -> dict[str, str]:
    """Every form in which a secret could leak, by a label for the failure message."""
    found: dict[str, str] = {}
    for name, value in DEMO_SECRETS.items():
        found[name] = value
        found[f"{name} (url-encoded)"] = quote(value, safe="")
        found[f"{name} (form-encoded)"] = quote_plus(value)
        found[f"{name} (base64)"] = base64.b64encode(value.encode()).decode().rstrip("=")
    state = load_paths([ROOT / "providers", ROOT / "campaigns"]).state
    for provider in state.providers.values():
        token = receipt_token(provider, dict(DEMO_SECRETS))
        if token:
            found[f"receipt token of {provider.name}"] = token
    return found


def herald(*args: str, cwd: Path, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-m", "reconciler.cli", *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=120)
    return f"$ herald {' '.join(args)} (exit {result.returncode})\n{result.stdout}\n{result.stderr}"


def dump_sqlite(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return "\n".join(conn.iterdump())


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and ".git" not in p.parts}


def assert_clean(outputs: dict[str, str | bytes]) -> None:
    leaks = []
    for label, secret in forbidden_strings().items():
        for where, text in outputs.items():
            haystack = text if isinstance(text, str) else text.decode("latin-1")
            if secret in haystack:
                leaks.append(f"{label} in {where}")
    assert not leaks, leaks


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    """A herald command in this process (faster than a subprocess; the same stdout and stderr)."""
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return f"$ herald {' '.join(args)} (exit {result.exit_code})\n{result.output}"


def test_no_secret_appears_in_any_output_of_the_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env["PYTHONUNBUFFERED"] = "1"
    work = tmp_path / "demo"
    outputs: dict[str, str | bytes] = {}
    outputs["demo"] = herald("demo", "--workdir", str(work), "--users", "60", cwd=tmp_path, env=env)
    assert "flash-sale" in str(outputs["demo"]) and "(exit 0)" in str(outputs["demo"])
    state, audience = f"sqlite:///{work / 'state.db'}", f"duckdb:///{work / 'audience.duckdb'}"
    for fmt in ("table", "json"):
        outputs[f"audit {fmt}"] = cli("audit", "--state", state, "--format", fmt, "--limit", "100000")
        outputs[f"report {fmt}"] = cli("report", "--state", state, "--audience", audience, "--format", fmt)
    assert '"action": "send"' in str(outputs["audit json"])
    assert '"sent"' in str(outputs["report json"])
    outputs["state store"] = dump_sqlite(work / "state.db")
    outputs.update({f"file {k}": v for k, v in all_files(work).items()})

    for name, value in DEMO_SECRETS.items():
        monkeypatch.setenv(name, value)  # plans resolve nothing, but let them try
    monkeypatch.chdir(ROOT)
    for fmt in ("text", "json", "markdown"):
        outputs[f"plan {fmt}"] = cli("plan", "--format", fmt, "--previews", "providers", "campaigns")
        assert "(exit 0)" in str(outputs[f"plan {fmt}"]) or "(exit 2)" in str(outputs[f"plan {fmt}"])
    assert_clean(outputs)


def without_quiet_hours(repo: Path) -> str:
    """Drop the example repo's DND windows: the sample users live in five zones, so on the real clock
    some of them are always inside quiet hours and how many messages go out would depend on the hour
    the test runs at. Quiet hours are not what this test is about (they have their own FakeClock tests)."""
    for path in (repo / "campaigns" / "settings.yaml", repo / "campaigns" / "live.yaml"):
        text = path.read_text()
        kept = [line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("dnd:")]
        assert len(kept) < len(text.splitlines()), f"no dnd line in {path.name}: the example changed"
        path.write_text("".join(kept))
    return commit_all(Repo(repo), "no quiet hours")


@pytest.mark.realclock
def test_no_secret_appears_in_the_daemons_logs_metrics_or_state(tmp_path: Path) -> None:
    """The daemon on the example repository at DEBUG, sending live messages through every provider
    family while providers fail, time out and answer garbage."""
    repo = tmp_path / "repo"
    init_repo(repo, example_sources())
    head = without_quiet_hours(repo)
    users, _ = sample_population(40, DEMO_START)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, users)
    state_db = tmp_path / "state.db"
    with mock_provider() as mock:
        mock.fault("twilio", error_rate=1.0, status=401, times=3)  # auth failures quote the request …
        mock.fault("vonage", malformed=True, times=2)
        mock.fault("msg91", latency_ms=5_000, times=1)  # … timeouts quote the URL
        daemon = DaemonProcess(tmp_path / "d", str(repo), f"sqlite:///{state_db}", audience_url, mock.url,
                               poll_interval=600, extra_args=["-v"])
        daemon.start()
        outputs: dict[str, str | bytes] = {}
        try:
            daemon.wait_healthy()
            daemon.wait_applied(head)
            signups = [{"user_id": u["id"], "name": "signed_up", "first_name": u["first_name"]} for u in users[:20]]
            answer = httpx.post(f"{daemon.base_url}/v1/events", json=signups,
                                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
            assert answer.status_code == 202
            wait_for(lambda: mock.accepted() >= 15, 90, "welcome messages", poll=0.2, on_timeout=daemon.log_tail)
            outputs["metrics"] = daemon.metrics()
            outputs["healthz"] = httpx.get(f"{daemon.base_url}/healthz").text
            outputs["receipt probe"] = httpx.post(f"{daemon.base_url}/receipts/msg91-in", data={"x": "y"}).text
        finally:
            assert daemon.terminate() == 0
        assert "DEBUG" in daemon.log_text()
        outputs["daemon log"] = daemon.log_text()
        outputs["state store"] = dump_sqlite(state_db)
        assert "sent" in str(outputs["state store"])
    assert_clean(outputs)


def test_tracebacks_and_encoded_forms_are_redacted_in_logs() -> None:
    """LOG.exception used to print the traceback unredacted: the filter only cleaned the message."""
    secret = resolve_secret(Secret.model_validate({"secretRef": {"env": "LEAKY"}}), {"LEAKY": "s3cr3t/v@lue+1"})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("herald.test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise RuntimeError(f"provider said no to https://api.example/?key={quote_plus(secret)} ({secret})")
        except RuntimeError:
            log.exception("send failed for %s", quote(secret, safe=""))
        log.error("stack", stack_info=True)
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "RuntimeError" in text and "Traceback" in text
    for form in (secret, quote(secret, safe=""), quote_plus(secret)):
        assert form not in text
