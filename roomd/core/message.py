"""Client messages: one frozen class per type and the validation that builds them.

`parse_message(fields, text=...)` turns a decoded frame (a dict from the codec) into
one of the classes below or raises `ProtocolError`. It is the only place that knows
field names, types and the size limits of PROTOCOL.md sections 4 and 6.

Decisions where PROTOCOL.md is silent (see docs/protocol-notes.md):
- unknown extra fields are ignored, so newer clients can talk to older servers;
- an optional field given as `null` counts as absent;
- `roomId` is 1..128 characters of the URL-safe alphabet `[A-Za-z0-9_-]`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from roomd.errors import ErrorCode, ProtocolError

RequestId = str | int

MAX_CIPHERTEXT = 64 * 1024
MAX_PAYLOAD = 16 * 1024
MAX_ROOM_KEY = 4 * 1024
MAX_PUBLIC_KEY = 256
MAX_IV = 64
MAX_TOKEN = 8 * 1024
MAX_AID = 128
MAX_ROOM_ID = 128
MAX_ID_INT = 2**53
_ROOM_ID_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _bad(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_REQUEST, message)


def _text(name: str, value: object, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise _bad(f"field '{name}' must be a string")
    if len(value) < low:
        raise _bad(f"field '{name}' must not be empty")
    if len(value) > high:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"field '{name}' is {len(value)} characters (limit {high})"
        )
    return value


def validate_aid(value: object, name: str = "aid") -> str:
    """Return `value` if it is a valid AID (1..128 printable characters), else raise."""
    aid = _text(name, value, 1, MAX_AID)
    if not aid.isprintable():
        raise _bad(f"field '{name}' must contain printable characters only")
    return aid


def validate_room_id(value: object, name: str = "roomId") -> str:
    """Return `value` if it is a valid room id (1..128 URL-safe characters), else raise."""
    room_id = _text(name, value, 1, MAX_ROOM_ID)
    if not _ROOM_ID_ALPHABET.issuperset(room_id):
        raise _bad(f"field '{name}' must use the characters A-Z a-z 0-9 _ - only")
    return room_id


def validate_request_id(value: object) -> RequestId:
    """Return `value` if it is a valid request `id` (1..64 chars or an int within 2^53)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _bad("field 'id' must be a string or an integer")
    if isinstance(value, int):
        if not -MAX_ID_INT <= value <= MAX_ID_INT:
            raise _bad("field 'id' must be within +-2^53")
        return value
    return _text("id", value, 1, 64)


def decode_blob(name: str, value: object, limit: int, *, text: bool) -> bytes:
    """Return the bytes of blob field `name`: base64 in JSON (`text`), a byte string in CBOR.

    Raises `badRequest` for a wrong type or bad base64, `tooLarge` past `limit` bytes.
    """
    if text:
        if not isinstance(value, str):
            raise _bad(f"field '{name}' must be a base64 string")
        # Reject before decoding: base64 is 4 characters per 3 bytes.
        if len(value) > (limit + 2) // 3 * 4:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"field '{name}' is over {limit} bytes")
        try:
            blob = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            blob = None
        # b64decode(validate=True) still lets '=' follow a complete quantum ("aGlh=");
        # padded base64 of n bytes is exactly 4 * ceil(n / 3) characters.
        if blob is None or len(value) != (len(blob) + 2) // 3 * 4:
            raise _bad(f"field '{name}' is not valid base64 (RFC 4648, padded)")
    elif isinstance(value, bytes):
        blob = value
    else:
        raise _bad(f"field '{name}' must be a byte string")
    if len(blob) > limit:
        raise ProtocolError(
            ErrorCode.TOO_LARGE, f"field '{name}' is {len(blob)} bytes (limit {limit})"
        )
    return blob


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"field '{name}' must be a boolean")
    return value


Parser = Callable[[str, object, bool], Any]


def _blob(limit: int) -> Parser:
    return lambda name, value, text: decode_blob(name, value, limit, text=text)


def _chars(low: int, high: int) -> Parser:
    return lambda name, value, text: _text(name, value, low, high)


_ROOM: Parser = lambda name, value, text: validate_room_id(value, name)  # noqa: E731
_AID: Parser = lambda name, value, text: validate_aid(value, name)  # noqa: E731
_BOOL: Parser = lambda name, value, text: _bool(name, value)  # noqa: E731


@attrs.frozen(kw_only=True)
class Message:
    """A validated client message; `id` is the optional request id to echo."""

    TYPE: ClassVar[str] = ""
    # (wire name, attribute name, parser, required)
    FIELDS: ClassVar[tuple[tuple[str, str, Parser, bool], ...]] = ()
    id: RequestId | None = None


@attrs.frozen(kw_only=True)
class RoomMessage(Message):
    """A message addressed to one room; the connection must be a member (but for joins)."""

    room_id: str


@attrs.frozen(kw_only=True)
class Auth(Message):
    """`auth`: prove an AID with a token."""

    TYPE = "auth"
    FIELDS = (("token", "token", _chars(1, MAX_TOKEN), True),)
    token: str


@attrs.frozen(kw_only=True)
class CreateChatroom(Message):
    """`createChatroom`: create a room and join it as host."""

    TYPE = "createChatroom"
    FIELDS = (
        ("encryptedRoomKey", "encrypted_room_key", _blob(MAX_ROOM_KEY), False),
        ("publicKey", "public_key", _blob(MAX_PUBLIC_KEY), False),
    )
    encrypted_room_key: bytes | None = None
    public_key: bytes | None = None


