"""Run `herald run` as a real subprocess against the mock provider, for crash and fault tests.

The mock provider runs in the test process (a uvicorn thread) so it outlives every daemon process
the test starts and kills: what it recorded is the ground truth of what "the provider" accepted.
A desired-state git repository is written to a temp directory with providers, settings without DND
or caps (so messages go out at once) and a campaign scheduled a few seconds from now (real clock).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from git import Actor, Repo

from reconciler.audience.records import parse_user
from reconciler.audience.store import open_audience_store
from reconciler.clock import CLOCK_OFFSET_ENV, SystemClock
from reconciler.demo import DEMO_SECRETS, DEMO_START, DemoWorld, demo_world, sample_population
from reconciler.providers.mock_server import MockState, running_mock_server

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "test-admin-token-93f1c"
WEBHOOK_SECRET = "test-webhook-secret-5e0a"
COHORT = "reliability"

PROVIDERS_YAML = """apiVersion: herald/v1
kind: Provider
metadata: {name: tw}
spec:
  type: twilio
  accountSid: AC00000000000000000000000000000001
  authToken: {secretRef: {env: TWILIO_AUTH_TOKEN}}
  from: "+14155550100"
  timeoutSeconds: TIMEOUT
---
apiVersion: herald/v1
kind: Provider
metadata: {name: vn}
spec:
  type: vonage
  apiKey: a1b2c3d4
  apiSecret: {secretRef: {env: VONAGE_API_SECRET}}
  from: Herald
  timeoutSeconds: TIMEOUT
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: main}
spec:
  default: true
  providers: [tw, vn]
  circuitBreaker: {failureThreshold: THRESHOLD, cooldownSeconds: COOLDOWN}
"""

SETTINGS_YAML = """apiVersion: herald/v1
kind: Settings
metadata: {name: global}
spec:
  defaultTimezone: UTC
  safety: {defaultLimit: 1000000}
  catchUp: {policy: latest, maxAge: 6h}
  outbound: {allowNetworks: ["127.0.0.0/8", "::1/128"]}  # stand-in servers (mock, listeners) on loopback
"""

CAMPAIGN_YAML = """apiVersion: herald/v1
kind: Campaign
metadata: {name: NAME}
spec:
  type: past_behavior
  owner: sre@example.com
  schedule: {once: "WHEN"}
  timezone: {mode: fixed, zone: UTC}
  audience:
    rules: {property: {name: cohort, op: eq, value: COHORT}}
  message: {body: "Hi {{ user.first_name }}, your code is {{ user.id }}"}
  providerGroup: main
"""


def providers_yaml(timeout: float = 5.0, cooldown: float = 2.0, threshold: int = 3) -> str:
    return (PROVIDERS_YAML.replace("TIMEOUT", f"{timeout:g}").replace("COOLDOWN", f"{cooldown:g}")
            .replace("THRESHOLD", str(threshold)))


def campaign_yaml(name: str, when: datetime, cohort: str = COHORT, *, everyone: bool = False) -> str:
    """A one-time campaign for the `cohort` users (or, with everyone=True, every user with a first name)."""
    stamp = when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = CAMPAIGN_YAML.replace("NAME", name).replace("WHEN", stamp).replace("COHORT", cohort)
    if everyone:
        text = text.replace(f"{{name: cohort, op: eq, value: {cohort}}}", "{name: first_name, op: exists}")
    return text


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the daemons' clock


def daemon_clock() -> SystemClock:
    """The clock the daemons of this test session run on: the real clock, shifted by HERALD_CLOCK_OFFSET
    (tests/conftest.py sets it once per session from HERALD_TEST_CLOCK_AT, e.g. `2026-03-29T00:59:30Z`,
    so the time-of-day check can place every real-clock test at another hour). Tests schedule and wait
    by this clock, never by datetime.now()."""
    return SystemClock()


def now() -> datetime:
    return daemon_clock().now()


# ---------------------------------------------------------------- desired-state repository


def write_repo(path: Path, files: dict[str, str], message: str = "desired state") -> Repo:
    """A git repository (branch main) holding `files` (repo-relative path → text), committed once."""
    repo = Repo.init(path, initial_branch="main")
    commit_files(repo, files, message)
    return repo


def commit_files(repo: Repo, files: dict[str, str], message: str, *, remove: Sequence[str] = ()) -> str:
    root = Path(repo.working_tree_dir or "")
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    for rel in remove:
        (root / rel).unlink()
    repo.git.add(A=True)
    actor = Actor("Reliability Test", "sre@example.com")
    return repo.index.commit(message, author=actor, committer=actor).hexsha


def standard_files(when: datetime | None = None, *, timeout: float = 0.5, campaign: str = "blast") -> dict[str, str]:
    """Providers (timeout well inside the daemons' send budget: 80% of --lease), settings, and a
    campaign at `when` (none without it)."""
    files = {"providers/providers.yaml": providers_yaml(timeout), "campaigns/settings.yaml": SETTINGS_YAML}
    if when is not None:
        files[f"campaigns/{campaign}.yaml"] = campaign_yaml(campaign, when)
    return files


@contextlib.contextmanager
def engine_world(tmp_path: Path, files: dict[str, str], *, population: int = 30,
                 start: datetime = DEMO_START) -> Iterator[DemoWorld]:
    """The in-process engine (FakeClock, SQLite, DuckDB, the mock) on a repository of `files`:
    reconciler.demo's world with its sample population, but our providers and campaigns."""
    source = tmp_path / "source"
    for rel, text in files.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text)
    dirs = sorted({source / Path(rel).parts[0] for rel in files})
    with demo_world(tmp_path / "world", population=population, start=start, sources=dirs) as world:
        yield world


