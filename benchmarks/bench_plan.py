"""Plan over 1,000 campaign files (target: under 2 s end to end), plus apply and re-plan figures.

Run: .venv/bin/python benchmarks/bench_plan.py [--campaigns N] [--postgres DSN]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from git import Actor, Repo

from reconciler.apply import apply_plan
from reconciler.clock import FakeClock
from reconciler.gitsource import read_commit
from reconciler.loading import load_paths
from reconciler.plan import compute_plan, render_plan
from reconciler.store import AppliedState, open_state_store

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent

SCHEDULES = [
    'schedule: {cron: "0 %d * * *"}',
    'schedule: {every: {unit: months, day: 7, at: "%02d:30"}}',
    'schedule: {once: "2027-01-%02dT10:00:00"}',
]
LIVE = "trigger: {event: {name: signed_up}}"


def campaign(index: int, body_suffix: str = "") -> str:
    live = index % 4 == 3
    when = LIVE if live else SCHEDULES[index % 3] % (index % 24 if index % 3 != 2 else index % 28 + 1)
    return f"""\
apiVersion: herald/v1
kind: Campaign
metadata: {{name: campaign-{index:04d}, labels: {{team: team-{index % 7}}}}}
spec:
  type: {"live" if live else "past_behavior"}
  owner: team{index % 7}@example.com
  {when}
  timezone: {{mode: user, zone: Europe/Berlin}}
  dnd: {{start: "21:00", end: "09:00", action: delay}}
  audience:
    rules: {{property: {{name: plan, op: in, value: [pro, enterprise]}}}}
    safetyLimit: 50000
  message:
    body: "Hi {{{{ user.first_name | default: 'there' }}}}, offer {index} is live{body_suffix}. Shop: https://ex.am/{index}"
"""


CPU: dict[str, float] = {}


def timed(label: str, func: Callable[[], T], figures: dict[str, float]) -> T:
    """Wall time into `figures`, and this process's CPU time into CPU (steadier on a shared machine)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = func()
    figures[label] = time.perf_counter() - start
    CPU[label] = time.process_time() - cpu
    return result


def write_repo(root: Path, count: int) -> Repo:
    (root / "campaigns").mkdir(parents=True)
    for name in ("providers",):
        (root / name).mkdir()
        for src in (ROOT / name).glob("*.yaml"):
            (root / name / src.name).write_text(src.read_text())
    (root / "campaigns" / "settings.yaml").write_text((ROOT / "campaigns" / "settings.yaml").read_text())
    for index in range(count):
        (root / "campaigns" / f"c{index:04d}.yaml").write_text(campaign(index))
    repo = Repo.init(root, initial_branch="main")
    repo.index.add([str(p.relative_to(root)) for p in root.rglob("*.yaml")])
    bot = Actor("Bench", "bench@example.com")
    repo.index.commit("bench", author=bot, committer=bot)
    return repo


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaigns", type=int, default=1000)
    parser.add_argument("--postgres", help="also apply into this PostgreSQL DSN (a scratch schema is best)")
    args = parser.parse_args()
    clock = FakeClock(datetime(2026, 12, 1, 8, tzinfo=UTC))
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "repo"
        repo = write_repo(root, args.campaigns)

        snapshot = timed("git: read 1 commit", lambda: read_commit(repo), figures)
        loaded = timed("load + validate (from git blobs)", snapshot.load, figures)
        assert loaded.ok, [str(d) for d in loaded.errors[:5]]
        timed("load + validate (from directory)", lambda: load_paths([root / "providers", root / "campaigns"]),
              figures)
        plan = timed("plan vs empty state (all create, with impact)",
                     lambda: compute_plan(loaded.state, AppliedState.empty(), commit=snapshot.info, clock=clock),
                     figures)
        for fmt in ("text", "json", "markdown"):
            timed(f"render {fmt}", functools.partial(render_plan, plan, fmt), figures)
        steps = ("git: read 1 commit", "load + validate (from git blobs)",
                 "plan vs empty state (all create, with impact)", "render text")
        figures["END TO END: git read + load + plan + render text"] = sum(figures[s] for s in steps)
        CPU["END TO END: git read + load + plan + render text"] = sum(CPU[s] for s in steps)

        store = open_state_store(f"sqlite:///{tmp}/state.db", clock=clock)
        timed("apply (SQLite, one transaction)", lambda: apply_plan(store, plan, clock=clock, actor="bench"),
              figures)
        applied = timed("read applied state (SQLite)", store.applied_state, figures)
        for index in range(0, args.campaigns, 10):  # edit 10% of the campaigns
            (root / "campaigns" / f"c{index:04d}.yaml").write_text(campaign(index, " (edited)"))
        edited = load_paths([root / "providers", root / "campaigns"])
        replan = timed("re-plan with 10% edited", lambda: compute_plan(edited.state, applied, clock=clock), figures)
        assert replan.counts()["update"] == len(range(0, args.campaigns, 10))
        noop = timed("re-plan unchanged (no-op)", lambda: compute_plan(loaded.state, applied, clock=clock), figures)
        assert not noop.has_changes
        timed("apply 10% edits (SQLite)", lambda: apply_plan(store, replan, clock=clock, actor="bench"), figures)
        store.close()
        if args.postgres:
            pg = open_state_store(args.postgres, clock=clock)
            fresh = compute_plan(loaded.state, pg.applied_state(), clock=clock)
            timed("apply (PostgreSQL, one transaction)", lambda: apply_plan(pg, fresh, clock=clock, actor="bench"),
                  figures)
            pg.close()

    from reconciler.loading import CParser

    parser = "C (ruamel.yaml.clib) with pure fallback" if CParser is not None else "pure Python only"
    print(f"Plan benchmark: {args.campaigns} campaign files (+ example providers and settings); YAML parser: {parser}")
    print(f"  {'step':<52} {'wall':>8}    {'CPU':>8}")
    for label, seconds in figures.items():
        print(f"  {label:<52} {seconds * 1000:8.1f} ms {CPU.get(label, 0.0) * 1000:8.1f} ms")
    total = figures["END TO END: git read + load + plan + render text"]
    print(f"  target < 2000 ms end to end: {'met' if total < 2 else 'NOT met'} (wall)")


if __name__ == "__main__":
    main()
