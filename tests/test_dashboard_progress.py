"""Progress bars of long CLI commands: on stderr when it is a terminal (a real pty here), never in
pipes; stdout and error lines stay plain either way."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from reconciler.cli_progress import Progress, count_lines, progress_bar, shows_progress

ROOT = Path(__file__).resolve().parent.parent
HERALD = str(Path(sys.executable).parent / "herald")
ENV = {**os.environ, "TERM": "xterm", "HERALD_NO_PROGRESS": ""}


def run_with_tty_stderr(args: list[str], cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run a command whose stderr is a pseudo-terminal; (exit code, stdout, what the terminal got)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL, cwd=cwd, env=ENV)
    os.close(slave)
    captured: list[bytes] = []
    reader = threading.Thread(target=lambda: captured.append(proc.stdout.read() if proc.stdout else b""))
    reader.start()
    terminal = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    code = proc.wait(timeout=120)
    reader.join(timeout=10)
    return code, captured[0].decode(), terminal.decode().replace("\r\n", "\n")


def run_piped(args: list[str], cwd: Path = ROOT) -> tuple[int, str, str]:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=ENV, timeout=120)
    return done.returncode, done.stdout, done.stderr


def plain_lines(terminal: str) -> list[str]:
    """The terminal's text without the bar: the last state of each \\r-rewritten line, minus bar lines."""
    lines = [line.split("\r")[-1] for line in terminal.split("\n")]
    return [line for line in lines if line and "%" not in line]


# ---------------------------------------------------------------- the helper


def test_a_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    assert not shows_progress(stream)
    with progress_bar(10, "work", stream=stream) as bar:
        for _ in range(10):
            bar.advance()
    assert stream.getvalue() == ""


def _drain(fd: int) -> str:
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        data += os.read(fd, 65536)
    return data.decode()


def test_an_enabled_bar_draws_pauses_for_output_and_completes() -> None:
    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as stream:
        assert shows_progress(stream)
        with progress_bar(4, "work", stream=stream) as bar:
            bar.set(2)
            bar.pause()
            stream.write("a line of output\n")
            bar.advance()
        stream.flush()
        text = _drain(master)
    os.close(master)
    assert "work" in text and "50%" in text and "75%" in text and "100%" in text
    assert text.index("50%") < text.index("a line of output") < text.index("75%")


def test_positions_only_move_forward_and_stay_within_the_length() -> None:
    bar = Progress(10, "x", enabled=False)
    bar.set(4)
    bar.set(2)
    assert bar.position == 4
    bar.advance(100)
    assert bar.position == 10


@pytest.mark.parametrize(("content", "expected"), [(b"", 0), (b"a\n", 1), (b"a\nb", 2), (b"a\nb\n\n", 3),
                                                    (b"\n" * 10, 10)])
def test_count_lines(tmp_path: Path, content: bytes, expected: int) -> None:
    path = tmp_path / "f"
    path.write_bytes(content)
    assert count_lines(path) == expected
    assert count_lines(path, chunk_size=3) == expected  # lines across chunk boundaries


# ---------------------------------------------------------------- the commands


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.jsonl"
    rows = [json.dumps({"id": f"u{i}", "phone": f"+1415555{i:04d}", "country": "US", "promo_opt_in": True})
            for i in range(2500)]
    path.write_text("\n".join([*rows[:1200], "{not json", *rows[1200:]]) + "\n")
    return path


def test_ingest_shows_a_bar_on_a_terminal_and_plain_errors_in_both_cases(tmp_path: Path, users_file: Path) -> None:
    args = [HERALD, "ingest", "users", str(users_file), "--batch-size", "500"]
    code, out, terminal = run_with_tty_stderr([*args, "--store", f"duckdb:///{tmp_path / 'a.duckdb'}"])
    piped_code, piped_out, piped_err = run_piped([*args, "--store", f"duckdb:///{tmp_path / 'b.duckdb'}"])
    assert code == piped_code == 1  # one rejected row
    assert out == piped_out == ""
    assert f"users {users_file.name}" in terminal and "100%" in terminal and "1 rejected" in terminal
    assert "\r" not in piped_err and "%" not in piped_err
    assert plain_lines(terminal) == piped_err.splitlines()
    assert piped_err.splitlines()[0].startswith(f"{users_file}:1201: invalid JSON")


def test_reach_check_shows_a_bar_per_campaign_on_a_terminal(tmp_path: Path, users_file: Path) -> None:
    store = f"duckdb:///{tmp_path / 'r.duckdb'}"
    run_piped([HERALD, "ingest", "users", str(users_file), "--store", store])
    args = [HERALD, "reach", "--check", "providers", "campaigns", "--store", store, "--now", "2026-12-01T08:00:00Z"]
    code, out, terminal = run_with_tty_stderr(args)
    piped_code, piped_out, piped_err = run_piped(args)
    assert code == piped_code and out == piped_out and out.strip()
    assert "reach --check" in terminal and "100%" in terminal
    assert piped_err == ""


def test_demo_shows_simulated_time_on_a_terminal_and_keeps_stdout_clean(tmp_path: Path) -> None:
    code, out, terminal = run_with_tty_stderr([HERALD, "demo", "--workdir", str(tmp_path / "demo"), "--users", "30"])
    assert code == 0
    assert "simulated time" in terminal and "2026-12-05 12:00 UTC" in terminal and "100%" in terminal
    assert "\r" not in out and "\x1b" not in out and "simulated time" not in out
    assert "delivery receipts:" in out and "audit (newest 12):" in out
