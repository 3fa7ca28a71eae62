"""Desired state from git: read YAML blobs straight from a commit's tree (never the work tree).

A location is either a local repository path (read in place) or a remote URL (https://, ssh://,
git@host:..., file://), which is fetched into a bare cache repository. Fetches always force-update
the remote-tracking branch, so a force-pushed branch is followed rather than rejected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from git import Blob, Commit, Repo, Tree
from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from .diagnostics import Diagnostic
from .loading import MAX_FILE_BYTES, YAML_SUFFIXES, LoadResult, SourceFile, load_files
from .secrets import redact

DEFAULT_BRANCH = "main"
DEFAULT_CACHE_DIR = Path(".herald/git")
DEFAULT_PATHS = ("providers", "campaigns")
FETCH_TIMEOUT_SECONDS = 120
_SYMLINK_MODE = 0o120000
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class GitSourceError(RuntimeError):
    """The repository, ref or remote cannot be read. Messages never contain credentials."""


@dataclass(frozen=True)
class CommitInfo:
    """Who changed the desired state, when and why; recorded with everything applied."""

    sha: str
    author: str
    message: str
    committed_at: datetime

    @property
    def short_sha(self) -> str:
        return self.sha[:10]

    @property
    def subject(self) -> str:
        return self.message.splitlines()[0] if self.message else ""

    def to_dict(self) -> dict[str, Any]:
        return {"sha": self.sha, "author": self.author, "message": self.message,
                "committed_at": self.committed_at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CommitInfo:
        return cls(sha=data["sha"], author=data["author"], message=data["message"],
                   committed_at=datetime.fromisoformat(data["committed_at"]))


@dataclass(frozen=True)
class CommitSnapshot:
    sha: str
    author: str
    message: str
    committed_at: datetime
    files: list[SourceFile]
    oversize: list[tuple[str, int]] = field(default_factory=list)  # blobs not read: (path, bytes)

    @property
    def info(self) -> CommitInfo:
        return CommitInfo(self.sha, self.author, self.message, self.committed_at)

    def load(self) -> LoadResult:
        """Parse and validate the commit's desired state (errors name repo-relative path:line:col)."""
        result = load_files(self.files)
        result.diagnostics[:0] = [
            Diagnostic(path, 1, 1, "", "", "", f"file is {size} bytes; the limit is {MAX_FILE_BYTES}")
            for path, size in self.oversize
        ]
        return result


def is_remote(location: str) -> bool:
    return "://" in location or bool(_SCP_LIKE.match(location))


def safe_url(url: str) -> str:
    """The URL without user:password (tokens in https URLs must not reach logs or audit)."""
    return redact(re.sub(r"(://)[^/@]+@", r"\1***@", url))


def _open_repo(path: str | Path) -> Repo:
    try:
        return Repo(path)
    except (InvalidGitRepositoryError, NoSuchPathError):
        raise GitSourceError(f"{path} is not a git repository") from None


def _resolve(repo: Repo, ref: str) -> Commit:
    try:
        commit = repo.commit(ref)
    except (BadName, ValueError, GitCommandError):
        raise GitSourceError(f"unknown git ref '{ref}'") from None
    return commit


def _tree_roots(tree: Tree, paths: Sequence[str] | None) -> list[Tree | Blob]:
    if paths is None:
        present = [p for p in DEFAULT_PATHS if _lookup(tree, p) is not None]
        paths = present or ["."]
    roots: list[Tree | Blob] = []
    for path in paths:
        node = tree if path in (".", "") else _lookup(tree, path)
        if node is None:
            raise GitSourceError(f"path '{path}' does not exist in the commit")
        roots.append(node)
    return roots


def _lookup(tree: Tree, path: str) -> Tree | Blob | None:
    try:
        node = tree / path.strip("/")
    except KeyError:
        return None
    return node if isinstance(node, Tree | Blob) else None


def _yaml_blobs(root: Tree | Blob) -> Iterator[Blob]:
    items = [root] if isinstance(root, Blob) else root.traverse()
    for item in items:
        if not isinstance(item, Blob) or item.mode == _SYMLINK_MODE:
            continue
        path = PurePosixPath(str(item.path))
        if path.suffix in YAML_SUFFIXES and not any(part.startswith(".") for part in path.parts):
            yield item


