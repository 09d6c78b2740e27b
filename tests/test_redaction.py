"""`redact`: credentials never reach an answer or a log line, whatever text quotes them."""

from __future__ import annotations

import pytest

from cd4ml.redaction import redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://user:pw@mlflow:5000/api", "http://***@mlflow:5000/api"),
        ("postgresql://cd4ml:p@ss@db/logs", "postgresql://***@db/logs"),  # an unescaped '@' too
        ("https://token@host", "https://***@host"),
        (
            "API request to https://u:secret@h/api/2.0 failed; retried http://h2/x",
            "API request to https://***@h/api/2.0 failed; retried http://h2/x",
        ),
        (
            "postgresql://db/logs?user=a&password=hunter2&sslmode=require",
            "postgresql://db/logs?user=a&password=***&sslmode=require",
        ),
        ("host=db password=hunter2 dbname=x", "host=db password=*** dbname=x"),
        ("https://h/?access_token=abc.def", "https://h/?access_token=***"),
        ("sqlite:////tmp/work/mlflow.db", "sqlite:////tmp/work/mlflow.db"),
        ("contact ops@example.com", "contact ops@example.com"),
    ],
)
def test_credentials_are_masked_and_the_rest_kept(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_secrets_passed_beside_the_uri_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-123456")
    monkeypatch.setenv("CD4ML_ADMIN_TOKEN", "x")  # too short to mask without masking everything
    assert redact("401 for token tok-123456 at x") == "401 for token *** at x"
    assert redact(ValueError("tok-123456")) == "***"
