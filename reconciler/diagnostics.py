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
        where = f"{self.path}:{self.line}:{self.col}"
        field = f" {self.field}:" if self.field else ""
        prefix = "" if self.severity == "error" else "warning: "
        return f"{where}: {prefix}{self.subject}:{field} {self.message}"

    def format_github(self) -> str:
        level = "error" if self.severity == "error" else "warning"
        title = f"{self.subject} {self.field}".strip()
        message = self.message.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
        return f"::{level} file={self.path},line={self.line},col={self.col},title={title}::{message}"


def render_diagnostics(diagnostics: list[Diagnostic], fmt: str) -> str:
    ordered = sorted(diagnostics)
    if fmt == "json":
        return json.dumps([asdict(d) for d in ordered], indent=2)
    if fmt == "github":
        return "\n".join(d.format_github() for d in ordered)
    return "\n".join(d.format() for d in ordered)
