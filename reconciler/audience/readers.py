"""Read commands (`herald report`, `reach`, `plan`) beside a running daemon on the embedded default.

DuckDB lets one process open a database file at a time, and `herald run` holds the audience store.
When opening it fails for that reason, the read command asks the daemon (POST /v1/audience/snapshot,
admin bearer token) for a consistent copy, written next to the store, and reads that instead — the
numbers are those of the moment of the snapshot. Without a daemon to ask (no HERALD_ADMIN_TOKEN, or
nothing answering at HERALD_DAEMON_URL, default http://127.0.0.1:8080) the command fails with a
message that says what to do, never a lock traceback. PostgreSQL needs none of this.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import httpx

from ..secrets import redact
from .store import AudienceStore, AudienceStoreError, open_audience_store

DAEMON_URL_ENV = "HERALD_DAEMON_URL"
DEFAULT_DAEMON_URL = "http://127.0.0.1:8080"
SNAPSHOT_TIMEOUT_SECONDS = 300.0


def duckdb_path(url: str) -> str | None:
    """The file of a duckdb:/// URL (None for PostgreSQL and in-memory stores)."""
    if not url.startswith("duckdb:"):
        return None
    path = url.split("?")[0].removeprefix("duckdb:").removeprefix("///").removeprefix("//")
    return None if path in ("", "/", ":memory:") else path


def snapshot_path(path: str) -> str:
    """Where the daemon writes the readable copy of the store at `path`."""
    return f"{path}.snapshot"


def open_for_reading(url: str, environ: Mapping[str, str] | None = None) -> AudienceStore:
    """The audience store at `url`, or the running daemon's fresh snapshot of it when the daemon holds
    the file. AudienceStoreError (with what to do) when neither can be read."""
    try:
        return open_audience_store(url)
    except AudienceStoreError as exc:
        path = duckdb_path(url)
        if path is None or not Path(path).exists():
            raise
        original = str(exc)
    snapshot = request_snapshot(path, environ, original)
    return open_audience_store(f"duckdb:///{snapshot}?read_only=true")


def request_snapshot(path: str, environ: Mapping[str, str] | None, why: str) -> str:
    env = os.environ if environ is None else environ
    token = env.get("HERALD_ADMIN_TOKEN") or None
    base = (env.get(DAEMON_URL_ENV) or DEFAULT_DAEMON_URL).rstrip("/")
    advice = ("the audience store is held by another process (a running `herald run`?); set HERALD_ADMIN_TOKEN "
              f"(and {DAEMON_URL_ENV} if the daemon is not at {DEFAULT_DAEMON_URL}) to read through it, "
              "or use PostgreSQL")
    if token is None:
        raise AudienceStoreError(f"{advice} ({redact(why)})")
    try:
        answer = httpx.post(f"{base}/v1/audience/snapshot", headers={"Authorization": f"Bearer {token}"},
                            timeout=SNAPSHOT_TIMEOUT_SECONDS, trust_env=False)
    except httpx.HTTPError as exc:
        raise AudienceStoreError(f"{advice}; no daemon answered at {base} ({type(exc).__name__})") from None
    if answer.status_code != 200:
        raise AudienceStoreError(f"{advice}; the daemon at {base} answered HTTP {answer.status_code}")
    snapshot = str(answer.json().get("path", ""))
    if Path(snapshot).resolve() != Path(snapshot_path(path)).resolve():
        raise AudienceStoreError(f"the daemon at {base} serves another audience store ({snapshot})")
    return snapshot
