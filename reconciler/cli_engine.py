"""CLI: `herald run` (the daemon), `herald demo` (everything end to end), `herald report`."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from datetime import datetime
from pathlib import Path

import click

from .config import RuntimeConfig
from .secrets import RedactingFilter


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "git", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command("run")
@click.option("--repo", required=True, help="Local path or URL of the desired-state git repository.")
@click.option("--branch", default="main", show_default=True)
@click.option("--path", "paths", multiple=True, help="Only read these directories of the repo (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--poll-interval", default=30.0, show_default=True, type=float, help="Seconds between git polls.")
@click.option("--tick-interval", default=1.0, show_default=True, type=float)
@click.option("--workers", default=4, show_default=True, type=int, help="Concurrent delivery workers.")
@click.option("--claim-batch", "claim_batch", envvar="HERALD_CLAIM_BATCH", default=200, show_default=True,
              type=click.IntRange(min=1, max=10_000),
              help="Outbox rows a delivery worker claims at once (raised to a batching provider's batch size).")
@click.option("--state", "state_url", envvar="HERALD_STATE_URL", default=None, help="State store URL.")
@click.option("--audience", "audience_url", envvar="HERALD_AUDIENCE_URL", default=None,
              help="User/event store URL.")
@click.option("--allow-prune", is_flag=True, help="Apply commits even when the prune guard trips.")
@click.option("--override-freeze", is_flag=True, help="Apply commits even inside a freeze window (audited).")
@click.option("--lease", "lease_seconds", envvar="HERALD_LEASE_SECONDS", type=click.FloatRange(min=1.0),
              default=None, help="Seconds a crashed daemon's claimed runs, messages and timers stay locked "
              "before another worker takes them over (default: 5 min runs, 2 min messages and timers, "
              "30 s scheduler and git poll). Must exceed the time one batch takes to send.")
@click.option("--clock-offset", "clock_offset", envvar="HERALD_CLOCK_OFFSET", default=None,
              help="Tests and drills only: shift this daemon's clock by this many seconds (may be negative), "
              "to run it at another hour of the day or skewed against other daemons.")
@click.option("--public-url", "public_url", envvar="HERALD_PUBLIC_URL", default=None,
              help="Where providers reach this daemon (https://herald.example): status callbacks point there "
              "and provider signatures are checked against it.")
@click.option("--trusted-proxies", "trusted_proxies", envvar="HERALD_TRUSTED_PROXIES", default=None,
              help="Comma-separated CIDRs of reverse proxies whose Forwarded / X-Forwarded-* headers are believed.")
@click.option("-v", "--verbose", is_flag=True)
def run(repo: str, branch: str, paths: tuple[str, ...], host: str, port: int, poll_interval: float,
        tick_interval: float, workers: int, claim_batch: int, state_url: str | None, audience_url: str | None, allow_prune: bool,
        override_freeze: bool, lease_seconds: float | None, clock_offset: str | None, public_url: str | None,
        trusted_proxies: str | None, verbose: bool) -> None:
    """Run the reconciler daemon: poll git, apply, schedule, deliver, serve HTTP."""
    from .audience.store import open_audience_store
    from .clock import ClockOffsetError, SystemClock, parse_clock_offset
    from .daemon import Daemon, DaemonOptions, webhook_secret_from_env
    from .engine import Engine
    from .gitsource import GitSource
    from .http.proxies import ProxyConfigError, normalize_public_url, parse_networks
    from .linked import LinkedUrlPolicy
    from .runtime import Leases, Runtime
    from .store import open_state_store

    _configure_logging(verbose)
    try:
        clock = SystemClock(parse_clock_offset(clock_offset))
    except ClockOffsetError as exc:
        raise click.BadParameter(str(exc), param_hint="--clock-offset") from None
    try:
        public = normalize_public_url(public_url)
        parse_networks(trusted_proxies)
    except ProxyConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-url / --trusted-proxies") from None
    env = RuntimeConfig.from_env()
    config = RuntimeConfig(state_url=state_url or env.state_url, audience_url=audience_url or env.audience_url,
                           admin_token=env.admin_token, provider_base_url=env.provider_base_url,
                           public_url=public)
    for url in (config.state_url, config.audience_url):
        if ":///" in url and not url.endswith(":memory:"):
            Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    store = open_state_store(config.state_url, clock=clock)
    audience = open_audience_store(config.audience_url)
    rt = Runtime(store=store, audience=audience, config=config, clock=store.clock,
                 leases=Leases.uniform(lease_seconds) if lease_seconds else Leases())
    engine = Engine(rt, GitSource(repo, branch, paths=list(paths) or None), workers=workers, batch_size=claim_batch,
                    allow_prune=allow_prune, linked_policy=LinkedUrlPolicy.for_daemon(port),
                    override_freeze=override_freeze)
    options = DaemonOptions(host=host, port=port, poll_interval=poll_interval, tick_interval=tick_interval,
                            webhook_secret=webhook_secret_from_env(), public_base_url=public,
                            trusted_proxies=trusted_proxies)
    logging.getLogger("herald.daemon").info("herald %s: watching %s (%s) on http://%s:%d",
                                            rt.worker_id, repo, branch, host, port)
    try:
        asyncio.run(Daemon(engine, options).run())
    finally:
        store.close()
        audience.close()


@click.command("report")
@click.argument("campaign", required=False)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--state", "state_url", envvar="HERALD_STATE_URL", default=None)
@click.option("--audience", "audience_url", envvar="HERALD_AUDIENCE_URL", default=None)
def report(campaign: str | None, fmt: str, state_url: str | None, audience_url: str | None) -> None:
    """Runs, targeted, sent, delivered, failed, skipped, expired and converted per campaign."""
    from .apply import desired_from_applied
    from .audience.readers import open_for_reading
    from .audience.store import AudienceStoreError
    from .clock import SystemClock
    from .report import build_report, report_json, report_table
    from .secrets import redact
    from .store import StoreNotFoundError, open_state_store

    env = RuntimeConfig.from_env()
    try:
        store = open_state_store(state_url or env.state_url, create=False)
    except StoreNotFoundError:
        raise click.ClickException("no state store yet: nothing has been applied (see `herald apply`)") from None
    audience_path = audience_url or env.audience_url
    try:  # beside a running daemon: its snapshot of the store (reconciler.audience.readers)
        audience = open_for_reading(audience_path) if _exists(audience_path) else None
    except AudienceStoreError as exc:
        store.close()
        raise click.ClickException(redact(str(exc))) from None
    try:
        state = desired_from_applied(store.applied_state())
        if campaign and campaign not in state.campaigns and not store.list_runs(campaign=campaign, limit=1):
            raise click.ClickException(f"unknown campaign '{campaign}'")
        reports = build_report(store, audience, state, campaign=campaign, now=SystemClock().now())
        click.echo(report_json(reports) if fmt == "json" else report_table(reports))
    finally:
        store.close()
        if audience is not None:
            audience.close()


def _exists(url: str) -> bool:
    return not url.startswith("duckdb:///") or url.endswith(":memory:") or Path(url[len("duckdb:///"):]).exists()


@click.command("demo")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path(".herald/demo"),
              show_default=True, help="Scratch directory (recreated).")
@click.option("--users", "population", default=300, show_default=True, type=int)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
def demo(workdir: Path, population: int, fmt: str) -> None:
    """Run Herald end to end on the embedded default with the mock provider and the example repo."""
    from .cli_progress import progress_bar
    from .demo import DEMO_END, DEMO_START, run_demo

    if workdir.exists():
        shutil.rmtree(workdir)
    _configure_logging(False)
    logging.getLogger().setLevel(logging.WARNING)
    minutes = int((DEMO_END - DEMO_START).total_seconds() // 60)
    with progress_bar(minutes, "simulated time", show=lambda at: f"{at:%Y-%m-%d %H:%M} UTC" if at else None) as bar:

        def echo(line: str) -> None:
            bar.pause()  # the story's lines start on a clean line; the bar reappears below them
            click.echo(line)

        def advanced(now: datetime) -> None:
            bar.set(int((now - DEMO_START).total_seconds() // 60), now)

        run_demo(workdir, population=population, fmt=fmt, echo=echo, progress=advanced)


ENGINE_COMMANDS = (run, report, demo)
