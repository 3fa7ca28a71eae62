"""`herald ingest` (JSONL/CSV, bad rows with line numbers) and `herald reach` (estimate, --check gate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_audience_support import NOW, phone

from reconciler.audience import open_audience_store, parse_user
from reconciler.audience.ingest import infer_cell
from reconciler.cli import main

ROOT = Path(__file__).resolve().parent.parent
NOW_ARG = ["--now", NOW.isoformat()]


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"duckdb:///{tmp_path}/audience.duckdb"


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_ingest_users_jsonl_reports_bad_rows_by_line(tmp_path: Path, store_url: str) -> None:
    source = write_jsonl(tmp_path / "users.jsonl", [
        {"id": "u1", "phone": phone(1), "plan": "pro"},
        "{broken",
        {"phone": phone(3)},
        "",
        {"id": "u5", "phone": phone(5), "timezone": "Nowhere/Land"},
        {"id": "u6", "phone": "000"},
        {"id": "u7", "phone": phone(7), "name": "Zoë 🎁"},
    ])
    result = run("ingest", "users", str(source), "--store", store_url)
    assert result.exit_code == 1
    assert f"{source}:2: invalid JSON" in result.stderr
    assert f"{source}:3: 'id' is required" in result.stderr
    assert f"{source}:5: unknown time zone" in result.stderr
    assert "3 stored, 3 rejected of 6 rows, 1 with invalid phone numbers" in result.stderr
    with open_audience_store(store_url) as store:
        assert store.stats().users == 3
        assert store.count(None, NOW) == 2
        zoe = store.get_user("u7")
        assert zoe is not None and zoe.properties["name"] == "Zoë 🎁"


def test_ingest_users_csv_infers_property_types(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "users.csv"
    source.write_text(
        "id,phone,country,opted_out,age,vip,plan,balance,properties.city,properties\n"
        "u1,4155550101,US,false,31,true,pro,12.50,Paris,\"{\"\"tags\"\": [\"\"a\"\"]}\"\n"
        "u2,+14155550102,,true,,,free,,,\n"
        "u3,+14155550103,US\n"
        "u4,0044207946,GB,maybe,1,,,,,\n"
        "u5,+14155550105,,,007,,,,,\"{not json\"\n", encoding="utf-8")
    result = run("ingest", "users", str(source), "--store", store_url, "--state", f"sqlite:///{tmp_path}/state.db")
    assert result.exit_code == 1
    assert "consent: 1 opt-out/opt-in changes recorded" in result.stderr  # u2 arrived opted out
    assert f"{source}:4: expected 10 cells, found 3" in result.stderr
    assert f"{source}:5: 'opted_out' must be true or false" in result.stderr
    assert f"{source}:6: the properties cell is not a JSON object" in result.stderr
    with open_audience_store(store_url) as store:
        u1 = store.get_user("u1")
        assert u1 is not None and u1.phone == "+14155550101"  # national number read with the country
        assert u1.properties == {"age": 31, "vip": True, "plan": "pro", "balance": 12.5, "city": "Paris", "tags": ["a"]}
        u2 = store.get_user("u2")
        assert u2 is not None and not u2.reachable and u2.properties == {"plan": "free"}


def test_infer_cell() -> None:
    assert [infer_cell(v) for v in ("true", "FALSE", "12", "-3", "1.5", "007", "1e5", "[1]", "{x", "abc")] == \
        [True, False, 12, -3, 1.5, "007", "1e5", [1], "{x", "abc"]


def test_ingest_events_jsonl_and_csv(tmp_path: Path, store_url: str) -> None:
    jsonl = write_jsonl(tmp_path / "events.jsonl", [
        {"user_id": "u1", "name": "purchase", "ts": "2026-11-30T10:00:00Z", "amount": 20},
        {"user_id": "u1", "name": "purchase"},
    ])
    result = run("ingest", "events", str(jsonl), "--store", store_url)
    assert result.exit_code == 1 and f"{jsonl}:2: 'ts' is required" in result.stderr
    csv_file = tmp_path / "more.csv"
    csv_file.write_text("user_id,name,ts,amount\nu1,purchase,2026-11-29T10:00:00Z,5\nu2,app_launched,2026-11-29,\n",
                        encoding="utf-8")
    assert run("ingest", "events", str(csv_file), "--store", store_url).exit_code == 0
    tsv = tmp_path / "events.txt"
    tsv.write_text("user_id,name,ts\nu3,x,2026-11-29T00:00:00Z\n", encoding="utf-8")
    assert run("ingest", "events", str(tsv), "--format", "csv", "--store", store_url).exit_code == 0
    with open_audience_store(store_url) as store:
        assert store.stats().events == 4
        assert [e.properties for e in store.events_for("u1", "purchase", None, now=NOW)] == [{"amount": 5},
                                                                                              {"amount": 20}]


def test_ingest_invalid_utf8_rows_are_reported(tmp_path: Path, store_url: str) -> None:
    source = tmp_path / "users.jsonl"
    source.write_bytes(b'{"id": "u1", "phone": "+14155550101"}\n{"id": "\xff"}\n')
    result = run("ingest", "users", str(source), "--store", store_url)
    assert result.exit_code == 1 and f"{source}:2: row is not valid UTF-8" in result.stderr


def test_ingest_is_batched(tmp_path: Path, store_url: str) -> None:
    source = write_jsonl(tmp_path / "users.jsonl", [{"id": f"u{i}", "phone": phone(i)} for i in range(25)])
    result = run("ingest", "users", str(source), "--store", store_url, "--batch-size", "10")
    assert result.exit_code == 0, result.stderr
    with open_audience_store(store_url) as store:
        assert store.count(None, NOW) == 25


def test_ingest_records_consent_changes_that_herald_optouts_exports(tmp_path: Path, store_url: str) -> None:
    state = f"sqlite:///{tmp_path}/state.db"
    first = write_jsonl(tmp_path / "users.jsonl", [
        {"id": "u1", "phone": phone(1), "opted_out": False}, {"id": "u2", "phone": phone(2), "opted_out": True},
        {"id": "u3", "phone": phone(3), "subscribed": False}])
    result = run("ingest", "users", str(first), "--store", store_url, "--state", state, "--actor", "ops")
    assert result.exit_code == 0, result.stderr
    assert f"consent: 2 opt-out/opt-in changes recorded in {state}" in result.stderr
    second = write_jsonl(tmp_path / "users-again.csv", [])
    second.write_text("id,opted_out\nu1,true\nu2,true\nu3,false\n")
    assert run("ingest", "users", str(second), "--store", store_url, "--state", state).exit_code == 0
    now_out = json.loads(run("optouts", "--state", state, "--format", "json").stdout)
    assert sorted((row["users"], row["source"], row["message"]) for row in now_out) == [
        (["u1"], "ingest", f"{second}:2"), (["u2"], "ingest", f"{first}:2")]
    history = json.loads(run("optouts", "--state", state, "--format", "json", "--all").stdout)
    assert [(row["users"][0], row["opted_out"]) for row in history] == [
        ("u2", True), ("u3", True), ("u1", True), ("u3", False)]
    assert history[0]["phone"] == phone(2)
    with open_audience_store(store_url) as store:
        assert store.unreachable(["u1", "u2", "u3"]) == {"u1": "opted_out", "u2": "opted_out"}


def test_ingest_without_a_reachable_state_store_names_what_was_not_recorded(tmp_path: Path, store_url: str) -> None:
    source = write_jsonl(tmp_path / "users.jsonl", [
        {"id": "u1", "phone": phone(1)}, {"id": "u2", "phone": phone(2), "opted_out": True},
        {"id": "u3", "phone": phone(3), "subscribed": False}])
    state = "postgresql://herald:hunter2-secret@127.0.0.1:1/state"  # nothing listens on port 1
    result = run("ingest", "users", str(source), "--store", store_url, "--state", state)
    assert result.exit_code == 0  # the ingest itself succeeded
    assert "users: 3 stored, 0 rejected of 3 rows" in result.stdout
    assert "2 consent changes are in the audience store (sends honour them) but NOT in the consent ledger" \
        in result.stderr
    assert "postgresql://***@127.0.0.1:1/state" in result.stderr and "hunter2" not in result.output
    assert f"{source}:2: not recorded: user u2 opted out" in result.stderr
    assert f"{source}:3: not recorded: user u3 opted out" in result.stderr
    with open_audience_store(store_url) as store:
        assert store.stats().opted_out == 2


# -- reach ----------------------------------------------------------------------------------------

CAMPAIGNS = """
apiVersion: herald/v1
kind: Settings
metadata: {name: global}
spec:
  safety: {defaultLimit: 5}
  secrets: {allow: [ACME_API_KEY, DLT_GATEWAY_TOKEN]}  # the example providers' header secrets
