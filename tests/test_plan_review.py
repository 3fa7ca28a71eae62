"""The pull-request review flow: `herald plan --base-ref main --format markdown --previews` on a
feature branch, previews with masked PII, routes and costs, and the `--check-budget` gate.

A real git repository (main + feature branch), the CLI through click (no subprocess), the built-in
sample users, a sample file and a DuckDB audience store.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from git import Actor, Repo

from reconciler.audience.records import parse_user
from reconciler.audience.store import open_audience_store
from reconciler.cli import main
from reconciler.clock import SystemClock
from reconciler.loading import load_paths
from reconciler.plan import Plan
from reconciler.providers.group import GroupRouter
from reconciler.review import mask_phone, route_group

ROOT = Path(__file__).resolve().parent.parent
ALICE = Actor("Alice", "alice@example.com")

# 170 GSM-7 characters after rendering: two segments. US users only, at most 2,000 per run.
BLACK_FRIDAY = """\
apiVersion: herald/v1
kind: Campaign
metadata:
  name: black-friday
spec:
  type: past_behavior
  owner: growth@example.com
  schedule: {{cron: "0 10 * * 5"}}
  timezone: {{mode: fixed, zone: America/New_York}}
  audience:
    rules:
      property: {{name: country, op: eq, value: US}}
    runLimit: 2000
  message:
    body: "Hi {{{{ user.first_name }}}} {{{{ user.last_name }}}}, {padding}"
  providerGroup: global
  budget: {{amount: {budget}, currency: USD, per: run}}
