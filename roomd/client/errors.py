"""What the SDK raises, and the close codes after which it stops reconnecting."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager

from roomd.client.events import ErrorEvent


class CloseCode(enum.IntEnum):
    """The close codes after which reconnecting does not help (PROTOCOL.md section 7)."""

    NORMAL = 1000
    TOKEN_EXPIRED = 4005


class RequestError(Exception):
    """roomd refused a request: `error.code` is PROTOCOL.md's error code."""

    def __init__(self, error: ErrorEvent) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


class ConnectionLost(Exception):
    """The connection dropped before roomd answered; whether it applied is unknown."""


class AuthenticationFailed(Exception):
    """roomd refused the token: reconnecting with it cannot succeed."""


@contextmanager
def unwrapped_errors() -> Iterator[None]:
    """Re-raise the one error a task group wraps as it was: the application's own."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
