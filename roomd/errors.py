"""The error hierarchy: protocol error codes, WebSocket close codes, HTTP statuses.

Every error roomd raises on purpose is a `RoomdError`: `ProtocolError` for a
client message that broke a rule, `ApiError` for a server API request that did,
`ConfigError` for a setting out of range.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    """The `code` of an `error` message (PROTOCOL.md section 7)."""

    BAD_REQUEST = "badRequest"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "notFound"
    NOT_MEMBER = "notMember"
    ROOM_FULL = "roomFull"
    TOO_MANY_ROOMS = "tooManyRooms"
    TOO_LARGE = "tooLarge"
    RATE_LIMITED = "rateLimited"
    INTERNAL = "internal"
    CONFLICT = "conflict"
    UNAVAILABLE = "unavailable"


class CloseCode(enum.IntEnum):
    """The WebSocket close codes roomd sends (PROTOCOL.md section 7)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    # Recorded when the transport ended without a close frame; never sent.
    ABNORMAL = 1006
    INVALID_PAYLOAD = 1007
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    # A cluster node that may have missed room events, or was cut off from Redis.
    SERVICE_RESTART = 1012
    AUTH_TIMEOUT = 4001
    HEARTBEAT_TIMEOUT = 4002
    SLOW_CONSUMER = 4003
    RATE_LIMIT_ABUSE = 4004
    TOKEN_EXPIRED = 4005


class RoomdError(Exception):
    """Base of every error roomd raises on purpose."""


class ProtocolError(RoomdError):
    """A client message broke a rule; answer it with `error {code, message}`.

    The connection stays open and no state changes: the shell replies with
    `roomd.core.event.error(exc, id, roomId)` and carries on.
    """

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retry_after: float | None = None,
        key_epoch: int | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        # With `conflict`: the room's current key epoch (PROTOCOL.md section 8.4).
        self.key_epoch = key_epoch


# The HTTP status of each error code the server API answers with (SERVER_API.md).
HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.TOO_MANY_ROOMS: 429,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.INTERNAL: 500,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAVAILABLE: 503,
}


class ApiError(RoomdError):
    """A server API request failed: answer `{"error": {code, message}}` with `status`.

    `status` defaults to the code's `HTTP_STATUS` (409 for `conflict`, such as a
    taken room id); a route gives its own where SERVER_API.md says so (400 for a
    field over its limit).
    """

    def __init__(self, code: ErrorCode, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or HTTP_STATUS[code]


class ConfigError(RoomdError):
    """A setting is missing or out of range; `roomd serve` exits with its message."""
