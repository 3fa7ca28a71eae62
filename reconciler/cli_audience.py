"""`herald ingest users|events FILE` and `herald reach` (estimate, and the --check CI gate)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from .audience.ingest import IngestReport, ingest_file, load_snapshot
from .audience.reach import (
    SafetyVerdict,
    Selection,
    UnknownSegmentError,
    campaign_rules,
    safety_check,
    select_audience,
)
from .audience.readers import open_for_reading
from .audience.records import RecordError, parse_timestamp
from .audience.semantics import PredicateError
from .audience.store import AudienceStore, AudienceStoreError, open_audience_store
from .cli_progress import Progress, count_lines, progress_bar, shows_progress
from .cli_state import _actor_option, _state_option
from .clock import SystemClock
from .config import RuntimeConfig
from .consent import IngestLedger
from .diagnostics import render_diagnostics
from .models import Campaign
from .secrets import redact

DEFAULT_PATHS = ("providers", "campaigns")
MAX_PRINTED_ERRORS = 200
PROGRESS_EVERY_ROWS = 100_000


class InvalidState(click.ClickException):
    exit_code = 2


def _store_url(given: str | None) -> str:
    return given or RuntimeConfig.from_env().audience_url


def _now(given: str | None) -> datetime:
    if given is None:
        return SystemClock().now()
    try:
        return parse_timestamp(given)
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 timestamp: {given}", param_hint="--now") from None


@contextmanager
def _open_store(url: str, *, must_exist: bool) -> Iterator[AudienceStore]:
    if must_exist and url.startswith("duckdb:"):
        path = url.split("?")[0].removeprefix("duckdb:").removeprefix("///").removeprefix("//")
        if path not in ("", ":memory:") and not Path(path).exists():
            raise click.ClickException(f"no audience store at {path}: run 'herald ingest users FILE' first, "
                                       "set HERALD_AUDIENCE_URL, or pass --snapshot")
    try:  # a read beside a running daemon reads its snapshot (reconciler.audience.readers)
        store = open_for_reading(url) if must_exist else open_audience_store(url)
    except AudienceStoreError as exc:
        raise click.ClickException(redact(str(exc))) from None
    try:
        yield store
    finally:
        store.close()


# -- ingest ----------------------------------------------------------------------------------


@click.group()
def ingest() -> None:
    """Load users or events from a JSONL or CSV file into the audience store."""


def _progress_printer(label: str, bar: Progress) -> Any:
    state = {"next": PROGRESS_EVERY_ROWS}

    def show(report: IngestReport) -> None:
        if bar.enabled:
            bar.set(report.rows, report)
        elif report.rows >= state["next"]:
            state["next"] = report.rows + PROGRESS_EVERY_ROWS
            click.echo(f"{label}: {report.rows:,} rows, {report.accepted:,} stored, {report.rejected:,} rejected",
                       err=True)

    return show


def _run_ingest(kind: str, file: Path, fmt: str | None, batch_size: int, store_url: str | None,
                ledger: IngestLedger | None = None) -> None:
    now = SystemClock().now()
    label = f"{kind} {file.name}"
    rows = count_lines(file) if shows_progress() else 0  # a bar's length; only worth reading twice on a terminal
    with _open_store(_store_url(store_url), must_exist=False) as store, \
            progress_bar(rows, label, show=lambda r: f"{r.rejected:,} rejected" if r else None) as bar:
        try:
            report = ingest_file(store, file, kind, now=now, fmt=fmt, batch_size=batch_size,  # type: ignore[arg-type]
                                 progress=_progress_printer(label, bar), on_consent=ledger)
        except (OSError, RecordError) as exc:
            raise click.ClickException(str(exc)) from None
        except AudienceStoreError as exc:
            raise click.ClickException(redact(str(exc))) from None
        finally:
            if ledger is not None:
                ledger.close()
                _report_ledger(ledger)
    for error in report.errors[:MAX_PRINTED_ERRORS]:
        click.echo(f"{file}:{error.line}: {error.message}", err=True)
    if report.rejected > min(len(report.errors), MAX_PRINTED_ERRORS):
        click.echo(f"{file}: ... and {report.rejected - min(len(report.errors), MAX_PRINTED_ERRORS)} more "
                   "rejected rows", err=True)
    invalid = f", {report.invalid_phones:,} with invalid phone numbers (kept, never selected)" \
        if report.invalid_phones else ""
    click.echo(f"{kind}: {report.accepted:,} stored, {report.rejected:,} rejected of {report.rows:,} rows{invalid}",
               err=bool(report.rejected))
    sys.exit(1 if report.rejected else 0)


def _report_ledger(ledger: IngestLedger) -> None:
    """Say where the ingest's consent changes were recorded, and name each one that was not."""
    if ledger.recorded:
        click.echo(f"consent: {ledger.recorded:,} opt-out/opt-in changes recorded in {ledger.where} "
                   "(source ingest; 'herald optouts' lists them)", err=True)
    if not ledger.unrecorded:
        return
    click.echo(f"{ledger.file}: {ledger.unrecorded:,} consent changes are in the audience store (sends honour "
               f"them) but NOT in the consent ledger, so 'herald optouts' will not list them: state store {ledger.where}: "
               f"{ledger.error}",
               err=True)
    for row in ledger.unrecorded_rows[:MAX_PRINTED_ERRORS]:
        click.echo(f"{ledger.file}:{row.line}: not recorded: user {row.user_id} "
                   f"{'opted out' if row.opted_out else 'opted in'}", err=True)
    if ledger.unrecorded > MAX_PRINTED_ERRORS:
        click.echo(f"{ledger.file}: ... and {ledger.unrecorded - MAX_PRINTED_ERRORS:,} more not recorded", err=True)


