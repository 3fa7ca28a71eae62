"""`herald demo`: the whole pipeline on the embedded default, end to end, in one command.

It starts the bundled mock provider, commits the shipped example desired state to a scratch git
repository, ingests a generated population of users and events, and then drives the engine through
simulated time (a FakeClock, so the demo takes seconds, not days): apply the commit, fire the
one-time flash sale in every user's own time zone, react to live events (welcome messages, an
abandoned cart after 5 minutes), record conversions, and print the report and the audit trail.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from git import Actor, Repo

from .audience.records import parse_event, parse_user
from .audience.store import open_audience_store
from .clock import FakeClock
from .config import RuntimeConfig
from .delivery import BatchOutcome
from .engine import Engine, TickResult
from .gitsource import GitSource
from .providers.mock_server import MockState, running_mock_server
from .runtime import Runtime
from .store import open_state_store

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIRS = ("providers", "campaigns")
DEMO_START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
DEMO_END = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)  # where run_demo's simulated clock stops
DEMO_SECRETS = {
    "TWILIO_AUTH_TOKEN": "demo-twilio-auth-token-7f3a",
    "VONAGE_API_SECRET": "demo-vonage-secret-19c2",
    "VONAGE_SIGNATURE_SECRET": "demo-vonage-signature-5d1e",
    "MSG91_AUTH_KEY": "demo-msg91-authkey-a8b0",
    "EXOTEL_API_TOKEN": "demo-exotel-token-44e1",
    "NETCORE_PASSWORD": "demo-netcore-password-c3f9",
    "ACME_API_KEY": "demo-acme-api-key-0b6d",
    "DLT_GATEWAY_TOKEN": "demo-dlt-gateway-token-e27a",
}
ZONES = [("US", "America/Los_Angeles"), ("US", "America/New_York"), ("GB", "Europe/London"),
         ("IN", "Asia/Kolkata"), ("DE", "Europe/Berlin")]
FIRST_NAMES = ["Asha", "Ben", "Chloé", "Dev", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kiran", "Lena"]


def example_sources(root: Path = PROJECT_ROOT) -> list[Path]:
    found = [root / d for d in EXAMPLE_DIRS if (root / d).is_dir()]
    if len(found) != len(EXAMPLE_DIRS):
        raise FileNotFoundError(f"the example repo ({', '.join(EXAMPLE_DIRS)}) is not under {root}; "
                                "run the demo from a checkout installed with `pip install -e .`")
    return found


def init_repo(dest: Path, sources: list[Path], message: str = "Add Herald desired state") -> str:
    """A git repository holding copies of `sources`, committed once; returns the commit SHA."""
    repo = Repo.init(dest, initial_branch="main")
    for source in sources:
        shutil.copytree(source, dest / source.name, dirs_exist_ok=True)
    return commit_all(repo, message)


def commit_all(repo: Repo, message: str, author: str = "Demo Author") -> str:
    repo.git.add(A=True)
    actor = Actor(author, "demo@example.com")
    return repo.index.commit(message, author=actor, committer=actor).hexsha


def sample_population(size: int, now: datetime, seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Deterministic users with phones, zones and properties, and their past purchases/launches."""
    rng = random.Random(seed)
    users: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for index in range(size):
        country, zone = ZONES[index % len(ZONES)]
        user_id = f"u{index:05d}"
        users.append({
            "id": user_id, "phone": demo_phone(country, index),
            "timezone": zone, "country": country, "created_at": (now - timedelta(days=60 + index % 30)).isoformat(),
            "first_name": FIRST_NAMES[index % len(FIRST_NAMES)], "promo_opt_in": index % 4 != 0,
            "plan": ["free", "pro", "enterprise"][index % 3], "balance": f"{rng.randint(5, 500)}.00",
        })
        for day in sorted(rng.sample(range(1, 29), k=rng.randint(0, 4))):
            events.append({"user_id": user_id, "name": "purchase", "ts": (now - timedelta(days=day)).isoformat(),
                           "amount": rng.randint(10, 200)})
    return users, events


def demo_phone(country: str, index: int) -> str:
    """A valid, unique number of the country in a range reserved for fiction or testing."""
    if country == "US":
        return f"+1{('415', '212')[index % 2]}555{index % 10000:04d}"
    if country == "GB":
        return f"+447400{index % 1000000:06d}"
    if country == "DE":
        return f"+4915112{index % 1000000:06d}"
    return f"+9198765{index % 100000:05d}"


