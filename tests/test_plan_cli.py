"""`herald plan / apply / audit / pause / resume` through the click entry point (no subprocess)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from git import Actor, Repo

from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
SECRETS = {
    "TWILIO_AUTH_TOKEN": "twilio-secret-value-1", "VONAGE_API_SECRET": "vonage-secret-value-2",
    "VONAGE_SIGNATURE_SECRET": "vonage-signature-3", "MSG91_AUTH_KEY": "msg91-secret-value-4",
    "EXOTEL_API_TOKEN": "exotel-secret-value-5", "NETCORE_PASSWORD": "netcore-secret-value-6",
    "ACME_API_KEY": "acme-secret-value-7", "DLT_GATEWAY_TOKEN": "dlt-secret-value-8",
}


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(ROOT / "providers", tmp_path / "providers")
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HERALD_STATE_URL", f"sqlite:///{tmp_path}/.herald/state.db")
    monkeypatch.setenv("HERALD_ACTOR", "tester")
    return tmp_path


def herald(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_plan_without_a_state_store_plans_against_empty_state(workdir: Path) -> None:
    result = herald("plan")
    assert result.exit_code == 0, result.output
    assert "Against an empty applied state" in result.stdout
    assert "  + Campaign/flash-sale (create)" in result.stdout
    assert not (workdir / ".herald").exists()  # CI needs no daemon and leaves no state behind
    assert herald("plan", "--detailed-exitcode").exit_code == 2


def test_saved_plan_applies_once_then_is_stale(workdir: Path) -> None:
    planned = herald("plan", "--out", "plan.json", "--format", "json")
    assert planned.exit_code == 0
    assert json.loads(planned.stdout)["base_version"] == 0
    assert json.loads((workdir / "plan.json").read_text())["summary"]["create"] > 0
    applied = herald("apply", "plan.json")
    assert applied.exit_code == 0 and "applied-state version is now 1" in applied.stdout
    again = herald("apply", "plan.json")
    assert again.exit_code == 1 and "stale plan" in again.stderr
    assert herald("plan", "--detailed-exitcode").exit_code == 0
    audit = json.loads(herald("audit", "--action", "apply_refused", "--format", "json").stdout)
    assert [e["details"]["reason"] for e in audit] == ["stale_plan"]


def test_pause_and_resume_show_as_drift_and_in_audit(workdir: Path) -> None:
    herald("plan", "--out", "plan.json")
    herald("apply", "plan.json")
    paused = herald("pause", "flash-sale", "--reason", "complaints")
    assert paused.exit_code == 0 and "paused" in paused.stdout
    assert "already paused" in herald("pause", "flash-sale").stdout
    plan = herald("plan", "--format", "markdown").stdout
    assert "**Drift**" in plan and "flash-sale was paused outside git by tester" in plan
    assert herald("resume", "flash-sale").exit_code == 0
    assert "Drift" not in herald("plan").stdout
    entries = json.loads(herald("audit", "--campaign", "flash-sale", "--format", "json").stdout)
    assert [e["action"] for e in entries] == ["create", "pause", "resume"]
    assert entries[1]["details"]["reason"] == "complaints" and entries[1]["actor"] == "tester"
    table = herald("audit", "--campaign", "flash-sale").stdout
    assert table.splitlines()[0].split() == ["TIME", "ACTOR", "ACTION", "OBJECT", "COMMIT", "DETAILS"]
    unknown = herald("pause", "no-such-campaign")
    assert unknown.exit_code == 1 and "has not been applied" in unknown.stderr


def test_apply_from_a_git_repo_records_the_commit_and_guards_mass_deletes(workdir: Path) -> None:
    repo = Repo.init(workdir, initial_branch="main")
    repo.index.add([str(p.relative_to(workdir)) for p in workdir.rglob("*.yaml") if ".herald" not in p.parts])
    alice = Actor("Alice", "alice@example.com")
    sha = repo.index.commit("Initial campaigns", author=alice, committer=alice).hexsha
    no_tty = herald("apply", "--repo", str(workdir))
    assert no_tty.exit_code == 2 and "--yes" in no_tty.stderr
    applied = herald("apply", "--repo", str(workdir), "--ref", "main", "--yes")
    assert applied.exit_code == 0, applied.output
    assert f'Herald plan for commit {sha[:10]} "Initial campaigns" by Alice <alice@example.com>' in applied.stdout
    entries = json.loads(herald("audit", "--commit", sha[:7], "--format", "json").stdout)
    assert entries[0]["action"] == "apply" and entries[0]["commit"] == sha

    repo.index.remove(["campaigns/live.yaml", "campaigns/monthly-statement.yaml"], working_tree=True)
    delete_sha = repo.index.commit("Remove most campaigns", author=alice, committer=alice).hexsha
    refused = herald("apply", "--repo", str(workdir), "--yes")
    assert refused.exit_code == 1 and "prune guard" in refused.stderr
    assert herald("apply", "--repo", str(workdir), "--yes", "--allow-prune").exit_code == 0
    actions = [e["action"] for e in json.loads(herald("audit", "--commit", delete_sha, "--format", "json").stdout)]
    assert actions[0] == "apply_refused" and actions.count("delete") == 5


def test_invalid_desired_state_is_reported_with_positions(workdir: Path) -> None:
    (workdir / "campaigns" / "broken.yaml").write_text(
        "apiVersion: herald/v1\nkind: Campaign\nmetadata: {name: broken}\nspec: {type: live}\n")
    result = herald("plan")
    assert result.exit_code == 1
    assert "campaigns/broken.yaml:4" in result.stderr and "nothing planned" in result.stderr


def test_secret_values_never_reach_any_plan_format(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    herald("plan", "--out", "plan.json")
    herald("apply", "plan.json")
    groups = workdir / "providers" / "twilio.yaml"
    groups.write_text(groups.read_text().replace("TWILIO_AUTH_TOKEN", "VONAGE_API_SECRET"))
    outputs = [herald("plan", "--format", fmt, "--out", f"p-{fmt}.json").stdout for fmt in ("text", "json", "markdown")]
    outputs += [(workdir / f"p-{fmt}.json").read_text() for fmt in ("text", "json", "markdown")]
    outputs.append(herald("audit", "--format", "json").stdout)
    assert "VONAGE_API_SECRET" in outputs[0]  # references are shown...
    for text in outputs:
        for value in SECRETS.values():
            assert value not in text  # ...values never


def test_audit_without_a_store_and_bad_arguments(workdir: Path) -> None:
    missing = herald("audit")
    assert missing.exit_code == 2 and "no state store" in missing.stderr
    assert herald("audit", "--commit", "ab").exit_code == 2
    assert herald("apply").exit_code == 2
