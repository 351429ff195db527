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
MAX_EPOCH = 64
# A signal batch's hard bound; a room also holds it to `max_members`.
MAX_SIGNALS = 1024
MAX_HISTORY_PAGE = 100
DEFAULT_HISTORY_PAGE = 50
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


def _int(name: str, value: object, low: int, high: int = MAX_ID_INT) -> int:
    # bool is an int in Python, never on the wire.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"field '{name}' must be an integer")
    if not low <= value <= high:
        raise _bad(f"field '{name}' must be from {low} to {high}")
    return value


def _ints(low: int, high: int = MAX_ID_INT) -> Parser:
    return lambda name, value, text: _int(name, value, low, high)


@attrs.frozen
class Position:
    """A position in a room's stream (PROTOCOL.md section 8.1): `(epoch, seq)`."""

    epoch: str
    seq: int


def _position(name: str, value: object, text: bool) -> Position:
    if not isinstance(value, Mapping):
        raise _bad(f"field '{name}' must be a map of 'epoch' and 'seq'")
    epoch = value.get("epoch")
    if not isinstance(epoch, str) or not 1 <= len(epoch) <= MAX_EPOCH:
        raise _bad(f"field '{name}.epoch' must be a string of 1 to {MAX_EPOCH} characters")
    return Position(epoch, _int(f"{name}.seq", value.get("seq"), 0))


@attrs.frozen
class SignalTo:
    """One entry of a signal batch: `payload` for every connection of `to`."""

    to: str
    payload: bytes


def _signals(name: str, value: object, text: bool) -> tuple[SignalTo, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_SIGNALS:
        raise _bad(f"field '{name}' must be a list of 1 to {MAX_SIGNALS} entries")
    entries = []
    for index, entry in enumerate(value):
        if not isinstance(entry, Mapping):
            raise _bad(f"entry {index} of '{name}' must be a map of 'to' and 'payload'")
        to, payload = entry.get("to"), entry.get("payload")
        if to is None or payload is None:
            raise _bad(f"entry {index} of '{name}' needs 'to' and 'payload'")
        entries.append(
            SignalTo(
                validate_aid(to, "to"), decode_blob("payload", payload, MAX_PAYLOAD, text=text)
            )
        )
    return tuple(entries)


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

    def check(self) -> None:
        """Raise `badRequest` if the fields, each valid alone, do not fit together."""


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
        ("since", "since", _position, False),
    )
    public_key: bytes | None = None
    # The last position the client saw: replay what it missed (section 8.2).
    since: Position | None = None


@attrs.frozen(kw_only=True)
class SendMessage(RoomMessage):
    """`message`: relay ciphertext to every member, with the next `seq`."""

    TYPE = "message"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("ciphertext", "ciphertext", _blob(MAX_CIPHERTEXT), True),
        ("iv", "iv", _blob(MAX_IV), False),
        ("clientMsgId", "client_msg_id", _chars(1, 64), False),
        ("keyEpoch", "key_epoch", _ints(0), False),
    )
    ciphertext: bytes
    iv: bytes | None = None
    client_msg_id: str | None = None
    key_epoch: int | None = None


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
    """`signal`: key-exchange payloads, each for the connections of one AID.

    Sent alone (`to`, `payload`) or as a batch (`signals`), never both; either
    way `entries` lists them in order.
    """

    TYPE = "signal"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("to", "to", _AID, False),
        ("payload", "payload", _blob(MAX_PAYLOAD), False),
        ("signals", "signals", _signals, False),
    )
    to: str | None = None
    payload: bytes | None = None
    signals: tuple[SignalTo, ...] | None = None

    def check(self) -> None:
        """Raise `badRequest` unless exactly one of the two forms is given."""
        single = self.to is not None or self.payload is not None
        if self.signals is not None and single:
            raise _bad("signal takes 'to' and 'payload', or 'signals', not both")
        if self.signals is None and (self.to is None or self.payload is None):
            raise _bad("signal needs 'to' and 'payload' (or 'signals')")

    @property
    def entries(self) -> tuple[SignalTo, ...]:
        """Every `{to, payload}` of this signal, in order."""
        if self.signals is not None:
            return self.signals
        assert self.to is not None and self.payload is not None
        return (SignalTo(self.to, self.payload),)


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
        ("keyEpoch", "key_epoch", _ints(0), False),
    )
    encrypted_room_key: bytes
    # The epoch the new key opens; absent means the room's next one (section 8.4).
    key_epoch: int | None = None


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
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("aid", "aid", _AID, True),
        ("ban", "ban", _BOOL, False),
    )
    aid: str
    ban: bool = False


@attrs.frozen(kw_only=True)
class Unban(RoomMessage):
    """`unban` (host only): let a banned AID join again."""

    TYPE = "unban"
    FIELDS = (("roomId", "room_id", _ROOM, True), ("aid", "aid", _AID, True))
    aid: str


@attrs.frozen(kw_only=True)
class GetHistory(RoomMessage):
    """`getHistory`: the newest `limit` messages before `before` (section 8.3)."""

    TYPE = "getHistory"
    FIELDS = (
        ("roomId", "room_id", _ROOM, True),
        ("before", "before", _ints(1), False),
        ("limit", "limit", _ints(1, MAX_HISTORY_PAGE), False),
    )
    # None: after the last message.
    before: int | None = None
    limit: int = DEFAULT_HISTORY_PAGE


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
        Unban,
        GetHistory,
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
    message = cls(**kwargs)
    message.check()
    return message
