"""What the server sends, as typed values: one frozen class per PROTOCOL.md section 5 type.

`parse_event` turns a decoded frame (a dict from the CBOR codec, whose blobs are
already bytes) into one of these. The SDK adds a few events of its own that no
server sends: `Gap` (a room was rejoined but its missed messages could not be
replayed), `RoomLost` (a room could not be rejoined after a reconnect),
`Disconnected`, `Reconnected` and `Stopped`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs


class MalformedEvent(Exception):
    """A frame from the server that is not an event of PROTOCOL.md section 5."""


@attrs.frozen
class Member:
    """A present AID of a room and the public key its first connection gave."""

    aid: str
    public_key: bytes | None


@attrs.frozen
class Hello:
    """The server's greeting: its protocol, heartbeat interval and limits."""

    protocol: str
    heartbeat_interval: float
    auth_timeout: float
    limits: Mapping[str, Any]
    features: tuple[str, ...]


@attrs.frozen
class AuthOk:
    """The connection is authenticated as `aid` until `expires_at` (Unix seconds)."""

    aid: str
    expires_at: int


@attrs.frozen
class Joined:
    """`joinSuccess`: this connection is in `room_id`; `recovered` only when `since` was sent."""

    room_id: str
    you: str
    host: str
    encrypted_room_key: bytes | None
    members: tuple[Member, ...]
    last_seq: int
    epoch: str
    key_epoch: int
    recovered: bool | None


@attrs.frozen
class NewMessage:
    """One message of a room's stream, with its `seq` and the sender's blobs."""

    room_id: str
    seq: int
    message_id: str
    sender: str
    ciphertext: bytes
    iv: bytes | None
    client_msg_id: str | None
    ts: int
    key_epoch: int | None


@attrs.frozen
class UserJoined:
    """An AID that was not present came into the room."""

    room_id: str
    aid: str
    public_key: bytes | None


@attrs.frozen
class UserLeft:
    """An AID's last connection left the room: `left`, `disconnected`, `timeout` or `kicked`."""

    room_id: str
    aid: str
    reason: str


@attrs.frozen
class HostUpdated:
    """The room's host is now `host`."""

    room_id: str
    host: str


@attrs.frozen
class Typing:
    """Another member started or stopped typing."""

    room_id: str
    aid: str
    is_typing: bool


@attrs.frozen
class Reaction:
    """A PROTOCOL.md `reaction` (roomd's own clients send reactions encrypted instead)."""

    room_id: str
    message_id: str
    aid: str
    emoji: str
    remove: bool


@attrs.frozen
class Signal:
    """A key-exchange payload sent to this AID by `sender`."""

    room_id: str
    sender: str
    payload: bytes


@attrs.frozen
class RoomKeyUpdated:
    """The host set the room's key of `key_epoch`."""

    room_id: str
    encrypted_room_key: bytes
    by: str
    key_epoch: int


@attrs.frozen
class History:
    """A page of a room's stream, oldest first; `more` when older messages exist."""

    room_id: str
    epoch: str
    messages: tuple[NewMessage, ...]
    more: bool


@attrs.frozen
class Unbanned:
    """The host's `unban` of `aid` was done."""

    room_id: str
    aid: str


@attrs.frozen
class LeftRoom:
    """`leftChatroom`: this connection is out of the room (`left` or `kicked`)."""

    room_id: str
    reason: str


@attrs.frozen
class RoomDeleted:
    """The room is gone (`deleted` or `expired`)."""

    room_id: str
    reason: str


@attrs.frozen
class ErrorEvent:
    """An `error`: a request was refused and nothing changed.

    `request` is the refused frame when it was one the SDK sends without
    waiting for a reply (`typing`, `reaction`, `signal`), so its sender can
    send it again; None otherwise.
    """

    code: str
    message: str
    room_id: str | None
    retry_after: float | None
    key_epoch: int | None
    # Out of the repr and equality: the frame holds blobs (signal payloads).
    request: Mapping[str, Any] | None = attrs.field(default=None, repr=False, eq=False)

    @property
    def retryable(self) -> bool:
        """Whether roomd did nothing and asks for the request again after `retry_after`."""
        return self.code in ("rateLimited", "unavailable")


@attrs.frozen
class Gap:
    """Rejoined `room_id` after a drop, but what was missed could not be replayed.

    Messages after `last_seen` up to `last_seq` of stream `epoch` may be missing
    (all of them when the epoch changed): page back with `get_history`.
    """

    room_id: str
    epoch: str
    last_seen: int
    last_seq: int


@attrs.frozen
class RoomLost:
    """A room this client was in could not be rejoined after a reconnect."""

    room_id: str
    error: ErrorEvent


@attrs.frozen
class Disconnected:
    """The connection dropped; the client is reconnecting (`code` is the close code)."""

    code: int | None
    reason: str


@attrs.frozen
class Reconnected:
    """The client is connected and authenticated again; rooms are being rejoined."""

    attempt: int


@attrs.frozen
class Stopped:
    """The client has stopped for good (`reason`); the stream ends after this event."""

    reason: str


Event = (
    Hello
    | AuthOk
    | Joined
    | NewMessage
    | UserJoined
    | UserLeft
    | HostUpdated
    | Typing
    | Reaction
    | Signal
    | RoomKeyUpdated
    | History
    | Unbanned
    | LeftRoom
    | RoomDeleted
    | ErrorEvent
    | Gap
    | RoomLost
    | Disconnected
    | Reconnected
    | Stopped
)