"""


def black_friday(budget: float) -> str:
    return BLACK_FRIDAY.format(budget=budget, padding="x" * 150)


def herald(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def pr_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Repo:
    """main holds the examples; the checked-out branch `feature` adds black-friday and edits a coupon."""
    shutil.copytree(ROOT / "providers", tmp_path / "providers")
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HERALD_AUDIENCE_URL", raising=False)
    monkeypatch.setenv("HERALD_STATE_URL", f"sqlite:///{tmp_path}/.herald/state.db")
    repo = Repo.init(tmp_path, initial_branch="main")
    repo.index.add([str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.yaml")])
    repo.index.commit("Campaigns on main", author=ALICE, committer=ALICE)
    repo.git.checkout("-b", "feature")
    (tmp_path / "campaigns" / "black-friday.yaml").write_text(black_friday(20))
    coupons = tmp_path / "campaigns" / "holiday-reminders.yaml"
    coupons.write_text(coupons.read_text().replace("your holiday coupon", "your festive coupon"))
    repo.index.add(["campaigns/black-friday.yaml", "campaigns/holiday-reminders.yaml"])
    repo.index.commit("Black Friday campaign; festive coupon text", author=ALICE, committer=ALICE)
    return repo


def test_markdown_comment_shows_changes_previews_and_cost(pr_repo: Repo) -> None:
    result = herald("plan", "--base-ref", "main", "--format", "markdown", "--previews", "providers", "campaigns")
    assert result.exit_code == 0, result.output
    comment = result.stdout
    base_sha = pr_repo.commit("main").hexsha
    assert "**1 to create, 1 to update, 0 to delete, 0 to pause, 0 to resume," in comment
    assert f"against `main` (`{base_sha[:10]}`)" in comment
    assert "| `+` | `Campaign/black-friday` | create |" in comment
    assert "| `~` | `Campaign/holiday-coupons` | update |" in comment
    assert "Campaign/flash-sale" not in comment  # unchanged objects stay out of the review

    assert "<details open><summary><code>Campaign/black-friday</code>: previews and cost</summary>" in comment
    assert "| User | Country | Phone | Route | Encoding | Segments | Cost | Message |" in comment
    # The only US sample user: phone masked, first name kept, last name masked; 2 GSM-7 segments at 0.0079.
    row = next(line for line in comment.splitlines() if line.startswith("| `sample-us-1` |"))
    assert "| US | +1•••••0100 | global/twilio-us | GSM-7 | 2 | 0.0158 USD | Hi Avery S•••, xxx" in row
    assert "+14155550100" not in comment and "Avery Sample" not in comment
    assert "next run ≈ 31.60 USD (2,000 users, at most: runLimit, x 2 segments)" in comment
    assert "routes: US → global/twilio-us 0.0079 USD/segment; other → global/twilio-us 0.05 USD/segment" in comment

    coupons = comment.split("<code>Campaign/holiday-coupons</code>: previews and cost")[1]
    assert "your festive coupon 🎁" in coupons and "| UCS-2 |" in coupons
    assert "> **Budget exceeded** — `herald plan --check-budget` fails:" in comment
    assert "| ❌ | `black-friday` | 20.00 USD per run | 31.60 USD |" in comment
    assert "| ✅ | `holiday-coupons` | 50.00 USD per run | 7.90 USD |" in comment


def test_budget_gate_fails_the_pull_request_until_the_budget_fits(pr_repo: Repo) -> None:
    failed = herald("plan", "--base-ref", "main", "--check-budget", "providers", "campaigns")
    assert failed.exit_code == 1
    assert ("budget exceeded: Campaign/black-friday: budget 20.00 USD per run: EXCEEDED, estimated 31.60 USD"
            in failed.stderr)
    assert "1 campaign(s) exceed their budget" in failed.stderr

    workdir = Path(pr_repo.working_tree_dir or "")
    (workdir / "campaigns" / "black-friday.yaml").write_text(black_friday(40))
    pr_repo.index.add(["campaigns/black-friday.yaml"])
    pr_repo.index.commit("Raise the Black Friday budget", author=ALICE, committer=ALICE)
    passed = herald("plan", "--base-ref", "main", "--check-budget", "providers", "campaigns")
    assert passed.exit_code == 0, passed.output
    assert "✓ Campaign/black-friday: budget 40.00 USD per run: ok, estimated 31.60 USD" in passed.stdout


def test_json_plan_carries_the_review_and_cannot_be_applied(pr_repo: Repo) -> None:
    result = herald("plan", "--base-ref", "main", "--format", "json", "--previews", "--out", "review.json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["base_ref"] == "main" and data["base_commit"] == pr_repo.commit("main").hexsha
    change = next(c for c in data["changes"] if c["name"] == "black-friday")
    cost = change["impact"]["cost"]
    assert cost["next_run"] == {"USD": 31.6} and cost["reach"] == 2000 and cost["segments"] == 2
    assert cost["runs_30d"] in (4, 5) and cost["month"] == {"USD": round(31.6 * cost["runs_30d"], 6)}
    assert [p["user"] for p in change["impact"]["previews"]] == ["sample-us-1"]
    assert Plan.from_json(result.stdout).changes == Plan.from_json(Path("review.json").read_text()).changes

    refused = herald("apply", "review.json")
    assert refused.exit_code == 1 and "computed against git ref main, not a state store" in refused.stderr


def test_base_ref_without_changes_and_unknown_ref(pr_repo: Repo) -> None:
    same = herald("plan", "--base-ref", "feature", "providers", "campaigns")
    assert same.exit_code == 0 and "No changes." in same.stdout
    assert "Against the desired state of feature" in same.stdout
    unknown = herald("plan", "--base-ref", "no-such-branch")
    assert unknown.exit_code == 2 and "unknown git ref 'no-such-branch'" in unknown.stderr


def test_a_new_directory_on_the_branch_counts_as_created(pr_repo: Repo) -> None:
    workdir = Path(pr_repo.working_tree_dir or "")
    (workdir / "extra").mkdir()
    (workdir / "extra" / "segments.yaml").write_text(
        "apiVersion: herald/v1\nkind: Segment\nmetadata: {name: vip}\n"
        "spec: {rules: {property: {name: plan, op: eq, value: enterprise}}}\n")
    result = herald("plan", "--base-ref", "main", "providers", "campaigns", "extra")
    assert result.exit_code == 0, result.output
    assert "+ Segment/vip (create)" in result.stdout


def test_sample_file_users_and_their_events_drive_live_previews(pr_repo: Repo, tmp_path: Path) -> None:
    workdir = Path(pr_repo.working_tree_dir or "")
    live = workdir / "campaigns" / "live.yaml"
    live.write_text(live.read_text().replace("You left", "Still thinking about"))
    sample = tmp_path / "sample.jsonl"
    sample.write_text("\n".join(json.dumps(row) for row in [
        {"type": "user", "id": "u1", "phone": "+447400123456", "first_name": "Robin", "email": "robin@example.com"},
        {"type": "event", "user_id": "u1", "name": "added_to_cart", "ts": "2026-01-01T10:00:00Z",
         "product_name": "Red Kettle", "cart_id": "c-77", "value": 30},
    ]) + "\n")
    result = herald("plan", "--base-ref", "main", "--previews", "--sample", str(sample), "providers", "campaigns")
    assert result.exit_code == 0, result.output
    section = result.stdout.split("Campaign/cart-abandonment (update)")[1].split("\n\n")[0]
    assert "previews (users from sample.jsonl; PII masked):" in section
    assert "u1 GB +44•••••3456 → global/twilio-us: GSM-7" in section
    assert "| Still thinking about Red Kettle in your cart. Complete your order: https://ex.am/c/c-77" in section
    assert "stand-ins" not in section  # the event came from the sample file


def test_audience_store_gives_the_real_reach(pr_repo: Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"duckdb:///{tmp_path}/audience.duckdb"
    store = open_audience_store(url)
    users = [{"id": f"us{i}", "phone": f"+1415555{i:04d}", "country": "US", "first_name": "Kim", "last_name": "Lee"} for i in range(30)]
    users += [{"id": f"in{i}", "phone": f"+9198765{i:05d}", "country": "IN", "first_name": "Ravi"} for i in range(5)]
    store.upsert_users([parse_user(u) for u in users], now=SystemClock().now())
    store.close()
    monkeypatch.setenv("HERALD_AUDIENCE_URL", url)
    result = herald("plan", "--base-ref", "main", "--format", "json", "--previews", "providers", "campaigns")
    assert result.exit_code == 0, result.output
    change = next(c for c in json.loads(result.stdout)["changes"] if c["name"] == "black-friday")
    cost = change["impact"]["cost"]
    assert cost["reach"] == 30 and cost["reach_basis"] == "audience store"
    assert cost["next_run"] == {"USD": round(30 * 2 * 0.0079, 6)}
    assert change["impact"]["sample_source"] == "the audience store"

    monkeypatch.setenv("HERALD_AUDIENCE_URL", f"duckdb:///{tmp_path}/missing.duckdb")
    missing = herald("plan", "--base-ref", "main", "--previews")
    assert missing.exit_code == 2 and "no audience store" in missing.stderr


def test_routes_follow_the_group_router(example_paths: list[Path]) -> None:
    state = load_paths(example_paths).state
    router = GroupRouter(state)
    numbers = {"US": "+14155550100", "IN": "+919876543210", "GB": "+447400123456", "DE": "+4915112345678"}
    for country, number in numbers.items():
        for explicit in (None, "bulk", "india-dlt"):
            expected = router.group_for(number, explicit)
            found = route_group(state, country, explicit)
            assert found is not None and found.name == expected.name, (country, explicit)


@pytest.mark.parametrize(("phone", "masked"), [
    ("+14155550100", "+1•••••0100"), ("+919876543210", "+91•••••3210"), ("+447400123456", "+44•••••3456"),
    ("123", "•••••"), ("", "•••••"),
])
def test_phone_masking(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked
