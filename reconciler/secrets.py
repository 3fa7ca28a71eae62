"""Resolve secret references and keep resolved values out of every output.

Every resolved value is registered with the process-wide Redactor; logs, plans, audit entries,
error messages and reports pass text through `redact()` before it leaves the process.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

from .models.common import Secret

REDACTED = "***"
_MIN_SECRET_LENGTH = 4


class SecretError(RuntimeError):
    """A referenced secret is not available. The message names the reference, never a value."""


class Redactor:
    def __init__(self) -> None:
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def register(self, value: str) -> None:
        if len(value) >= _MIN_SECRET_LENGTH:
            with self._lock:  # also as it appears in URLs and form bodies (error messages quote those)
                self._values.update({value, quote(value, safe=""), quote_plus(value, safe="")})

    def redact(self, text: str) -> str:
        with self._lock:
            values = sorted(self._values, key=len, reverse=True)
        for value in values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text


REDACTOR = Redactor()


def redact(text: str) -> str:
    return REDACTOR.redact(text)


def resolve_secret(secret: Secret, environ: dict[str, str] | None = None) -> str:
    """The raw credential (not wrapped by `format`)."""
    env = os.environ if environ is None else environ
    ref = secret.secretRef
    if ref.env is not None:
        if ref.env not in env or env[ref.env] == "":
            raise SecretError(f"secret env:{ref.env} is not set")
        value = env[ref.env]
    else:
        assert ref.file is not None
        try:
            value = Path(ref.file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise SecretError(f"secret file:{ref.file} cannot be read ({exc.strerror})") from None
    REDACTOR.register(value)
    return value


def resolve_formatted(secret: Secret, environ: dict[str, str] | None = None) -> str:
    """The credential wrapped by its `format`, e.g. 'Bearer <token>'."""
    value = resolve_secret(secret, environ)
    formatted = secret.format.replace("{value}", value)
    REDACTOR.register(formatted)
    return formatted


class RedactingFilter(logging.Filter):
    """Attach to handlers so no secret value is ever written to a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:  # tracebacks quote exception messages
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
