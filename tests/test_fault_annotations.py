"""`herald validate --format github`: file names and messages cannot inject workflow commands.

The annotations are read back the way the GitHub runner reads them (one command per line, the
properties split at `,` and `=`, then unescaped), so a round trip proves nothing leaked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.diagnostics import Diagnostic, render_diagnostics

# The runner's unescaping (actions/runner ActionCommand.cs), `%25` last.
_UNESCAPE_DATA = (("%0D", "\r"), ("%0A", "\n"), ("%25", "%"))
_UNESCAPE_PROPERTY = (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%"))


def _unescape(text: str, table: tuple[tuple[str, str], ...]) -> str:
    for token, char in table:
        text = text.replace(token, char)
    return text


def parse_command(line: str) -> tuple[str, dict[str, str], str]:
    """(command, properties, message) as the runner parses a `::cmd k=v,k=v::message` line."""
    assert line.startswith("::")
    end = line.index("::", 2)
    head, message = line[2:end], line[end + 2:]
    command, _, props = head.partition(" ")
    properties = {}
    for pair in props.split(","):
        key, _, value = pair.partition("=")
        assert key not in properties, f"property {key} given twice: {line!r}"
        properties[key] = _unescape(value, _UNESCAPE_PROPERTY)
    return command, properties, _unescape(message, _UNESCAPE_DATA)


HOSTILE_NAMES = [
    "plain.yaml",
    "comma,line=1,col=1.yaml",
    "colon::error file=x::pwned.yaml",
    "percent%0A::error::pwned%2C%3A%25.yaml",
    "new\nline::error::pwned.yaml",
    "carriage\r::warning::x.yaml",
    "title=evil,file=other.yaml",
]


@given(path=st.text(), field=st.text(), message=st.text())
def test_every_annotation_round_trips(path: str, field: str, message: str) -> None:
    diagnostic = Diagnostic(path, 3, 7, "Campaign", "c", field, message)
    line = render_diagnostics([diagnostic], "github")
    assert "\n" not in line and "\r" not in line
    command, properties, parsed = parse_command(line)
    assert command == "error"
    assert properties == {"file": path, "line": "3", "col": "7", "title": f"Campaign/c {field}".strip()}
    assert parsed == message


def test_text_format_keeps_one_line_per_problem() -> None:
    diagnostic = Diagnostic("a\n::error::pwned.yaml", 1, 1, "", "", "", "bad\r\nthing")
    assert render_diagnostics([diagnostic, diagnostic], "text").count("\n") == 1


@pytest.mark.skipif(sys.platform == "win32", reason="file names with CR/LF are POSIX-only")
def test_hostile_file_names_in_validate(tmp_path: Path) -> None:
    """A real run: each broken file yields one annotation naming exactly that file."""
    for name in HOSTILE_NAMES:
        (tmp_path / name).write_text("apiVersion: herald/v1\nkind: Campaign\nmetadata: {name: x}\nspec: {bogus: 1}\n")
    herald = [sys.executable, "-m", "reconciler.cli"]
    done = subprocess.run([*herald, "validate", str(tmp_path), "--format", "github"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    annotations = [line for line in done.stdout.splitlines() if line.startswith("::")]
    files = {parse_command(line)[1]["file"] for line in annotations}
    assert files == {str(tmp_path / name) for name in HOSTILE_NAMES}
    for line in annotations:
        command, properties, _ = parse_command(line)
        assert command == "error" and set(properties) == {"file", "line", "col", "title"}