def _get(frame: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = frame.get(key)
    # CBOR keeps booleans and numbers apart; Python's bool is an int, so refuse it by hand.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        raise MalformedEvent(f"field '{key}' is not {_kinds(kind)}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _maybe(frame: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    return None if frame.get(key) is None else _get(frame, key, kind)


def _seconds(frame: Mapping[str, Any], key: str) -> float:
    seconds = float(_get(frame, key, (int, float)))  # OverflowError for a bignum
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise MalformedEvent(f"field '{key}' is not a finite number of seconds")
    return seconds


def _hello(f: Mapping[str, Any]) -> Hello:
    limits = _get(f, "limits", dict)
    for key in ("rate", "burst"):
        _seconds(limits, key)
    features = _maybe(f, "features", list) or []
    if not all(isinstance(feature, str) for feature in features):
        raise MalformedEvent("field 'features' holds a value that is not a string")
    return Hello(
        _get(f, "protocol", str),
        _seconds(f, "heartbeatInterval"),
        _seconds(f, "authTimeout"),
        limits,
        tuple(features),
    )


def _message(frame: Mapping[str, Any], room_id: str) -> NewMessage:
    return NewMessage(
        room_id=room_id,
        seq=_get(frame, "seq", int),
        message_id=_get(frame, "messageId", str),
        sender=_get(frame, "from", str),
        ciphertext=_get(frame, "ciphertext", bytes),
        iv=_maybe(frame, "iv", bytes),
        client_msg_id=_maybe(frame, "clientMsgId", str),
        ts=_get(frame, "ts", int),
        key_epoch=_maybe(frame, "keyEpoch", int),
    )


def _joined(f: Mapping[str, Any]) -> Joined:
    members = tuple(
        Member(_get(m, "aid", str), _maybe(m, "publicKey", bytes)) for m in _get(f, "members", list)
    )
    return Joined(
        room_id=_get(f, "roomId", str),
        you=_get(f, "you", str),
        host=_get(f, "host", str),
        encrypted_room_key=_maybe(f, "encryptedRoomKey", bytes),
        members=members,
        last_seq=_get(f, "lastSeq", int),
        epoch=_get(f, "epoch", str),
        key_epoch=_get(f, "keyEpoch", int),
        recovered=_maybe(f, "recovered", bool),
    )


def _history(f: Mapping[str, Any]) -> History:
    room_id = _get(f, "roomId", str)
    messages = tuple(_message(m, room_id) for m in _get(f, "messages", list))
    return History(room_id, _get(f, "epoch", str), messages, _get(f, "more", bool))


def _error(f: Mapping[str, Any]) -> ErrorEvent:
    return ErrorEvent(
        code=_get(f, "code", str),
        message=_get(f, "message", str),
        room_id=_maybe(f, "roomId", str),
        retry_after=None if f.get("retryAfter") is None else _seconds(f, "retryAfter"),
        key_epoch=_maybe(f, "keyEpoch", int),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], Event]] = {
    "hello": _hello,
    "authOk": lambda f: AuthOk(_get(f, "aid", str), _get(f, "expiresAt", int)),
    "joinSuccess": _joined,
    "newMessage": lambda f: _message(f, _get(f, "roomId", str)),
    "userJoined": lambda f: UserJoined(
        _get(f, "roomId", str), _get(f, "aid", str), _maybe(f, "publicKey", bytes)
    ),
    "userLeft": lambda f: UserLeft(
        _get(f, "roomId", str), _get(f, "aid", str), _get(f, "reason", str)
    ),
    "hostUpdated": lambda f: HostUpdated(_get(f, "roomId", str), _get(f, "host", str)),
    "typing": lambda f: Typing(
        _get(f, "roomId", str), _get(f, "aid", str), _get(f, "isTyping", bool)
    ),
    "reaction": lambda f: Reaction(
        _get(f, "roomId", str),
        _get(f, "messageId", str),
        _get(f, "aid", str),
        _get(f, "emoji", str),
        bool(_maybe(f, "remove", bool)),
    ),
    "signal": lambda f: Signal(
        _get(f, "roomId", str), _get(f, "from", str), _get(f, "payload", bytes)
    ),
    "roomKeyUpdated": lambda f: RoomKeyUpdated(
        _get(f, "roomId", str),
        _get(f, "encryptedRoomKey", bytes),
        _get(f, "by", str),
        _get(f, "keyEpoch", int),
    ),
    "history": _history,
    "unbanned": lambda f: Unbanned(_get(f, "roomId", str), _get(f, "aid", str)),
    "leftChatroom": lambda f: LeftRoom(_get(f, "roomId", str), _get(f, "reason", str)),
    "roomDeleted": lambda f: RoomDeleted(_get(f, "roomId", str), _get(f, "reason", str)),
    "error": _error,
}


def parse_event(frame: object) -> Event:
    """Return the typed event a decoded server frame carries.

    Raises `MalformedEvent` for anything that is not a map with a known `type`
    and the fields PROTOCOL.md gives it; unknown extra fields are ignored, as a
    1.x client must.
    """
    if not isinstance(frame, dict):
        raise MalformedEvent("frame is not a map")
    kind = frame.get("type")
    parser = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parser is None:
        raise MalformedEvent("unknown or missing event type")
    try:
        return parser(frame)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError):
        # A value of the wrong shape deep in a field (a member entry that is no map, a
        # number beyond float's range): the frame as a whole is malformed.
        raise MalformedEvent(f"malformed '{kind}'") from None
