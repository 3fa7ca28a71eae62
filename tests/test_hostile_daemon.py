"""The daemon given the hostile corpus as commits (tests/hostile/, plus nesting 30,000 and 100,000
levels deep): every commit is refused without a crash or a stall, the last good state keeps running,
/healthz says `degraded` naming the refused commit's error, and a healthy campaign scheduled at the
same moment as the poisoned ones is delivered on time."""

from __future__ import annotations

import time
from pathlib import Path

from daemon_harness import (
    COHORT,
    DaemonProcess,
    campaign_yaml,
    commit_files,
    exactly_once_report,
    ingest,
    metric_value,
    mock_provider,
    now,
    population,
    soon,
    standard_files,
    wait_for,
    write_repo,
)

HOSTILE = Path(__file__).resolve().parent / "hostile"
USERS = 40
SECONDS_PER_COMMIT = 4.0  # generous: the daemon reads, validates and refuses each commit in well under 1 s


def hostile_commits() -> dict[str, str]:
    cases = {path.name: path.read_text() for path in sorted(HOSTILE.glob("*.yaml"))}
    cases["deep-30k.yaml"] = "[" * 30_000 + "]" * 30_000
    cases["deep-100k.yaml"] = "a: " + "{a: " * 100_000 + "}" * 100_000
    return cases


def test_hostile_commits_leave_the_last_good_state_running_and_healthy_campaigns_on_time(tmp_path: Path) -> None:
    users = population(USERS)
    audience_url = f"duckdb:///{tmp_path / 'audience.duckdb'}"
    ingest(audience_url, users)
    cases = hostile_commits()
    moment = soon(10 + SECONDS_PER_COMMIT * len(cases))
    repo = write_repo(tmp_path / "repo", standard_files(moment, campaign="healthy"))
    good = repo.head.commit.hexsha
    with mock_provider() as mock:
        daemon = DaemonProcess(tmp_path / "d", str(tmp_path / "repo"), f"sqlite:///{tmp_path / 'state.db'}",
                               audience_url, mock.url, poll_interval=600)
        daemon.start()
        try:
            daemon.wait_healthy()
            daemon.wait_applied(good)
            refused: dict[str, str] = {}
            for name, text in cases.items():
                poisoned = campaign_yaml("poisoned", moment, COHORT) + "---\n" + text
                sha = commit_files(repo, {"campaigns/hostile.yaml": poisoned}, f"hostile: {name}")
                daemon.sync()
                wait_for(lambda s=sha: _refused(daemon, s), 30, f"{name} to be refused", on_timeout=daemon.log_tail)
                health = daemon.healthz()
                assert daemon.running() and health["last_applied_commit"] == good, name
                assert health["status"] == "degraded", name
                [problem] = [p for p in health["problems"] if p["unit"] == "commit"]
                assert "has " in problem["reason"] and ".yaml:" in problem["reason"], (name, problem)
                refused[name] = problem["reason"][:160]
            assert now() < moment, "the hostile commits took longer than planned: raise SECONDS_PER_COMMIT"
            wait_for(lambda: now() >= moment, 120, "the campaigns' moment", poll=0.05)
            began = time.monotonic()
            wait_for(lambda: mock.accepted() >= USERS
                     and metric_value(daemon.metrics(), "herald_outbox_queue_depth") == 0,
                     60, "the healthy campaign", on_timeout=daemon.log_tail)
            late = time.monotonic() - began
            assert late < 30, f"the healthy campaign finished {late:.1f} s after its moment"
        finally:
            assert daemon.terminate() == 0
        report = exactly_once_report(mock, {u["phone"] for u in users})
        assert report["missing"] == [] and report["doubled"] == [] and report["accepted"] == USERS
        assert all("poisoned" not in str(m) for m in mock.messages())
    log = daemon.log_text()
    assert "Traceback" not in log and daemon.starts == 1
    print("\n" + "\n".join(f"{name}: {reason}" for name, reason in refused.items()))


def _refused(daemon: DaemonProcess, sha: str) -> bool:
    error = daemon.healthz()["last_error"] or {}
    return sha[:10] in str(error.get("message", ""))