@dataclass
class DemoWorld:
    """Everything the demo (and the end-to-end tests) run against."""

    engine: Engine
    clock: FakeClock
    repo: Repo
    mock_url: str
    workdir: Path
    loop: asyncio.AbstractEventLoop
    on_advance: Callable[[datetime], None] | None = None  # told the simulated time after each step

    def run(self, coro_factory: Callable[[], Awaitable[T]]) -> T:
        """Run a coroutine on the world's one event loop (the router's HTTP client lives there)."""
        return self.loop.run_until_complete(coro_factory())

    def step(self, *, sync: bool = True) -> tuple[TickResult, BatchOutcome]:
        return self.run(lambda: self.engine.step(sync=sync))

    def advance_to(self, moment: datetime, every: timedelta = timedelta(minutes=5)) -> None:
        """Move time forward in steps, ticking the engine at each one."""
        while self.clock.now() < moment:
            self.clock.set(min(moment, self.clock.now() + every))
            self.step(sync=False)
            if self.on_advance is not None:
                self.on_advance(self.clock.now())


@contextmanager
def demo_world(workdir: Path, *, population: int = 200, state_url: str | None = None,
               audience_url: str | None = None, start: datetime = DEMO_START,
               sources: list[Path] | None = None) -> Iterator[DemoWorld]:
    workdir.mkdir(parents=True, exist_ok=True)
    clock = FakeClock(start)
    repo_dir = workdir / "repo"
    if repo_dir.exists():
        shutil.rmtree(repo_dir)
    init_repo(repo_dir, sources or example_sources())
    repo = Repo(repo_dir)
    saved = {k: os.environ.get(k) for k in DEMO_SECRETS}
    os.environ.update(DEMO_SECRETS)
    store = open_state_store(state_url or f"sqlite:///{workdir / 'state.db'}", clock=clock)
    audience = open_audience_store(audience_url or f"duckdb:///{workdir / 'audience.duckdb'}")
    try:
        with running_mock_server(MockState(clock=lambda: clock.now().timestamp())) as mock_url:
            users, events = sample_population(population, start)
            audience.upsert_users([parse_user(u) for u in users], now=start)
            audience.insert_events([parse_event(e) for e in events])
            config = RuntimeConfig(provider_base_url=mock_url)
            rt = Runtime(store=store, audience=audience, clock=clock, config=config, actor="demo")
            engine = Engine(rt, GitSource(repo_dir, "main"), workers=2)
            loop = asyncio.new_event_loop()
            try:
                yield DemoWorld(engine, clock, repo, mock_url, workdir, loop)
            finally:
                loop.run_until_complete(engine.aclose())
                loop.close()
    finally:
        store.close()
        audience.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _events(world: DemoWorld, raw: list[dict[str, Any]]) -> None:
    """Ingest live events the way the HTTP endpoint does: store them, then run the live triggers."""
    records = [parse_event(e) for e in raw]
    world.engine.rt.audience.insert_events(records)
    world.engine.on_events(records)