def world_phones(population: int, start: datetime = DEMO_START) -> set[str]:
    users, _ = sample_population(population, start)
    return {u["phone"] for u in users}


# ---------------------------------------------------------------- audience


def us_phone(index: int) -> str:
    """Unique, valid US numbers in the 555 fiction range (index < 20,000)."""
    return f"+1{('415', '212')[index % 2]}555{index // 2 % 10000:04d}"


def population(size: int, cohort: str = COHORT) -> list[dict[str, Any]]:
    return [{"id": f"r{i:05d}", "phone": us_phone(i), "timezone": "UTC", "country": "US",
             "first_name": f"User{i}", "cohort": cohort} for i in range(size)]


def ingest(audience_url: str, users: list[dict[str, Any]]) -> None:
    store = open_audience_store(audience_url)
    try:
        store.upsert_users([parse_user(u) for u in users], now=now())
    finally:
        store.close()


# ---------------------------------------------------------------- the mock provider


@dataclass
class Mock:
    """The mock provider seen through its control endpoints (and its state, when in this process)."""

    url: str
    state: MockState | None = None

    def messages(self, provider: str | None = None) -> list[dict[str, Any]]:
        params = {"provider": provider} if provider else {}
        return list(httpx.get(f"{self.url}/_mock/messages", params=params, timeout=30).json()["messages"])

    def stats(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.url}/_mock/stats", timeout=30).json())

    def provider_stats(self, provider: str) -> dict[str, int]:
        return dict(self.stats()["providers"].get(provider, {}))

    def accepted(self) -> int:
        if self.state is None:
            return int(self.stats()["total"].get("messages", 0))
        with self.state.lock:
            return len(self.state.messages)

    def fault(self, provider: str, **fault: Any) -> None:
        httpx.post(f"{self.url}/_mock/faults", json={"provider": provider, **fault}, timeout=10).raise_for_status()

    def clear(self, provider: str) -> None:
        self.fault(provider, clear=True)


@contextlib.contextmanager
def mock_provider(seed: int = 1, **options: Any) -> Iterator[Mock]:
    clock = daemon_clock()  # the provider's clock is placed with the daemons' (HERALD_TEST_CLOCK_AT)
    state = MockState(seed=seed, clock=lambda: clock.now().timestamp(), **options)
    with running_mock_server(state) as url:
        yield Mock(url, state)


def exactly_once_report(mock: Mock, expected_phones: set[str]) -> dict[str, Any]:
    """What the provider accepted compared with what was intended."""
    received = mock.messages()
    per_phone = Counter(str(m["to"]) for m in received)
    per_key = Counter(str(m["idempotency_key"]) for m in received)
    stats = mock.stats()["total"]
    return {
        "accepted": len(received),
        "missing": sorted(expected_phones - set(per_phone)),
        "unexpected": sorted(set(per_phone) - expected_phones),
        "doubled": sorted(p for p, n in per_phone.items() if n > 1),
        "doubled_keys": sorted(k for k, n in per_key.items() if n > 1),
        "resends_absorbed": int(stats.get("duplicates", 0)),
        "requests": int(stats.get("requests", 0)),
    }


# ---------------------------------------------------------------- the daemon process