@attrs.frozen(kw_only=True)
class JoinChatroom(RoomMessage):
    """`joinChatroom`: join a room."""

    TYPE = "joinChatroom"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("publicKey", "public_key", _blob(MAX_PUBLIC_KEY), False),
    )
    public_key: bytes | None = None


@attrs.frozen(kw_only=True)
class SendMessage(RoomMessage):
    """`message`: relay ciphertext to every member, with the next `seq`."""

    TYPE = "message"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("ciphertext", "ciphertext", _blob(MAX_CIPHERTEXT), True),
        ("iv", "iv", _blob(MAX_IV), False),
        ("clientMsgId", "client_msg_id", _chars(1, 64), False),
    )
    ciphertext: bytes
    iv: bytes | None = None
    client_msg_id: str | None = None


@attrs.frozen(kw_only=True)
class Typing(RoomMessage):
    """`typing`: tell the others whether this AID is typing."""

    TYPE = "typing"
    FIELDS = (("roomId", "room_id", _ROOM, True), ("isTyping", "is_typing", _BOOL, True))
    is_typing: bool


@attrs.frozen(kw_only=True)
class Reaction(RoomMessage):
    """`reaction`: add (or remove) an emoji on a message."""

    TYPE = "reaction"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("messageId", "message_id", _chars(1, 64), True),
        ("emoji", "emoji", _chars(1, 32), True),
        ("remove", "remove", _BOOL, False),
    )
    message_id: str
    emoji: str
    remove: bool = False


@attrs.frozen(kw_only=True)
class Signal(RoomMessage):
    """`signal`: a key-exchange payload for the connections of one AID."""

    TYPE = "signal"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("to", "to", _AID, True),
        ("payload", "payload", _blob(MAX_PAYLOAD), True),
    )
    to: str
    payload: bytes


@attrs.frozen(kw_only=True)
class LeaveChatroom(RoomMessage):
    """`leaveChatroom`: leave a room."""

    TYPE = "leaveChatroom"
    FIELDS = (("roomId", "room_id", _ROOM, True),)


@attrs.frozen(kw_only=True)
class UpdateRoomKey(RoomMessage):
    """`updateRoomKey` (host only): replace the encrypted room key."""

    TYPE = "updateRoomKey"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("encryptedRoomKey", "encrypted_room_key", _blob(MAX_ROOM_KEY), True),
    )
    encrypted_room_key: bytes


@attrs.frozen(kw_only=True)
class TransferHost(RoomMessage):
    """`transferHost` (host only): make another present AID host."""

    TYPE = "transferHost"
    FIELDS = (("roomId", "room_id", _ROOM, True), ("to", "to", _AID, True))
    to: str


@attrs.frozen(kw_only=True)
class Kick(RoomMessage):
    """`kick` (host only): remove every connection of an AID."""

    TYPE = "kick"
    FIELDS = (("roomId", "room_id", _ROOM, True), ("aid", "aid", _AID, True))
    aid: str


@attrs.frozen(kw_only=True)
class DeleteChatroom(RoomMessage):
    """`deleteChatroom` (host only): delete the room."""

    TYPE = "deleteChatroom"
    FIELDS = (("roomId", "room_id", _ROOM, True),)


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Auth,
        CreateChatroom,
        JoinChatroom,
        SendMessage,
        Typing,
        Reaction,
        Signal,
        LeaveChatroom,
        UpdateRoomKey,
        TransferHost,
        Kick,
        DeleteChatroom,
    )
}


def peek_context(fields: object) -> tuple[RequestId | None, str | None]:
    """Return the valid `id` and `roomId` of a frame, for echoing in an error reply.

    Never raises: a field that is itself invalid is returned as None.
    """
    if not isinstance(fields, Mapping):
        return None, None
    request_id: RequestId | None = None
    room_id: str | None = None
    try:
        if fields.get("id") is not None:
            request_id = validate_request_id(fields["id"])
    except ProtocolError:
        pass
    try:
        if fields.get("roomId") is not None:
            room_id = validate_room_id(fields["roomId"])
    except ProtocolError:
        pass
    return request_id, room_id


def parse_message(fields: object, *, text: bool) -> Message:
    """Return the validated message of a decoded frame, or raise `ProtocolError`.

    `text` says the frame came as JSON (blobs are base64 strings) rather than CBOR
    (blobs are byte strings). Raises `badRequest` or `tooLarge`; never anything else.
    """
    if not isinstance(fields, Mapping):
        raise _bad("a message must be a map")
    kind = fields.get("type")
    if not isinstance(kind, str):
        raise _bad("field 'type' is missing or not a string")
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise _bad(f"unknown message type {kind[:64]!r}")
    kwargs: dict[str, Any] = {}
    raw_id = fields.get("id")
    if raw_id is not None:
        kwargs["id"] = validate_request_id(raw_id)
    for wire, attr, parse, required in cls.FIELDS:
        value = fields.get(wire)
        if value is None:
            if required:
                raise _bad(f"field '{wire}' is missing from {kind}")
            continue
        kwargs[attr] = parse(wire, value, text)
    return cls(**kwargs)
