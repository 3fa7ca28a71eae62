"""`herald plan`, `herald apply`, `herald audit`, `herald pause`, `herald resume` (thin wrappers)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from .clock import SystemClock
from .config import RuntimeConfig
from .diagnostics import render_diagnostics
from .secrets import redact
from .store import StateStore, StoreError, StoreNotFoundError, open_state_store

if TYPE_CHECKING:
    from .gitsource import CommitInfo
    from .loading import DesiredState
    from .plan import ReachEstimator
    from .review import StoreReviewer
    from .store import AppliedState

PLAN_FORMATS = ("text", "json", "markdown")
F = TypeVar("F", bound=Callable[..., Any])


def _state_option(func: F) -> F:
    return click.option("--state", "state_url", envvar="HERALD_STATE_URL",
                        default=lambda: RuntimeConfig.from_env().state_url, show_default="HERALD_STATE_URL or "
                        "sqlite:///.herald/state.db", help="State store URL.")(func)


def _actor_option(func: F) -> F:
    return click.option("--actor", envvar="HERALD_ACTOR", default=lambda: _default_actor(),
                        show_default="HERALD_ACTOR or the login name", help="Who is recorded in the audit log.")(func)


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(redact(message), err=True)
    sys.exit(code)


@contextmanager
def _store(url: str, *, create: bool = True) -> Iterator[StateStore]:
    try:
        store = open_state_store(url, clock=SystemClock(), create=create)
    except StoreNotFoundError:
        raise
    except StoreError as exc:
        _fail(f"error: {exc}", 2)
    try:
        yield store
    finally:
        store.close()


def _load_desired(repo: str | None, ref: str | None,
                  paths: tuple[str, ...]) -> tuple[DesiredState, CommitInfo | None, str]:
    """(DesiredState, CommitInfo | None, source description) or exit 1 with diagnostics."""
    from .gitsource import GitSource, GitSourceError
    from .loading import load_paths

    if repo and paths:
        raise click.UsageError("give --repo or PATHS, not both")
    if repo:
        source = GitSource(repo, ref if ref else None)
        try:
            snapshot = source.read(None if source.remote else ref)
        except GitSourceError as exc:
            _fail(f"error: {exc}", 2)
        result = snapshot.load()
        info, label = snapshot.info, f"{source.display}@{snapshot.sha[:10]}"
    else:
        if ref:
            raise click.UsageError("--ref needs --repo")
        from .cli import _default_paths

        chosen = _default_paths(paths)
        result = load_paths(chosen)
        info, label = None, " ".join(chosen)
    if not result.ok:
        click.echo(render_diagnostics(result.diagnostics, "text"), err=True)
        _fail(f"invalid desired state: {len(result.errors)} error(s); nothing planned")
    return result.state, info, label


def _reach_estimator(enabled: bool) -> ReachEstimator | None:
    if not enabled:
        return None
    from .audience.reach import select_audience
    from .audience.readers import open_for_reading
    from .audience.store import AudienceStoreError
    from .models import Campaign

    try:  # beside a running daemon: its snapshot of the store
        audience = open_for_reading(RuntimeConfig.from_env().audience_url)
    except AudienceStoreError as exc:
        _fail(str(exc), 2)
    now = SystemClock().now()

    def estimate(campaign: Campaign, state: DesiredState) -> int | None:
        if campaign.spec.type != "past_behavior":
            return None
        return select_audience(audience, campaign, state, now, seed=0).target

    return estimate


def _base_applied(base_ref: str, repo: str | None, paths: tuple[str, ...]) -> AppliedState:
    """The desired state of git ref `base_ref` as an AppliedState (for reviewing a pull request)."""
    import os

    from git import Repo
    from git.exc import InvalidGitRepositoryError, NoSuchPathError

    from .gitsource import GitSourceError, is_remote, read_commit
    from .plan import applied_from_desired

    if repo is not None and is_remote(repo):
        raise click.UsageError("--base-ref needs a local repository (check it out, then plan its work tree)")
    try:
        repository = Repo(repo or (paths[0] if paths else "."), search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        _fail(f"error: --base-ref needs a git repository; {repo or (paths[0] if paths else '.')} is not in one", 2)
    root = repository.working_tree_dir or repository.git_dir
    relative: list[str] | None = None
    if repo is None:
        from .cli import _default_paths

        relative = []
        for path in _default_paths(paths):
            rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
            if rel.startswith(".."):
                raise click.UsageError(f"{path} is outside the repository of --base-ref ({root})")
            relative.append(rel.replace(os.sep, "/"))
    try:
        commit = repository.commit(base_ref)
        present = None if relative is None else [r for r in relative if r == "." or _in_tree(commit.tree, r)]
        snapshot = read_commit(repository, base_ref, present)
    except (GitSourceError, ValueError) as exc:
        _fail(f"error: {exc}", 2)
    except Exception:  # gitdb/gitpython raise several types for unknown refs
        _fail(f"error: unknown git ref '{base_ref}'", 2)
    loaded = snapshot.load()
    if loaded.errors:
        click.echo(f"warning: {base_ref} has {len(loaded.errors)} invalid document(s); they count as not "
                   "applied", err=True)
    return applied_from_desired(loaded.state, commit_sha=snapshot.sha, applied_at=snapshot.committed_at)


def _in_tree(tree: Any, path: str) -> bool:
    try:
        tree / path.strip("/")
    except KeyError:
        return False
    return True


@contextmanager
def _reviewer(enabled: bool, previews: bool, sample: Path | None, audience_url: str | None,
              samples: int) -> Iterator[StoreReviewer | None]:
    """Users for previews and costs: --sample FILE, else the audience store, else the built-in fixture."""
    if not enabled:
        yield None
        return
    from .audience.ingest import load_snapshot
    from .audience.store import AudienceStoreError, open_audience_store
    from .review import StoreReviewer, builtin_users

    now = SystemClock().now()
    if sample is None and audience_url:
        if audience_url.startswith("duckdb:///") and not audience_url.endswith(":memory:"):
            path = Path(audience_url.removeprefix("duckdb:///").split("?")[0])
            if not path.exists():
                _fail(f"error: no audience store at {path} (HERALD_AUDIENCE_URL / --audience)", 2)
        try:
            store = open_audience_store(audience_url)
        except AudienceStoreError as exc:
            _fail(f"error: {exc}", 2)
        reviewer = StoreReviewer(store, "audience", "the audience store", previews=previews, samples=samples)
    else:
        store = open_audience_store("duckdb:///:memory:")
        if sample is not None:
            for path, report in load_snapshot(store, [sample], now=now):
                for error in report.errors[:20]:
                    click.echo(f"{path}:{error.line}: {error.message} (sample row skipped)", err=True)
            reviewer = StoreReviewer(store, "sample", sample.name, previews=previews, samples=samples)
        else:
            store.upsert_users(builtin_users(), now=now)
            reviewer = StoreReviewer(store, "sample", "the built-in sample users", previews=previews,
                                     samples=samples)
    try:
        yield reviewer
    finally:
        store.close()


@click.command("plan")
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--repo", help="Git repository: a local path or a remote URL (then --ref is the branch).")
@click.option("--ref", help="Commit, tag or branch to plan (local default HEAD; remote default main).")
@click.option("--base-ref", metavar="REF", help="Plan against the desired state of this git ref (e.g. the pull "
              "request's base branch) as if it were applied, instead of a state store.")
@click.option("--format", "fmt", type=click.Choice(PLAN_FORMATS), default="text", show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the plan (JSON) for `herald apply FILE`.")
@click.option("--reach", "with_reach", is_flag=True, help="Estimate reach from the audience store.")
@click.option("--previews", is_flag=True, help="Show created/changed campaigns rendered for sample users "
              "(PII masked), their routes and estimated cost.")
@click.option("--check-budget", is_flag=True, help="CI gate: exit 1 when a campaign's estimated cost exceeds "
              "its budget.")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sample users (and events) for previews: JSONL, as for `herald ingest`.")
@click.option("--sample-count", "samples", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Sample users shown per campaign.")
@click.option("--audience", "audience_url", envvar="HERALD_AUDIENCE_URL", default=None,
              help="Audience store for previews, reach and cost (default: HERALD_AUDIENCE_URL if set; "
              "else the built-in sample users).")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when the plan has changes, 0 when none.")
@_state_option
@_actor_option
def plan_command(paths: tuple[str, ...], repo: str | None, ref: str | None, base_ref: str | None, fmt: str,
                 out: Path | None, with_reach: bool, previews: bool, check_budget: bool, sample: Path | None,
                 samples: int, audience_url: str | None, detailed_exitcode: bool, state_url: str,
                 actor: str) -> None:
    """Show what applying the desired state would change (PATHS, or a commit of --repo).

    Needs no daemon: without a state store it plans against an empty applied state; with
    --base-ref it plans against a git ref (a pull request's base). Exit 0 (or 2 with
    --detailed-exitcode and changes); 1 when the desired state is invalid or, with --check-budget,
    a campaign's estimate exceeds its budget.
    """
    from .audit import PLAN, AuditLog
    from .plan import compute_plan, render_plan
    from .store import AppliedState

    state, info, label = _load_desired(repo, ref, paths)
    clock = SystemClock()
    reach = _reach_estimator(with_reach)
    with _reviewer(previews or check_budget, previews, sample, audience_url, samples) as reviewer:
        if base_ref is not None:
            base = _base_applied(base_ref, repo, paths)
            plan = compute_plan(state, base, commit=info, source=label, clock=clock, reach=reach,
                                reviewer=reviewer, base_ref=base_ref)
        else:
            try:
                with _store(state_url, create=False) as store:
                    plan = compute_plan(state, store.applied_state(), commit=info, source=label, clock=clock,
                                        reach=reach, reviewer=reviewer)
                    AuditLog(store, clock, actor).record(PLAN, commit_sha=plan.commit_sha, details={
                        "changes": plan.counts(), "base_version": plan.base_version, "source": label,
                        "saved_to": str(out) if out else None, "prune_guard_tripped": plan.prune.tripped})
            except StoreNotFoundError:
                plan = compute_plan(state, AppliedState.empty(), commit=info, source=label, clock=clock,
                                    reach=reach, reviewer=reviewer)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(plan.to_json() + "\n", encoding="utf-8")
    click.echo(render_plan(plan, fmt), nl=False)
    if out is not None and fmt == "text":
        click.echo(f"\nSaved the plan to {out}. Apply exactly this plan with: herald apply {out}")
    exceeded = [b for b in plan.budgets if b.exceeded]
    if check_budget and exceeded:
        for check in exceeded:
            click.echo(redact(f"budget exceeded: {check.describe()}"), err=True)
        _fail(f"{len(exceeded)} campaign(s) exceed their budget")
    sys.exit(2 if detailed_exitcode and plan.has_changes else 0)


@click.command("apply")
@click.argument("plan_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--repo", help="Plan and apply this repository (local path or remote URL) instead of a plan file.")
@click.option("--ref", help="Commit, tag or branch (local default HEAD; remote default main).")
@click.option("--allow-prune", is_flag=True, help="Apply even if it deletes or pauses too many active campaigns.")
@click.option("--override-freeze", is_flag=True, help="Apply even inside a freeze window (audited).")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_state_option
@_actor_option
def apply_command(plan_file: Path | None, repo: str | None, ref: str | None, allow_prune: bool,
                  override_freeze: bool, yes: bool, state_url: str, actor: str) -> None:
    """Apply a saved plan (PLAN_FILE) or the commit --ref of --repo, atomically.

    A saved plan is refused when the applied state moved since it was computed (stale). Inside a
    freeze window of the applied Settings the apply is held unless --override-freeze. Exit 0 when
    applied or nothing to do, 1 when refused or held, 2 on usage or connection errors.
    """
    from .apply import ApplyRefused, apply_plan
    from .plan import Plan, compute_plan, render_plan

    if (plan_file is None) == (repo is None):
        raise click.UsageError("give a PLAN_FILE or --repo (with --ref), not both")
    clock = SystemClock()
    with _store(state_url) as store:
        if plan_file is not None:
            try:
                plan = Plan.from_json(plan_file.read_text(encoding="utf-8"))
            except (ValueError, KeyError, TypeError) as exc:
                _fail(f"error: {plan_file} is not a Herald plan: {exc}", 2)
        else:
            state, info, label = _load_desired(repo, ref, ())
            plan = compute_plan(state, store.applied_state(), commit=info, source=label, clock=clock)
            click.echo(render_plan(plan, "text"))
            if plan.has_changes and not yes:
                if not sys.stdin.isatty():
                    _fail("refusing to apply without confirmation; pass --yes", 2)
                click.confirm("Apply these changes?", abort=True)
        try:
            result = apply_plan(store, plan, clock=clock, actor=actor, allow_prune=allow_prune,
                                override_freeze=override_freeze)
        except ApplyRefused as exc:
            _fail(f"apply refused: {exc}")
    click.echo(result.describe())


def _parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"invalid time {value!r}; use ISO 8601 such as 2026-12-01T10:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@click.command("audit")
@click.option("--campaign", help="Only entries about this campaign.")
@click.option("--commit", help="Only entries caused by this commit (full SHA or a prefix of 4+ characters).")
@click.option("--action", "actions", multiple=True, help="Only these actions (repeatable), e.g. apply, send.")
@click.option("--since", help="From this ISO time (UTC when no offset).")
@click.option("--until", help="Before this ISO time.")
@click.option("--limit", type=click.IntRange(1, 100000), default=200, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@_state_option
def audit_command(campaign: str | None, commit: str | None, actions: tuple[str, ...], since: str | None,
                  until: str | None, limit: int, fmt: str, state_url: str) -> None:
    """Show the audit log (oldest first): who did what, to which object, for which commit."""
    from .audit import AuditLog, render_json, render_table

    if commit is not None and len(commit) < 4:
        raise click.BadParameter("give at least 4 characters of the SHA", param_hint="--commit")
    try:
        with _store(state_url, create=False) as store:
            entries = AuditLog(store, SystemClock()).query(
                campaign=campaign, commit=commit, actions=actions, since=_parse_time(since),
                until=_parse_time(until), limit=limit)
    except StoreNotFoundError as exc:
        _fail(f"error: {exc}", 2)
    click.echo(render_json(entries) if fmt == "json" else render_table(entries))


def _override(name: str, paused: bool, reason: str | None, state_url: str, actor: str) -> None:
    from .apply import set_campaign_paused

    verb = "paused" if paused else "resumed"
    try:
        with _store(state_url, create=False) as store:
            _, changed = set_campaign_paused(store, name, paused, clock=SystemClock(), actor=actor, reason=reason)
    except StoreNotFoundError as exc:
        _fail(f"error: {exc}", 2)
    except StoreError as exc:
        _fail(f"error: {exc}")
    if changed:
        click.echo(f"Campaign {name} {verb}. The next plan shows this as drift until git agrees.")
    else:
        click.echo(f"Campaign {name} is already {verb}; nothing changed.")


@click.command("pause")
@click.argument("campaign")
@click.option("--reason", help="Why (recorded in the audit log and shown in plans).")
@_state_option
@_actor_option
def pause_command(campaign: str, reason: str | None, state_url: str, actor: str) -> None:
    """Pause CAMPAIGN now, outside git: no new runs, queued messages wait (validity still applies)."""
    _override(campaign, True, reason, state_url, actor)


@click.command("resume")
@click.argument("campaign")
@click.option("--reason", help="Why (recorded in the audit log).")
@_state_option
@_actor_option
def resume_command(campaign: str, reason: str | None, state_url: str, actor: str) -> None:
    """Resume CAMPAIGN now, outside git (undoes `herald pause`, or overrides `paused: true` in git)."""
    _override(campaign, False, reason, state_url, actor)


STATE_COMMANDS = (plan_command, apply_command, audit_command, pause_command, resume_command)