@dataclass
class DaemonProcess:
    """One `python -m reconciler.cli run …` process; restartable (each start is a new process)."""

    workdir: Path
    repo: str
    state_url: str
    audience_url: str
    mock_url: str
    port: int = field(default_factory=free_port)
    workers: int = 4
    lease_seconds: float = 3.0
    poll_interval: float = 1.0
    tick_interval: float = 0.2
    extra_env: dict[str, str] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    name: str = "daemon"
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    started_at: datetime | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        if os.environ.get(CLOCK_OFFSET_ENV):
            env[CLOCK_OFFSET_ENV] = os.environ[CLOCK_OFFSET_ENV]  # the session's clock (see daemon_clock)
        env.update(DEMO_SECRETS)
        env.update({
            "HERALD_PROVIDER_BASE_URL": self.mock_url,
            "HERALD_ADMIN_TOKEN": ADMIN_TOKEN,
            "HERALD_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "reconciler.cli", "run", "--repo", self.repo, "--branch", "main",
                "--port", str(self.port), "--state", self.state_url, "--audience", self.audience_url,
                "--poll-interval", f"{self.poll_interval:g}", "--tick-interval", f"{self.tick_interval:g}",
                "--workers", str(self.workers), "--lease", f"{self.lease_seconds:g}", *self.extra_args]

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.started_at = now()  # the daemon runs on this clock (and the clock tracer sees the test read it)
        log = self.log_path.open("ab")
        log.write(f"\n----- start {self.starts} -----\n".encode())
        log.flush()
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=self.env(), stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise AssertionError(f"{self.name} exited with {self.exit_code()}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.base_url}/healthz", timeout=2)
                if response.status_code == 200:
                    return dict(response.json())
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not healthy after {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no final batch, claimed rows stay claimed until their lease ends."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait for the graceful exit; SIGKILL if it does not come."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.exit_code()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def metrics(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text

    def healthz(self) -> dict[str, Any]:
        return dict(httpx.get(f"{self.base_url}/healthz", timeout=10).json())

    def sync(self) -> None:
        """Ask for a git sync now (POST /admin/sync with the admin token)."""
        answer = httpx.post(f"{self.base_url}/admin/sync", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                            timeout=10)
        assert answer.status_code == 202, answer.text

    def wait_applied(self, commit: str, timeout: float = 30.0) -> None:
        wait_for(lambda: self.healthz()["last_applied_commit"] == commit, timeout, f"{self.name} to apply {commit[:10]}",
                 on_timeout=self.log_tail)


def schedule_soon(repo: Repo, daemon: DaemonProcess, build: Callable[[datetime], dict[str, str]],
                  seconds: float = 2.0) -> datetime:
    """Commit `build(moment)` for a moment `seconds` from now and have the running daemon apply it at
    once, so the campaign exists before its moment however long the daemon took to start."""
    once = soon(seconds)
    sha = commit_files(repo, build(once), "schedule a campaign")
    daemon.sync()
    daemon.wait_applied(sha)
    assert now() < once, "the campaign was applied after its moment"
    return once


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05,
             on_timeout: Callable[[], str] | None = None) -> None:
    """Poll an external process's observable state (not a stand-in for time: the daemon runs on a real clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    detail = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{detail}")


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a Prometheus sample's values (matching `labels` when given) in exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
    return total


def soon(seconds: float) -> datetime:
    """A schedule moment `seconds` from now, to the second (on the daemons' clock)."""
    return (now() + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)


# ---------------------------------------------------------------- load


@dataclass
class LoadResult:
    """What a load run measured: requests, events, errors by status, latencies (seconds)."""

    seconds: float
    requests: int = 0
    events: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0

    def summary(self) -> str:
        return (f"{self.requests} requests, {self.events} events in {self.seconds:.1f}s: "
                f"{self.events_per_second:,.0f} events/s, {self.requests_per_second:,.0f} requests/s, "
                f"latency p50 {self.percentile(0.5) * 1000:.1f} ms, p99 {self.percentile(0.99) * 1000:.1f} ms, "
                f"max {max(self.latencies, default=0) * 1000:.1f} ms, errors {dict(self.errors) or 0}")


async def ingest_load(base_url: str, user_ids: Sequence[str], *, seconds: float, concurrency: int,
                      batch: int = 1, token: str = ADMIN_TOKEN, event_name: str = "page_view") -> LoadResult:
    """POST /v1/events from `concurrency` connections for `seconds`, `batch` events per request
    (bounded: each connection has one request in flight)."""
    import asyncio

    loop = asyncio.get_running_loop()
    result = LoadResult(seconds=seconds)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                 limits=limits, timeout=60) as client:
        began = loop.time()
        deadline = began + seconds

        async def connection(index: int) -> None:
            sent = 0
            while loop.time() < deadline:
                events = [{"user_id": user_ids[(index * 7919 + sent + k) % len(user_ids)], "name": event_name,
                           "path": f"/p/{sent % 50}"} for k in range(batch)]
                started = time.perf_counter()
                try:
                    answer = await client.post("/v1/events", json=events if batch > 1 else events[0])
                except httpx.HTTPError as exc:
                    result.errors[type(exc).__name__] += 1
                    continue
                result.latencies.append(time.perf_counter() - started)
                result.requests += 1
                sent += batch
                if answer.status_code == 202:
                    result.events += batch
                else:
                    result.errors[str(answer.status_code)] += 1

        await asyncio.gather(*(connection(i) for i in range(concurrency)))
        result.seconds = loop.time() - began
    return result