def run_demo(workdir: Path, *, population: int = 300, fmt: str = "table",
             echo: Callable[[str], None] = print,
             progress: Callable[[datetime], None] | None = None) -> dict[str, Any]:
    """The demo story; returns the figures it printed (tests assert on them). `progress` is told the
    simulated time as it advances from DEMO_START to DEMO_END."""
    from .audit import render_table
    from .report import build_report, report_json, report_table, summary_dict
    from .store.base import AuditQuery

    with demo_world(workdir, population=population) as world:
        world.on_advance = progress
        store = world.engine.rt.store
        echo(f"mock provider on {world.mock_url}; {population} users ingested; simulated clock at "
             f"{world.clock.now():%Y-%m-%d %H:%M} UTC")
        world.step()
        applied = store.applied_state()
        echo(f"applied commit {applied.commit_sha[:10] if applied.commit_sha else '-'}: "
             f"{len(applied.objects)} objects (version {applied.version})")

        now = world.clock.now()
        signups = [{"user_id": f"u{i:05d}", "name": "signed_up", "ts": now.isoformat(),
                    "first_name": FIRST_NAMES[i % len(FIRST_NAMES)]} for i in range(3)]
        carts = [{"user_id": f"u{i:05d}", "name": "added_to_cart", "ts": now.isoformat(), "value": 45,
                  "product_name": "running shoes", "cart_id": f"c{i}"} for i in range(10, 14)]
        _events(world, signups + carts)
        _events(world, [{"user_id": "u00010", "name": "purchase", "ts": (now + timedelta(minutes=2)).isoformat(),
                         "amount": 45}])
        echo("live: 3 sign-ups (welcome), 4 carts of which 1 was bought within 5 minutes")
        world.advance_to(now + timedelta(minutes=10), every=timedelta(minutes=5))

        echo("advancing the clock through the flash sale (10:00 in every user's zone on 2026-12-04) "
             "and Friday's win-back …")
        world.advance_to(datetime(2026, 12, 5, 3, 0, tzinfo=UTC), every=timedelta(minutes=30))
        sent = store.list_outbox(campaign="flash-sale", statuses=["sent"], limit=100_000)
        buyers = [{"user_id": row.user_id, "name": "purchase",
                   "ts": ((row.sent_at or world.clock.now()) + timedelta(hours=3)).isoformat(), "amount": 60}
                  for row in sent[::4]]
        _events(world, buyers)
        world.advance_to(DEMO_END, every=timedelta(hours=1))
        receipts = world.run(lambda: post_delivery_receipts(world))
        echo(f"delivery receipts: {receipts} accepted through /receipts/{{provider}} (signed/tokened callbacks)")

        reports = build_report(store, world.engine.rt.audience, world.engine.state, now=world.clock.now())
        stats = world.run(lambda: _mock_stats(world.mock_url))
        if fmt == "json":
            echo(report_json(reports))
        else:
            echo("")
            echo(report_table(reports))
            echo("")
            echo("provider (mock) received: " + ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
            audit_entries = store.query_audit(AuditQuery(newest_first=True, limit=12))
            echo("")
            echo("audit (newest 12):")
            echo(render_table(list(reversed(audit_entries))))
        return {"reports": summary_dict(reports), "provider_messages": stats}


async def _mock_stats(base_url: str) -> dict[str, int]:
    import httpx

    async with httpx.AsyncClient() as client:
        data = (await client.get(f"{base_url}/_mock/stats")).json()
    providers = data.get("providers", {})
    return {name: int(counts.get("messages", 0)) for name, counts in providers.items()}


RECEIPT_BASE_URL = "http://herald.demo.local"


async def post_delivery_receipts(world: DemoWorld, *, undelivered_every: int = 17) -> int:
    """Play the providers' part: send a status callback for each sent message through the daemon's
    receipt endpoints (Twilio signed with the auth token, generic HTTP with its URL token). Batched
    generic providers answer with one batch id, so the mock gives no per-message receipt ids for them."""
    import httpx
    from starlette.applications import Starlette

    from .http.receipts import receipt_routes, twilio_signature
    from .providers.registry import receipt_token, with_token
    from .secrets import resolve_secret

    engine = world.engine
    app = Starlette(routes=receipt_routes(engine.state, engine.rt.store, clock=engine.rt.clock,
                                          public_base_url=RECEIPT_BASE_URL))
    accepted = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RECEIPT_BASE_URL) as client:
        for index, row in enumerate(engine.rt.store.list_outbox(statuses=["sent"], limit=100_000)):
            provider = engine.state.providers.get(row.provider or "")
            if provider is None or not row.provider_message_id:
                continue
            status = "undelivered" if index % undelivered_every == 0 else "delivered"
            url = f"{RECEIPT_BASE_URL}/receipts/{provider.name}"
            if provider.spec.type == "twilio":
                params = {"MessageSid": row.provider_message_id, "MessageStatus": status}
                token = resolve_secret(provider.spec.authToken)
                headers = {"X-Twilio-Signature": twilio_signature(token, url, params)}
                response = await client.post(url, data=params, headers=headers)
            elif provider.spec.type == "generic_http" and provider.spec.batching is None:
                params = {"message_id": row.provider_message_id, "status": status}
                response = await client.post(with_token(url, receipt_token(provider)), data=params)
            else:
                continue
            accepted += response.status_code < 300
    return accepted
