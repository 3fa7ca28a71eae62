"""Git source: commit metadata, reading blobs from the commit (not the work tree), remotes, force-pushes."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from git import Actor, Repo

from reconciler.gitsource import GitSource, GitSourceError, read_commit

ROOT = Path(__file__).resolve().parent.parent
ALICE = Actor("Alice Author", "alice@example.com")

CAMPAIGN = """\
apiVersion: herald/v1
kind: Campaign
metadata: {{name: {name}}}
spec:
  type: live
  owner: team@example.com
  trigger: {{event: {{name: signed_up}}}}
  message: {{body: "{body}"}}
"""

PROVIDERS = """\
apiVersion: herald/v1
kind: Provider
metadata: {name: mock}
spec: {type: generic_http, url: "https://sms.example.com/send", body: {to: "$$To", text: "$$Body"}}
---
apiVersion: herald/v1
kind: ProviderGroup
metadata: {name: all}
spec: {providers: [mock], default: true}
"""


def commit_files(repo: Repo, files: dict[str, str], message: str, when: str = "2026-11-30T12:00:00+00:00") -> str:
    root = Path(repo.working_tree_dir or ".")
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        repo.index.add([rel])
    stamp = f"{int(datetime.fromisoformat(when).timestamp())} +0000"  # git's internal date format
    commit = repo.index.commit(message, author=ALICE, committer=ALICE, author_date=stamp, commit_date=stamp)
    return commit.hexsha


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    repository = Repo.init(tmp_path / "desired", initial_branch="main")
    commit_files(repository, {"providers/mock.yaml": PROVIDERS,
                              "campaigns/welcome.yaml": CAMPAIGN.format(name="welcome", body="v1")},
                 "Add welcome campaign\n\nLonger explanation.")
    return repository


def test_snapshot_has_sha_author_message_and_time(repo: Repo) -> None:
    snapshot = read_commit(repo.working_tree_dir or "", "HEAD")
    assert snapshot.sha == repo.head.commit.hexsha and len(snapshot.sha) == 40
    assert snapshot.author == "Alice Author <alice@example.com>"
    assert snapshot.message == "Add welcome campaign\n\nLonger explanation."
    assert snapshot.info.subject == "Add welcome campaign"
    assert snapshot.committed_at == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert [f.path for f in snapshot.files] == ["campaigns/welcome.yaml", "providers/mock.yaml"]
    result = snapshot.load()
    assert result.ok, result.diagnostics
    assert list(result.state.campaigns) == ["welcome"]


def test_reads_the_commit_not_the_work_tree(repo: Repo) -> None:
    first = repo.head.commit.hexsha
    commit_files(repo, {"campaigns/welcome.yaml": CAMPAIGN.format(name="welcome", body="v2")}, "Edit body")
    work_tree = Path(repo.working_tree_dir or "")
    (work_tree / "campaigns/welcome.yaml").write_text(CAMPAIGN.format(name="welcome", body="uncommitted"))
    (work_tree / "campaigns/untracked.yaml").write_text(CAMPAIGN.format(name="untracked", body="x"))
    head = read_commit(repo, "HEAD").load().state
    assert head.campaigns["welcome"].spec.message.body == "v2"
    assert "untracked" not in head.campaigns
    old = read_commit(repo, first).load().state
    assert old.campaigns["welcome"].spec.message.body == "v1"


def test_only_yaml_outside_hidden_dirs_and_symlinks_are_read(tmp_path: Path) -> None:
    repo = Repo.init(tmp_path / "r", initial_branch="main")
    commit_files(repo, {
        "a.yaml": CAMPAIGN.format(name="a", body="x"),
        "nested/b.yml": CAMPAIGN.format(name="b", body="y"),
        ".github/workflow.yaml": "name: ci\n",
        "README.md": "# hi\n",
    }, "mixed")
    (tmp_path / "r" / "link.yaml").symlink_to("a.yaml")
    repo.index.add(["link.yaml"])
    repo.index.commit("symlink", author=ALICE, committer=ALICE)
    snapshot = read_commit(repo)
    assert [f.path for f in snapshot.files] == ["a.yaml", "nested/b.yml"]
    assert [f.path for f in read_commit(repo, paths=["nested"]).files] == ["nested/b.yml"]
    with pytest.raises(GitSourceError, match="does not exist"):
        read_commit(repo, paths=["missing"])


def test_example_repository_loads_from_a_commit(tmp_path: Path) -> None:
    target = tmp_path / "examples"
    shutil.copytree(ROOT / "providers", target / "providers")
    shutil.copytree(ROOT / "campaigns", target / "campaigns")
    (target / "docker-compose.yaml").write_text("services: {}\n")  # outside providers/ and campaigns/
    repo = Repo.init(target, initial_branch="main")
    repo.index.add([str(p.relative_to(target)) for p in target.rglob("*.yaml")])
    repo.index.commit("examples", author=ALICE, committer=ALICE)
    result = read_commit(repo).load()
    assert result.ok, [str(d) for d in result.errors]
    assert "flash-sale" in result.state.campaigns and result.state.providers


def test_bad_refs_and_paths_are_clear_errors(repo: Repo, tmp_path: Path) -> None:
    with pytest.raises(GitSourceError, match="unknown git ref 'nope'"):
        read_commit(repo, "nope")
    with pytest.raises(GitSourceError, match="not a git repository"):
        read_commit(tmp_path / "empty-dir")


def test_remote_is_fetched_into_a_cache_and_follows_force_pushes(repo: Repo, tmp_path: Path) -> None:
    url = f"file://{repo.working_tree_dir}"
    source = GitSource(url, "main", cache_dir=tmp_path / "cache")
    first = source.read()
    assert first.sha == repo.head.commit.hexsha
    assert (source.cache_path / "HEAD").exists() and source.cache_path.is_relative_to(tmp_path / "cache")

    second_sha = commit_files(repo, {"campaigns/welcome.yaml": CAMPAIGN.format(name="welcome", body="v2")}, "v2")
    assert source.sync() == second_sha

    # Rewrite history upstream: drop v2 and commit a divergent v3 (a force-push).
    repo.head.reset(first.sha, index=True, working_tree=True)
    rewritten = commit_files(repo, {"campaigns/welcome.yaml": CAMPAIGN.format(name="welcome", body="v3")},
                             "v3 rewritten", when="2026-12-01T09:00:00+00:00")
    snapshot = source.read()
    assert snapshot.sha == rewritten != second_sha
    assert snapshot.load().state.campaigns["welcome"].spec.message.body == "v3"
    assert source.read(first.sha, fetch=False).sha == first.sha


def test_unreachable_remote_is_a_clear_error_without_credentials(tmp_path: Path) -> None:
    missing = GitSource(f"file://{tmp_path}/no-such-repo", "main", cache_dir=tmp_path / "cache")
    with pytest.raises(GitSourceError, match="cannot fetch branch 'main' from file://"):
        missing.sync()
    secret = GitSource("http://deploy:tok3n-s3cret@127.0.0.1:1/repo.git", "main", cache_dir=tmp_path / "cache")
    with pytest.raises(GitSourceError) as info:
        secret.sync()
    assert "tok3n-s3cret" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_missing_branch_on_remote(repo: Repo, tmp_path: Path) -> None:
    source = GitSource(f"file://{repo.working_tree_dir}", "release", cache_dir=tmp_path / "cache")
    with pytest.raises(GitSourceError, match="cannot fetch branch 'release'"):
        source.read()


def test_local_source_reads_branch_head(repo: Repo) -> None:
    source = GitSource(repo.working_tree_dir or "")
    assert not source.remote
    assert source.sync() == repo.head.commit.hexsha
    assert source.read().sha == repo.head.commit.hexsha