def read_commit(repo: Repo | str | Path, ref: str = "HEAD", paths: Sequence[str] | None = None) -> CommitSnapshot:
    """The YAML files of `ref` as stored in the commit, plus its SHA, author, message and time.

    `paths` limits reading to these directories/files of the tree; by default providers/ and
    campaigns/ when the commit has them, else the whole tree (hidden entries are skipped).
    """
    repository = repo if isinstance(repo, Repo) else _open_repo(repo)
    commit = _resolve(repository, ref)
    files: list[SourceFile] = []
    oversize: list[tuple[str, int]] = []
    seen: set[str] = set()
    for root in _tree_roots(commit.tree, paths):
        for blob in _yaml_blobs(root):
            path = str(blob.path)
            if path in seen:
                continue
            seen.add(path)
            if blob.size > MAX_FILE_BYTES:
                oversize.append((path, blob.size))
                continue
            files.append(SourceFile(path, blob.data_stream.read()))
    files.sort(key=lambda f: f.path)
    author = commit.author
    message = commit.message if isinstance(commit.message, str) else commit.message.decode("utf-8", "replace")
    return CommitSnapshot(
        sha=commit.hexsha,
        author=f"{author.name} <{author.email}>",
        message=message.strip(),
        committed_at=commit.committed_datetime.astimezone(UTC),
        files=files,
        oversize=oversize,
    )


class GitSource:
    """A repository to read desired state from: a local path, or a remote URL + branch (cached)."""

    def __init__(self, location: str | Path, branch: str | None = None, *, cache_dir: Path | None = None,
                 paths: Sequence[str] | None = None) -> None:
        self.location = str(location)
        self.remote = is_remote(self.location)
        self.branch = branch or (DEFAULT_BRANCH if self.remote else None)
        self.paths = paths
        if self.remote:
            digest = hashlib.sha256(self.location.encode("utf-8")).hexdigest()[:16]
            self.cache_path = (cache_dir or DEFAULT_CACHE_DIR) / digest
        else:
            self.cache_path = Path(self.location)

    @property
    def display(self) -> str:
        return safe_url(self.location) if self.remote else self.location

    def _tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    def _cache_repo(self) -> Repo:
        if (self.cache_path / "HEAD").exists():
            return Repo(self.cache_path)
        self.cache_path.mkdir(parents=True, exist_ok=True)
        repo = Repo.init(self.cache_path, bare=True)
        repo.create_remote("origin", self.location)
        return repo

    def sync(self) -> str:
        """Fetch the branch (remote) and return the SHA it points at now."""
        if not self.remote:
            return _resolve(_open_repo(self.cache_path), self.branch or "HEAD").hexsha
        repo = self._cache_repo()
        refspec = f"+refs/heads/{self.branch}:{self._tracking_ref()}"  # '+': follow force-pushes
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}
        try:
            with repo.git.custom_environment(**env):
                repo.git.fetch("origin", refspec, "--no-tags", "--prune", kill_after_timeout=FETCH_TIMEOUT_SECONDS)
        except GitCommandError as exc:
            raise GitSourceError(
                f"cannot fetch branch '{self.branch}' from {self.display}: {_git_reason(exc)}") from None
        return _resolve(repo, self._tracking_ref()).hexsha

    def read(self, ref: str | None = None, *, fetch: bool = True) -> CommitSnapshot:
        """A snapshot of `ref` (default: the branch head; remote: fetched first unless fetch=False)."""
        if self.remote:
            if fetch or not (self.cache_path / "HEAD").exists():
                self.sync()
            repo = self._cache_repo()
            target = ref or self._tracking_ref()
        else:
            repo = _open_repo(self.cache_path)
            target = ref or self.branch or "HEAD"
        return read_commit(repo, target, self.paths)


def _git_reason(exc: GitCommandError) -> str:
    stderr = exc.stderr if isinstance(exc.stderr, str) else str(exc.stderr or "")
    lines = [line.strip().removeprefix("stderr:").strip(" '") for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if "fatal" in line.lower() or "error" in line.lower()]
    reason = (fatal or lines or [f"git exited with status {exc.status}"])[-1]
    return safe_url(re.sub(r"\s+", " ", reason))[:300]
