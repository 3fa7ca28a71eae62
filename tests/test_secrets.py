from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.models.common import Secret
from reconciler.secrets import RedactingFilter, SecretError, redact, resolve_formatted, resolve_secret


def test_env_and_file_secrets_resolve_and_are_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_SECRETS_DIR", str(tmp_path))
    secret_file = tmp_path / "token"
    secret_file.write_text("file-secret-value\n")
    from_env = Secret.model_validate({"secretRef": {"env": "APP_T"}, "format": "Bearer {value}"})
    from_file = Secret.model_validate({"secretRef": {"file": str(secret_file)}})
    assert resolve_formatted(from_env, {"APP_T": "env-secret-value"}) == "Bearer env-secret-value"
    assert resolve_secret(from_file) == "file-secret-value"
    assert redact("auth=env-secret-value and file-secret-value") == "auth=*** and ***"


def test_missing_secret_names_reference_not_value() -> None:
    secret = Secret.model_validate({"secretRef": {"env": "APP_ABSENT_SECRET"}})
    with pytest.raises(SecretError, match="env:APP_ABSENT_SECRET is not set"):
        resolve_secret(secret, {})


def test_logging_filter_redacts(caplog: pytest.LogCaptureFixture) -> None:
    resolve_secret(Secret.model_validate({"secretRef": {"env": "X"}}), {"X": "log-secret-123"})
    logger = logging.getLogger("herald.test")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO):
        logger.info("sending with %s", "log-secret-123")
    assert "log-secret-123" not in caplog.text and "***" in caplog.text