def _ledger(file: Path, state_url: str, actor: str) -> IngestLedger:
    """Consent changes of a users ingest go to the state store at `state_url` (opened, and created when
    it is a new SQLite file, at the first change)."""
    from .store import open_state_store

    shown = redact(re.sub(r"(://)[^/@]+@", r"\1***@", state_url))
    return IngestLedger(lambda: open_state_store(state_url, clock=SystemClock()), SystemClock(), actor, str(file),
                        where=shown)


_format_option = click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
                              help="Input format (default: from the file name; .csv is CSV, else JSONL).")
_batch_option = click.option("--batch-size", type=click.IntRange(1, 100_000), default=5000, show_default=True)
_store_option = click.option("--store", "store_url", default=None, metavar="URL",
                             help="Audience store URL (default: HERALD_AUDIENCE_URL or duckdb:///.herald/audience.duckdb).")


@ingest.command("users")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_format_option
@_batch_option
@_store_option
@_state_option
@_actor_option
def ingest_users(file: Path, fmt: str | None, batch_size: int, store_url: str | None, state_url: str,
                 actor: str) -> None:
    """Upsert users from FILE. Exit 1 when any row was rejected (each is listed with its line).

    Each opt-out or opt-in the file changes is recorded in the consent ledger of the state store
    (--state; source ingest, message FILE:LINE). If that store cannot be opened or written, the
    ingest still completes and names each change that was not recorded."""
    _run_ingest("users", file, fmt, batch_size, store_url, _ledger(file, state_url, actor))


@ingest.command("events")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_format_option
@_batch_option
@_store_option
def ingest_events(file: Path, fmt: str | None, batch_size: int, store_url: str | None) -> None:
    """Append events from FILE. Exit 1 when any row was rejected (each is listed with its line)."""
    _run_ingest("events", file, fmt, batch_size, store_url)


# -- reach -----------------------------------------------------------------------------------


def _load_state(paths: list[str]) -> Any:
    from .loading import load_paths

    if not paths:
        paths = [p for p in DEFAULT_PATHS if Path(p).exists()]
        if not paths:
            raise click.UsageError("no PATH given and no providers/ or campaigns/ directory here")
    result = load_paths(paths)
    if not result.ok:
        # Reach only needs campaigns, segments and settings; other errors (an unknown provider group
        # when only campaigns/ is given) are herald validate's business. Say so, and go on.
        click.echo(render_diagnostics(result.errors, "text"), err=True)
        if not result.state.campaigns:
            raise InvalidState("no valid campaign found; fix the errors above (herald validate)")
        click.echo(f"warning: {len(result.errors)} validation errors (above); documents that failed to load "
                   "are not checked — run herald validate", err=True)
    return result.state


@contextmanager
def _reach_store(snapshots: tuple[Path, ...], store_url: str | None, now: datetime) -> Iterator[AudienceStore]:
    if not snapshots:
        with _open_store(_store_url(store_url), must_exist=True) as store:
            yield store
        return
    if len(snapshots) == 1 and snapshots[0].suffix == ".duckdb":
        with _open_store(f"duckdb:///{snapshots[0]}?read_only=true", must_exist=True) as store:
            yield store
        return
    with _open_store("duckdb:///:memory:", must_exist=False) as store:
        for path, report in load_snapshot(store, list(snapshots), now=now):
            for error in report.errors[:MAX_PRINTED_ERRORS]:
                click.echo(f"{path}:{error.line}: {error.message} (snapshot row skipped)", err=True)
        yield store


@click.command()
@click.argument("args", nargs=-1)
@click.option("--check", is_flag=True,
              help="CI gate: check every campaign in PATHS; exit 1 if any exceeds its safety limit.")
@click.option("--snapshot", "snapshots", multiple=True, type=click.Path(exists=True, path_type=Path),
              help="Evaluate on users/events from these files (users*.jsonl|csv, events*.jsonl|csv, a mixed "
                   "JSONL with \"type\": user|event, a directory of those, or a .duckdb copy) instead of the store.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--now", "now_text", default=None, metavar="ISO", help="Evaluate relative windows at this time.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for the random subset preview.")