---
apiVersion: herald/v1
kind: Segment
metadata: {name: buyers}
spec:
  rules:
    event: {name: purchase, within: 30d}
---
apiVersion: herald/v1
kind: Campaign
metadata: {name: everyone}
spec:
  type: past_behavior
  owner: growth@example.com
  schedule: {once: "2026-12-24T10:00:00Z"}
  audience: {reachPercent: 50}
  message: {body: "Hi {{ user.first_name | default: 'there' }}"}
---
apiVersion: herald/v1
kind: Campaign
metadata: {name: buyers-only}
spec:
  type: past_behavior
  owner: growth@example.com
  schedule: {once: "2026-12-24T10:00:00Z"}
  audience: {segment: buyers, safetyLimit: 3, subset: {limit: 2}}
  message: {body: "Thanks!"}
---
apiVersion: herald/v1
kind: Campaign
metadata: {name: parked}
spec:
  type: past_behavior
  owner: growth@example.com
  paused: true
  schedule: {once: "2026-12-24T10:00:00Z"}
  message: {body: "Paused"}
"""


@pytest.fixture
def repo(tmp_path: Path) -> list[str]:
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    (campaigns / "all.yaml").write_text(CAMPAIGNS, encoding="utf-8")
    return [str(ROOT / "providers"), str(campaigns)]


def _snapshot(path: Path, users: int, buyers: int) -> Path:
    rows: list[Any] = [{"type": "user", "id": f"u{i}", "phone": phone(i)} for i in range(users)]
    rows += [{"type": "event", "user_id": f"u{i}", "name": "purchase", "ts": "2026-11-28T00:00:00Z"}
             for i in range(buyers)]
    return write_jsonl(path, rows)


def test_reach_check_fails_when_a_campaign_exceeds_its_limit(tmp_path: Path, repo: list[str]) -> None:
    snapshot = _snapshot(tmp_path / "snap.jsonl", users=8, buyers=4)
    result = run("reach", "--check", *repo, "--snapshot", str(snapshot), *NOW_ARG)
    assert result.exit_code == 1
    assert "BLOCKED buyers-only: 4 users qualify, more than the safety limit of 3 (campaign)" in result.stdout
    assert "BLOCKED everyone: 8 users qualify, more than the safety limit of 5 (Settings default)" in result.stdout
    assert "skip    parked: paused" in result.stdout
    assert "2 of 3 campaigns would be blocked" in result.stdout


def test_reach_check_passes_within_limits(tmp_path: Path, repo: list[str]) -> None:
    snapshot = _snapshot(tmp_path / "snap.jsonl", users=5, buyers=3)
    result = run("reach", "--check", *repo, "--snapshot", str(snapshot), *NOW_ARG, "--format", "json")
    assert result.exit_code == 0, result.stdout
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert {c["campaign"]: c["status"] for c in report["campaigns"]} == {
        "buyers-only": "ok", "everyone": "ok", "parked": "skipped"}


def test_reach_check_on_snapshot_directory_and_current_store(tmp_path: Path, repo: list[str], store_url: str) -> None:
    directory = tmp_path / "snap"
    directory.mkdir()
    write_jsonl(directory / "users.jsonl", [{"id": f"u{i}", "phone": phone(i)} for i in range(6)])
    write_jsonl(directory / "events.jsonl", [])
    assert run("reach", "--check", *repo, "--snapshot", str(directory), *NOW_ARG).exit_code == 1  # 6 > 5
    run("ingest", "users", str(directory / "users.jsonl"), "--store", store_url)
    assert run("reach", "--check", *repo, "--store", store_url, *NOW_ARG).exit_code == 1
    with open_audience_store(store_url) as store:
        store.upsert_users([parse_user({"id": "u0", "opted_out": True})], now=NOW)
    assert run("reach", "--check", *repo, "--store", store_url, *NOW_ARG).exit_code == 0  # 5 reachable


def test_reach_estimate(tmp_path: Path, repo: list[str]) -> None:
    snapshot = _snapshot(tmp_path / "snap.jsonl", users=40, buyers=3)
    text = run("reach", "buyers-only", *repo, "--snapshot", str(snapshot), *NOW_ARG)
    assert text.exit_code == 0
    assert "qualified: 3 reachable users match segment buyers" in text.stdout
    assert "subset 2: allows 2 (binding)" in text.stdout
    assert "target this run: 2 (order: random)" in text.stdout
    assert "safety: ok (3 qualify, limit 3 from campaign)" in text.stdout
    data = json.loads(run("reach", "everyone", *repo, "--snapshot", str(snapshot), *NOW_ARG, "--format", "json").stdout)
    assert data["qualified"] == 40 and 8 <= data["in_reach"] <= 32 and data["safety"]["blocked"] is True


def test_reach_usage_errors(tmp_path: Path, repo: list[str]) -> None:
    assert run("reach", "nope", *repo, "--snapshot", str(_snapshot(tmp_path / "s.jsonl", 1, 0))).exit_code == 2
    assert run("reach", *[]).exit_code == 2
    missing = run("reach", "everyone", *repo, "--store", f"duckdb:///{tmp_path}/absent.duckdb")
    assert missing.exit_code == 1 and "no audience store" in missing.stderr


def test_reach_check_on_campaigns_only_warns_about_unrelated_errors(tmp_path: Path) -> None:
    """`herald reach --check campaigns/` needs no providers: unknown groups are herald validate's business."""
    snapshot = _snapshot(tmp_path / "snap.jsonl", users=3, buyers=0)
    result = run("reach", "--check", str(ROOT / "campaigns"), "--snapshot", str(snapshot), *NOW_ARG)
    assert result.exit_code == 0
    assert "unknown provider group" in result.stderr and "warning:" in result.stderr
    assert "ok      holiday-coupons: 3 users qualify, limit 20,000" in result.stdout
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.yaml").write_text("apiVersion: herald/v1\nkind: Campaign\nmetadata: {name: x}\nspec: {}\n")
    assert run("reach", "--check", str(broken), "--snapshot", str(snapshot)).exit_code == 2
