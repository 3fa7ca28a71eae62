"""Diagnostics: one problem in the desired state, located as path:line:col."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    path: str
    line: int
    col: int
    kind: str
    name: str
    field: str
    message: str
    severity: Severity = "error"

    @property
    def subject(self) -> str:
        return f"{self.kind or '?'}/{self.name or '?'}"

    def format(self) -> str:
        """One line, whatever the path holds: CR and LF in it are shown escaped, so a file name
        cannot start a line of its own (CI runners read `::command` lines from any output)."""
        where = f"{_one_line(self.path)}:{self.line}:{self.col}"
        field = f" {_one_line(self.field)}:" if self.field else ""
        prefix = "" if self.severity == "error" else "warning: "
        return f"{where}: {prefix}{_one_line(self.subject)}:{field} {_one_line(self.message)}"

    def format_github(self) -> str:
        """A GitHub workflow command, escaped as the runner's toolkit does (actions/toolkit
        command.ts): `%`, CR and LF in the message; also `:` and `,` in properties (file, title)."""
        level = "error" if self.severity == "error" else "warning"
        title = f"{self.subject} {self.field}".strip()
        return (f"::{level} file={escape_property(self.path)},line={self.line},col={self.col},"
                f"title={escape_property(title)}::{escape_data(self.message)}")


def escape_data(text: str) -> str:
    """Workflow-command message escaping: `%`, CR, LF."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Workflow-command property escaping: as escape_data, plus `:` and `,` (which end a property)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def render_diagnostics(diagnostics: list[Diagnostic], fmt: str) -> str:
    ordered = sorted(diagnostics)
    if fmt == "json":
        return json.dumps([asdict(d) for d in ordered], indent=2)
    if fmt == "github":
        return "\n".join(d.format_github() for d in ordered)
    return "\n".join(d.format() for d in ordered)
