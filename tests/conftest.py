"""Shared fixtures: token secrets and a guard against error logs."""

from __future__ import annotations

import logging

import pytest

SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@pytest.fixture(autouse=True)
def no_error_logs(caplog: pytest.LogCaptureFixture):
    """Fail any test during which roomd logged an error (an unexpected exception)."""
    caplog.set_level(logging.DEBUG, logger="roomd")
    yield
    errors = [
        r for r in caplog.records if r.name.startswith("roomd") and r.levelno >= logging.ERROR
    ]
    assert not errors, f"roomd logged errors: {[r.getMessage() for r in errors]}"
