"""Resolve secret references and keep resolved values out of every output.

Every resolved value is registered with the process-wide Redactor; logs, plans, audit entries,
error messages and reports pass text through `redact()` before it leaves the process.

Where a reference may resolve (checked by `herald validate` and again here, at resolution):
- credential fields the models declare (provider credentials, notification tokens): any variable
  except the daemon's own `HERALD_*` ones (notifications may use HERALD_GITHUB_TOKEN and
  HERALD_NOTIFY_WEBHOOK, their documented defaults);
- headers (linked content, generic HTTP providers): only secrets named in Settings
  `spec.secrets.allow`, never `HERALD_*`;
- files only inside the directory HERALD_SECRETS_DIR (relative paths are read from there; the real
  path, symlinks followed, must stay inside). Without that variable, file references do not resolve.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import quote, quote_plus

from .models.common import Secret, SecretRef

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


SECRETS_DIR_ENV = "HERALD_SECRETS_DIR"
RESERVED_PREFIX = "HERALD_"
NOTIFICATION_VARIABLES = frozenset({"HERALD_GITHUB_TOKEN", "HERALD_NOTIFY_WEBHOOK"})
SecretUse = Literal["credential", "notification", "header"]


def secret_name(ref: SecretRef) -> str:
    """The name an allow-list entry matches: the variable name, or the file path as written."""
    return ref.env if ref.env is not None else str(ref.file)


def reference_problem(ref: SecretRef, use: SecretUse, allow: Collection[str] = ()) -> str | None:
    """Why `ref` may not be used as `use` (None: it may). Names only, never a value."""
    reserved = ref.env is not None and ref.env.startswith(RESERVED_PREFIX)
    if reserved and not (use == "notification" and ref.env in NOTIFICATION_VARIABLES):
        return (f"secret env:{ref.env} is one of the daemon's own variables ({RESERVED_PREFIX}*); "
                "campaigns and providers cannot read it")
    if use == "header" and secret_name(ref) not in allow:
        return (f"secret {ref.describe()} is not allowed in a header: list '{secret_name(ref)}' in "
                "Settings spec.secrets.allow")
    return None


def secrets_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    configured = env.get(SECRETS_DIR_ENV) or (os.environ.get(SECRETS_DIR_ENV) if environ is not None else None)
    return Path(configured) if configured else None


def file_problem(path: str, directory: Path | None) -> str | None:
    """Why a secret file reference is refused by its path alone (None: it may be read)."""
    target = Path(path)
    if not target.is_absolute():
        if ".." in target.parts:
            return f"secret file:{path} leaves the secrets directory ({SECRETS_DIR_ENV})"
        return None
    if directory is None:
        return f"secret file:{path} is an absolute path; file secrets are read from {SECRETS_DIR_ENV} (unset)"
    if not _inside(Path(os.path.normpath(target)), Path(os.path.normpath(directory.absolute()))):
        return f"secret file:{path} is outside the secrets directory ({SECRETS_DIR_ENV})"
    return None


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def _secret_file(path: str, environ: Mapping[str, str] | None) -> Path:
    """The real path of a file secret, inside the secrets directory (symlinks followed)."""
    directory = secrets_dir(environ)
    if directory is None:
        raise SecretError(f"secret file:{path} cannot be read: {SECRETS_DIR_ENV} is not set")
    problem = file_problem(path, directory)
    if problem:
        raise SecretError(problem)
    root = directory.resolve()
    real = (root / path).resolve()
    if not _inside(real, root):
        raise SecretError(f"secret file:{path} is outside the secrets directory ({SECRETS_DIR_ENV})")
    return real


def resolve_secret(secret: Secret, environ: Mapping[str, str] | None = None, *, use: SecretUse = "credential",
                   allow: Collection[str] = ()) -> str:
    """The raw credential (not wrapped by `format`). Refuses references `use` does not permit."""
    env = os.environ if environ is None else environ
    ref = secret.secretRef
    problem = reference_problem(ref, use, allow)
    if problem:
        raise SecretError(problem)
    if ref.env is not None:
        if ref.env not in env or env[ref.env] == "":
            raise SecretError(f"secret env:{ref.env} is not set")
        value = env[ref.env]
    else:
        assert ref.file is not None
        path = _secret_file(ref.file, environ)
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
            raise SecretError(f"secret file:{ref.file} cannot be read ({reason})") from None
    REDACTOR.register(value)
    return value


def register_secret_value(secret: Secret, environ: Mapping[str, str] | None = None) -> None:
    """Teach the redactor a referenced value without using it (whatever the reference's use), so it
    cannot leak into output even where the reference is refused. Files only inside the secrets dir."""
    ref = secret.secretRef
    env = os.environ if environ is None else environ
    if ref.env is not None:
        if env.get(ref.env):
            REDACTOR.register(env[ref.env])
        return
    try:
        REDACTOR.register(_secret_file(str(ref.file), environ).read_text(encoding="utf-8").strip())
    except (SecretError, OSError, UnicodeDecodeError):
        return


def resolve_formatted(secret: Secret, environ: Mapping[str, str] | None = None, *, use: SecretUse = "credential",
                      allow: Collection[str] = ()) -> str:
    """The credential wrapped by its `format`, e.g. 'Bearer <token>'."""
    value = resolve_secret(secret, environ, use=use, allow=allow)
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