@_store_option
def reach(args: tuple[str, ...], check: bool, snapshots: tuple[Path, ...], fmt: str, now_text: str | None,
          seed: int, store_url: str | None) -> None:
    """Estimate a campaign's reach: `herald reach CAMPAIGN [PATHS]`.

    With --check (`herald reach --check [PATHS]`), check every active campaign against its safety
    limit (campaign audience.safetyLimit, else Settings safety.defaultLimit) and exit 1 when any
    would be blocked. Exit 2 on usage errors or an invalid desired state.
    """
    now = _now(now_text)
    if check:
        _check(list(args), snapshots, fmt, now, store_url)
        return
    if not args:
        raise click.UsageError("name a CAMPAIGN (or use --check)")
    name, paths = args[0], list(args[1:])
    state = _load_state(paths)
    campaign = state.campaigns.get(name)
    if campaign is None:
        raise click.UsageError(f"no campaign named '{name}' in {', '.join(paths) or 'providers/ campaigns/'}")
    with _reach_store(snapshots, store_url, now) as store:
        try:
            selection = select_audience(store, campaign, state, now, seed=seed)
        except (UnknownSegmentError, PredicateError) as exc:
            raise click.ClickException(str(exc)) from None
    if fmt == "json":
        click.echo(json.dumps(selection.to_dict(), indent=2))
    else:
        click.echo(_describe(campaign, selection))


def _describe(campaign: Campaign, selection: Selection) -> str:
    audience = campaign.spec.audience
    source = " AND ".join(part for part in (
        f"segment {audience.segment}" if audience.segment else "",
        "inline rules" if audience.rules is not None else "") if part) or "all users"
    lines = [f"campaign {campaign.name} ({campaign.spec.type})",
             f"  qualified: {selection.qualified:,} reachable users match {source}"]
    for limit in selection.limits:
        shown = f"{limit.limit:g}%" if limit.name == "reachPercent" else f"{limit.limit:,.0f}"
        effect = " (binding)" if limit.binding else ""
        lines.append(f"  {limit.name} {shown}: allows {limit.allows:,}{effect}")
    lines.append(f"  target this run: {selection.target:,} (order: {selection.order})")
    lines.append(f"  safety: {_verdict_text(selection.safety)}")
    return "\n".join(lines)


def _verdict_text(verdict: SafetyVerdict) -> str:
    if verdict.limit is None:
        return "no safety limit applies"
    origin = "campaign" if verdict.source == "campaign" else "Settings default"
    status = "BLOCKED" if verdict.blocked else "ok"
    return f"{status} ({verdict.qualified:,} qualify, limit {verdict.limit:,} from {origin})"


def _check(paths: list[str], snapshots: tuple[Path, ...], fmt: str, now: datetime, store_url: str | None) -> None:
    state = _load_state(paths)
    results: list[dict[str, Any]] = []
    with _reach_store(snapshots, store_url, now) as store, \
            progress_bar(len(state.campaigns), "reach --check", show=lambda name: name) as bar:
        for name in sorted(state.campaigns):
            bar.advance(item=name)
            campaign = state.campaigns[name]
            if campaign.spec.paused:
                results.append({"campaign": name, "status": "skipped", "reason": "paused"})
                continue
            try:
                rules = campaign_rules(campaign, state)
                qualified, _ = store.reach_counts(rules, now, None)
            except (UnknownSegmentError, PredicateError) as exc:
                results.append({"campaign": name, "status": "error", "reason": str(exc)})
                continue
            verdict = safety_check(qualified, campaign, state.settings)
            status = "blocked" if verdict.blocked else ("ok" if verdict.limit is not None else "unlimited")
            results.append({"campaign": name, "status": status, "qualified": qualified, "limit": verdict.limit,
                            "source": verdict.source, "reason": verdict.reason})
    failed = [r for r in results if r["status"] in ("blocked", "error")]
    if fmt == "json":
        click.echo(json.dumps({"ok": not failed, "campaigns": results}, indent=2))
    else:
        for result in results:
            click.echo(_check_line(result))
        click.echo(f"{len(failed)} of {len(results)} campaigns would be blocked" if failed
                   else f"all {len(results)} campaigns are within their safety limits")
    sys.exit(1 if failed else 0)


def _check_line(result: dict[str, Any]) -> str:
    name, status = result["campaign"], result["status"]
    if status == "skipped":
        return f"skip    {name}: {result['reason']}"
    if status == "error":
        return f"ERROR   {name}: {result['reason']}"
    if status == "blocked":
        return (f"BLOCKED {name}: {_qualify(result['qualified'])}, more than the safety limit of "
                f"{result['limit']:,} ({'campaign' if result['source'] == 'campaign' else 'Settings default'})")
    if status == "unlimited":
        return f"ok      {name}: {_qualify(result['qualified'])} (no safety limit applies)"
    return f"ok      {name}: {_qualify(result['qualified'])}, limit {result['limit']:,}"


def _qualify(count: int) -> str:
    return "1 user qualifies" if count == 1 else f"{count:,} users qualify"


__all__ = ["ingest", "reach"]
