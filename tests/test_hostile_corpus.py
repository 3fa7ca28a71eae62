"""The hostile corpus (tests/hostile/, README there): `herald validate` refuses each input cleanly.

For every case, as a subprocess: exit code 1 (never a signal), no traceback, exactly the expected
errors, at most 5 s of CPU time and 200 MB peak RSS (os.wait4 reports both for that one child), and
`--format github` output that is nothing but well-formed workflow commands naming the real file.
Committed files carry their expectations in `# expect:` comment lines; inputs too large to commit
or with file names a checkout cannot hold are generated here (GENERATED).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_fault_annotations import parse_command

HOSTILE = Path(__file__).resolve().parent / "hostile"
CPU_LIMIT_SECONDS = 5.0
WALL_LIMIT_SECONDS = 30.0  # a kill guard on a busy machine; the bound asserted is CPU time
RSS_LIMIT_BYTES = 200 * 2**20
DEEP = "?/?: document nests deeper than 64 levels"
UNKNOWN_KIND = b"apiVersion: herald/v1\nkind: Nope\nmetadata: {name: x}\n"
UNKNOWN_KIND_ERROR = "2:1: Nope/x: kind: unknown kind 'Nope'"


@dataclass(frozen=True)
class Case:
    name: str
    file_name: str
    content: Callable[[], bytes] | None  # None: the committed file tests/hostile/<file_name>
    expected: tuple[str, ...]


def _text(text: str) -> Callable[[], bytes]:
    return lambda: text.encode()


# name: (file name, content, expected errors). Deep cases point at the first collection 66 levels
# deep (the root is level 1 and MAX_DEPTH = 64 levels are allowed below it).
GENERATED: dict[str, tuple[str, Callable[[], bytes], tuple[str, ...]]] = {
    "issue-30k-flow-seq": ("deep.yaml", _text("[" * 30_000 + "]" * 30_000), (f"1:66: {DEEP}",)),
    "100k-flow-seq": ("deep.yaml", _text("a: " + "[" * 100_000 + "]" * 100_000), (f"1:68: {DEEP}",)),
    "100k-flow-map": ("deep.yaml", _text("a: " + "{a: " * 100_000 + "}" * 100_000), (f"1:260: {DEEP}",)),
    "100k-json-pairs": ("deep.yaml", _text('["a":' * 100_000), (f"1:162: {DEEP}",)),
    "100k-block-compact": ("deep.yaml", _text("- " * 100_000 + "x\n"), (f"1:131: {DEEP}",)),
    "block-indented": ("deep.yaml", _text("".join(" " * i + "a:\n" for i in range(300))), (f"66:66: {DEEP}",)),
    "block-then-flow": ("deep.yaml", _text("".join("  " * i + "- b:\n" for i in range(40)) + "  " * 40
                                           + "c: " + "[{d: " * 40), (f"33:67: {DEEP}",)),
    "tab-pure-path": ("deep.yaml", _text("a: [\t" + "[" * 100_000 + "]" * 100_001), (f"1:69: {DEEP}",)),
    "yaml-1.1-directive": ("deep.yaml", _text("%YAML 1.1\n---\n" + "[" * 100_000), (f"3:66: {DEEP}",)),
    "1mb-of-nesting": ("deep.yaml", _text("a: " + "[" * 520_000 + "]" * 520_000), (f"1:68: {DEEP}",)),
    "5mb-of-nesting": ("deep.yaml", _text("a: " + "{a: [" * 1_000_000),
                       ("1:1: ?/?: file is 5000003 bytes; the limit is 1048576",)),
    "name-comma": ("comma,line=1,col=1,title=x.yaml", lambda: UNKNOWN_KIND, (UNKNOWN_KIND_ERROR,)),
    "name-colons": ("a::error file=x::pwned.yaml", lambda: UNKNOWN_KIND, (UNKNOWN_KIND_ERROR,)),
    "name-percent": ("%0A::error::x%2C%3A%25.yaml", lambda: UNKNOWN_KIND, (UNKNOWN_KIND_ERROR,)),
    "name-newline": ("x\n::error file=evil.yaml::pwned.yaml", lambda: UNKNOWN_KIND, (UNKNOWN_KIND_ERROR,)),
    "name-carriage-return": ("x\r::warning::pwned.yaml", lambda: UNKNOWN_KIND, (UNKNOWN_KIND_ERROR,)),
}


def _committed() -> list[Case]:
    cases = []
    for path in sorted(HOSTILE.glob("*.yaml")):
        expected = tuple(line.removeprefix("# expect:").strip()
                         for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("# expect:"))
        cases.append(Case(path.stem, path.name, None, expected))
    return cases


CASES = _committed() + [Case(name, file_name, content, expected)
                        for name, (file_name, content, expected) in GENERATED.items()]


@dataclass(frozen=True)
class Run:
    code: int
    output: str
    cpu_seconds: float
    max_rss_bytes: int


# The command is started by this small launcher rather than by pytest itself: Linux carries a process's
# peak-RSS mark across fork and exec, so a child forked from a large pytest process (400+ MB in a full
# run) would report pytest's size. Forked from the freshly exec'ed launcher, it reports its own.
LAUNCHER = """
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss}, out)
"""


def run_measured(args: list[str]) -> Run:
    """Run `args`; its own exit code, CPU time and peak RSS (os.wait4 on it, in the launcher)."""
    with tempfile.TemporaryDirectory() as tmp:
        report, output_path = Path(tmp) / "usage.json", Path(tmp) / "output"
        with output_path.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report), *args], stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                proc.wait(timeout=WALL_LIMIT_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        usage = json.loads(report.read_text()) if report.exists() else {"status": -1, "cpu": 0.0, "maxrss": 0}
        output = output_path.read_bytes().decode("utf-8", "replace")
    return Run(os.waitstatus_to_exitcode(usage["status"]) if usage["status"] >= 0 else -9, output,
               usage["cpu"], usage["maxrss"] * 1024)


def _shown(path: str) -> str:
    """The path as the text format prints it (CR/LF escaped, one line per problem)."""
    return path.replace("\r", "\\r").replace("\n", "\\n")


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case_path(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Case, str]:
    case: Case = request.param
    if case.content is None:
        return case, str(HOSTILE / case.file_name)
    path = tmp_path / case.file_name
    path.write_bytes(case.content())
    return case, str(path)


def _check_bounds(run: Run) -> None:
    assert run.code == 1, f"exit {run.code} (negative: killed by a signal)\n{run.output[-2000:]}"
    assert "Traceback" not in run.output
    assert run.cpu_seconds < CPU_LIMIT_SECONDS, f"{run.cpu_seconds:.1f} s of CPU"
    assert run.max_rss_bytes < RSS_LIMIT_BYTES, f"{run.max_rss_bytes / 2**20:.0f} MB peak RSS"


def test_validate_refuses_cleanly(case_path: tuple[Case, str]) -> None:
    case, path = case_path
    assert case.expected, f"{case.file_name} declares no '# expect:' line"
    run = run_measured([sys.executable, "-m", "reconciler.cli", "validate", path])
    _check_bounds(run)
    prefix = f"{_shown(path)}:"
    errors = [line.removeprefix(prefix) for line in run.output.splitlines() if line.startswith(prefix)]
    assert all(len(line) < 1000 for line in errors), "a message must not echo a huge value"
    assert len(errors) == len(case.expected), "\n".join(errors)
    for wanted, got in zip(case.expected, errors, strict=True):
        assert wanted in got, f"expected {wanted!r}\n     got {got!r}"


def test_github_annotations_stay_commands(case_path: tuple[Case, str]) -> None:
    case, path = case_path
    run = run_measured([sys.executable, "-m", "reconciler.cli", "validate", path, "--format", "github"])
    _check_bounds(run)
    annotations = [line for line in run.output.split("\n") if line.startswith("::")]
    others = [line for line in run.output.split("\n") if line and not line.startswith("::")]
    assert [line for line in others if not line.startswith("invalid: ")] == [], "only commands and the summary"
    assert len(annotations) == len(case.expected)
    for line in annotations:
        command, properties, _ = parse_command(line)
        assert command == "error"
        assert set(properties) == {"file", "line", "col", "title"}
        assert properties["file"] == path
