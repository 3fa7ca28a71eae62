"""Cost of commit notifications: a poll of an already reported commit (what the daemon pays every
poll) and a first report (GitHub status + webhook to a local server), on SQLite and PostgreSQL.

Run: .venv/bin/python benchmarks/bench_notify.py   (PostgreSQL from HERALD_TEST_PG, else skipped)
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reconciler.notify import CommitOutcome, Notifier, NotifyConfig
from reconciler.store import open_state_store

PG = os.environ.get("HERALD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@contextmanager
def local_server() -> Iterator[str]:
    async def accept(request: Request) -> Response:
        await request.body()
        return Response("{}", status_code=201)

    app = Starlette(routes=[Route("/{path:path}", accept, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def pg_url() -> Iterator[str | None]:
    try:
        import psycopg

        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        print(f"postgres: skipped ({type(exc).__name__})")
        yield None
        return
    try:
        yield f"{PG}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def measure(name: str, url: str, api: str, commits: int = 200, polls: int = 2000) -> None:
    store = open_state_store(url)
    config = NotifyConfig(github_enabled=True, github_repository="acme/sms", github_api_base=api,
                          webhook_url=f"{api}/hooks/x")
    with Notifier(store, config, environ={"HERALD_GITHUB_TOKEN": "bench-token"}) as notifier:
        start = time.perf_counter()
        for i in range(commits):
            notifier.notify_commit(CommitOutcome(f"{i:040x}", "applied", "Applied: 1 created"))
        first = (time.perf_counter() - start) / commits
        head = CommitOutcome(f"{0:040x}", "applied", "Applied: 1 created")
        start = time.perf_counter()
        for _ in range(polls):
            notifier.notify_commit(head)
        poll = (time.perf_counter() - start) / polls
    store.close()
    print(f"{name:>8}: first report (status + webhook) {first * 1e3:6.2f} ms; poll of a reported commit "
          f"{poll * 1e6:6.0f} us")


def main() -> None:
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    with local_server() as api, tempfile.TemporaryDirectory() as tmp:
        measure("sqlite", f"sqlite:///{tmp}/state.db", api)
        with pg_url() as url:
            if url:
                measure("postgres", url, api)


if __name__ == "__main__":
    main()
