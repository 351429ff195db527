"""Validation of client messages (PROTOCOL.md sections 1, 3, 4, 6 and 7)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.errors import ErrorCode, ProtocolError

BAD = ErrorCode.BAD_REQUEST
LARGE = ErrorCode.TOO_LARGE
ROOM = "Room_id-42"
BLOBS = {"ciphertext", "iv", "payload", "publicKey", "encryptedRoomKey"}
# Every message type with every field set, blobs as bytes, and the class it parses to.
FULL: dict[str, tuple[dict[str, Any], m.Message]] = {
    "auth": ({"token": "a.b.c"}, m.Auth(token="a.b.c")),
    "createChatroom": (
        {"encryptedRoomKey": b"key", "publicKey": b"pub"},
        m.CreateChatroom(encrypted_room_key=b"key", public_key=b"pub"),
    ),
    "joinChatroom": (
        {"roomId": ROOM, "publicKey": b"pub"},
        m.JoinChatroom(room_id=ROOM, public_key=b"pub"),
    ),
    "message": (
        {"roomId": ROOM, "ciphertext": b"\x00\xff", "iv": b"iv", "clientMsgId": "c1"},
        m.SendMessage(room_id=ROOM, ciphertext=b"\x00\xff", iv=b"iv", client_msg_id="c1"),
    ),
    "typing": ({"roomId": ROOM, "isTyping": True}, m.Typing(room_id=ROOM, is_typing=True)),
    "reaction": (
        {"roomId": ROOM, "messageId": "m1", "emoji": "👍", "remove": True},
        m.Reaction(room_id=ROOM, message_id="m1", emoji="👍", remove=True),
    ),
    "signal": (
        {"roomId": ROOM, "to": "bob", "payload": b"sdp"},
        m.Signal(room_id=ROOM, to="bob", payload=b"sdp"),
    ),
    "leaveChatroom": ({"roomId": ROOM}, m.LeaveChatroom(room_id=ROOM)),
    "updateRoomKey": (
        {"roomId": ROOM, "encryptedRoomKey": b"k2"},
        m.UpdateRoomKey(room_id=ROOM, encrypted_room_key=b"k2"),
    ),
    "transferHost": ({"roomId": ROOM, "to": "bob"}, m.TransferHost(room_id=ROOM, to="bob")),
    "kick": ({"roomId": ROOM, "aid": "bob"}, m.Kick(room_id=ROOM, aid="bob")),
    "deleteChatroom": ({"roomId": ROOM}, m.DeleteChatroom(room_id=ROOM)),
}
# The required fields of each type, from the table of PROTOCOL.md section 4.
REQUIRED = {
    "auth": ["token"],
    "createChatroom": [],
    "joinChatroom": ["roomId"],
    "message": ["roomId", "ciphertext"],
    "typing": ["roomId", "isTyping"],
    "reaction": ["roomId", "messageId", "emoji"],
    "signal": ["roomId", "to", "payload"],
    "leaveChatroom": ["roomId"],
    "updateRoomKey": ["roomId", "encryptedRoomKey"],
    "transferHost": ["roomId", "to"],
    "kick": ["roomId", "aid"],
    "deleteChatroom": ["roomId"],
}
# Minimal messages (required fields only) and what they parse to.
MINIMAL = {
    "createChatroom": m.CreateChatroom(),
    "joinChatroom": m.JoinChatroom(room_id=ROOM),
    "message": m.SendMessage(room_id=ROOM, ciphertext=b"\x00\xff"),
    "reaction": m.Reaction(room_id=ROOM, message_id="m1", emoji="👍"),
}
BOOLS = {"isTyping", "remove"}
FIELD_CASES = [(kind, name) for kind, (fields, _) in FULL.items() for name in fields]
REQUIRED_CASES = [(kind, name) for kind, names in REQUIRED.items() for name in names]
codecs = pytest.mark.parametrize("text", [True, False], ids=["json", "cbor"])


def b64(data: bytes) -> str:
    """Return `data` as padded standard base64."""
    return base64.b64encode(data).decode()


def wire(kind: str, fields: dict[str, Any], *, text: bool) -> dict[str, Any]:
    """Return message `kind` as a decoded frame: blobs base64 in JSON, bytes in CBOR."""
    out: dict[str, Any] = {"type": kind}
    for name, value in fields.items():
        out[name] = b64(value) if text and name in BLOBS else value
    return out


def full(kind: str, *, text: bool, **changes: Any) -> dict[str, Any]:
    """Return the full message `kind` on the wire with `changes` applied."""
    return {**wire(kind, FULL[kind][0], text=text), **changes}


def rejects(fields: object, code: ErrorCode, *, text: bool) -> None:
    """Assert that parsing `fields` raises ProtocolError with `code`."""
    with pytest.raises(ProtocolError) as info:
        m.parse_message(fields, text=text)
    assert info.value.code is code, info.value.message


@codecs
@pytest.mark.parametrize("kind", FULL)
def test_every_type_parses_with_all_fields(kind: str, text: bool) -> None:
    """Each message type of section 4, all fields given, parses to its class with the values."""
    fields, expected = FULL[kind]
    assert m.parse_message(wire(kind, fields, text=text), text=text) == expected


@codecs
@pytest.mark.parametrize("kind", REQUIRED)
def test_every_type_parses_with_required_fields_only(kind: str, text: bool) -> None:
    """Optional fields may be left out; they take their defaults (remove=False, no iv)."""
    fields = {name: FULL[kind][0][name] for name in REQUIRED[kind]}
    expected = MINIMAL.get(kind, FULL[kind][1])
    assert m.parse_message(wire(kind, fields, text=text), text=text) == expected


@codecs
@pytest.mark.parametrize(("kind", "name"), REQUIRED_CASES)
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_required_field_is_bad_request(kind: str, name: str, how: str, text: bool) -> None:
    """A required field left out, or given as null, is a badRequest."""
    fields = full(kind, text=text)
    if how == "absent":
        del fields[name]
    else:
        fields[name] = None
    rejects(fields, BAD, text=text)


@codecs
@pytest.mark.parametrize("name", ["iv", "clientMsgId"])
def test_optional_field_given_as_null_is_absent(name: str, text: bool) -> None:
    """An optional field given as null counts as absent (docs/protocol-notes.md)."""
    msg = m.parse_message(full("message", text=text, **{name: None}), text=text)
    assert isinstance(msg, m.SendMessage)
    assert (msg.iv, msg.client_msg_id) == ((None, "c1") if name == "iv" else (b"iv", None))


@codecs
def test_unknown_fields_are_ignored(text: bool) -> None:
    """Extra fields a newer client might send do not make a message invalid."""
    fields = full("leaveChatroom", text=text, future=[1, 2], since=5)
    assert m.parse_message(fields, text=text) == m.LeaveChatroom(room_id=ROOM)


WRONG_STR = [5, 1.5, True, False, [], {}, ["x"], b"x"]
WRONG_BOOL = [1, 0, "true", "", 1.0, [], {}]
WRONG_BLOB = [5, True, [], {}, 1.5]


@codecs
@pytest.mark.parametrize(("kind", "name"), FIELD_CASES)
def test_field_of_wrong_type_is_bad_request(kind: str, name: str, text: bool) -> None:
    """Every field of every type given a value of another type (bools included) is badRequest."""
    if name in BOOLS:
        wrong = WRONG_BOOL
    elif name in BLOBS:
        wrong = [*WRONG_BLOB, b"x" if text else "eA=="]
    else:
        wrong = WRONG_STR
    for value in wrong:
        rejects(full(kind, text=text, **{name: value}), BAD, text=text)


BAD_BASE64 = [
    "aGk",  # missing padding
    "aGk=aGk=",  # padding in the middle
    "aGk==",  # excess padding
    "-_8=",  # the URL-safe alphabet (standard: "+/8=")
    "aGk!",  # not in the alphabet
    " aGk=",  # whitespace
    "aGk=\n",  # trailing newline
    "a",  # one character too many
    "====",
    "éé==",  # not ASCII
]


@pytest.mark.parametrize(("kind", "name"), [c for c in FIELD_CASES if c[1] in BLOBS])
@pytest.mark.parametrize("value", BAD_BASE64)
def test_json_blob_that_is_not_padded_standard_base64_is_bad_request(
    kind: str, name: str, value: str
) -> None:
    """A JSON blob must be RFC 4648 section 4 base64 with padding, nothing else."""
    rejects(full(kind, text=True, **{name: value}), BAD, text=True)


def test_standard_alphabet_decodes_plus_and_slash() -> None:
    """The characters + and / of the standard alphabet decode (the url-safe ones do not)."""
    msg = m.parse_message(full("message", text=True, ciphertext="+/8="), text=True)
    assert isinstance(msg, m.SendMessage) and msg.ciphertext == b"\xfb\xff"


@codecs
def test_empty_blob_is_zero_bytes(text: bool) -> None:
    """A blob may be empty (docs/protocol-notes.md): "" in JSON, b"" in CBOR."""
    msg = m.parse_message(full("message", text=text, ciphertext="" if text else b""), text=text)
    assert isinstance(msg, m.SendMessage) and msg.ciphertext == b""


BLOB_LIMITS = [
    ("message", "ciphertext", 64 * 1024),
    ("message", "iv", 64),
    ("signal", "payload", 16 * 1024),
    ("updateRoomKey", "encryptedRoomKey", 4 * 1024),
    ("createChatroom", "encryptedRoomKey", 4 * 1024),
    ("createChatroom", "publicKey", 256),
    ("joinChatroom", "publicKey", 256),
]


@codecs
@pytest.mark.parametrize(("kind", "name", "limit"), BLOB_LIMITS)
@pytest.mark.parametrize("extra", [1, 2, 3, 100])
def test_blob_size_limit_counts_decoded_bytes(
    kind: str, name: str, limit: int, extra: int, text: bool
) -> None:
    """A blob of exactly its limit in bytes parses; any byte more is tooLarge, in both codecs."""
    at_limit = wire(kind, {**FULL[kind][0], name: b"\x07" * limit}, text=text)
    assert m.parse_message(at_limit, text=text) is not None
    over = wire(kind, {**FULL[kind][0], name: b"\x07" * (limit + extra)}, text=text)
    rejects(over, LARGE, text=text)


STRING_LIMITS = [
    ("reaction", "emoji", 32, "👍"),
    ("reaction", "emoji", 32, "e"),
    ("reaction", "messageId", 64, "é"),
    ("message", "clientMsgId", 64, "😀"),
    ("signal", "to", 128, "a"),
    ("transferHost", "to", 128, "∂"),
    ("kick", "aid", 128, "b"),
    ("joinChatroom", "roomId", 128, "r"),
    ("auth", "token", 8 * 1024, "t"),
]


@codecs
@pytest.mark.parametrize(("kind", "name", "limit", "char"), STRING_LIMITS)
def test_string_length_limit_counts_code_points(
    kind: str, name: str, limit: int, char: str, text: bool
) -> None:
    """A string of 1 and of `limit` code points parses, one more is tooLarge, empty is bad."""
    for length in (1, limit):
        assert m.parse_message(full(kind, text=text, **{name: char * length}), text=text)
    rejects(full(kind, text=text, **{name: char * (limit + 1)}), LARGE, text=text)
    rejects(full(kind, text=text, **{name: ""}), BAD, text=text)


def test_emoji_limit_is_code_points_not_graphemes() -> None:
    """A family emoji is 5 code points, so 7 of them (35 code points) are over 32."""
    family = "👨\u200d👩\u200d👧"
    assert m.parse_message(full("reaction", text=True, emoji=family * 6), text=True)
    rejects(full("reaction", text=True, emoji=family * 7), LARGE, text=True)


@pytest.mark.parametrize(
    ("kind", "name"), [("signal", "to"), ("transferHost", "to"), ("kick", "aid")]
)
@pytest.mark.parametrize("aid", ["bob\n", "\x00", "a\tb", "zero\u200bwidth", "\x7f"])
def test_aid_with_unprintable_characters_is_bad_request(kind: str, name: str, aid: str) -> None:
    """An AID is printable characters only (section 3)."""
    rejects(full(kind, text=True, **{name: aid}), BAD, text=True)


@pytest.mark.parametrize("aid", ["a b", "Ünïcødé", "user@example.org", "😀", "did:key:z6Mk"])
def test_printable_aids_are_accepted(aid: str) -> None:
    """Spaces, non-ASCII letters and punctuation are printable, so valid in an AID."""
    assert m.validate_aid(aid) == aid


@pytest.mark.parametrize("room_id", ["room/1", "room id", "räum", "a.b", "x=", "+"])
def test_room_id_outside_the_url_safe_alphabet_is_bad_request(room_id: str) -> None:
    """A roomId uses A-Z a-z 0-9 _ - only (docs/protocol-notes.md)."""
    rejects(full("joinChatroom", text=True, roomId=room_id), BAD, text=True)


@codecs
@pytest.mark.parametrize("request_id", ["x", "a" * 64, "é" * 64, 0, 1, -1, 2**53, -(2**53)])
def test_valid_request_id_is_kept(request_id: str | int, text: bool) -> None:
    """A string id of 1..64 chars or an integer within +-2^53 is kept for the echo."""
    msg = m.parse_message(full("kick", text=text, id=request_id), text=text)
    assert msg.id == request_id and type(msg.id) is type(request_id)


@codecs
@pytest.mark.parametrize(
    ("request_id", "code"),
    [
        ("", BAD),
        (True, BAD),
        (False, BAD),
        (1.0, BAD),
        (0.5, BAD),
        (2**53 + 1, BAD),
        (-(2**53) - 1, BAD),
        ([1], BAD),
        ({}, BAD),
        (b"id", BAD),
        ("a" * 65, LARGE),
    ],
)
def test_invalid_request_id_is_rejected(request_id: object, code: ErrorCode, text: bool) -> None:
    """A bool, float, out-of-range int, empty or non-string id is bad; a 65-char one too large."""
    rejects(full("deleteChatroom", text=text, id=request_id), code, text=text)


def test_request_id_null_is_absent() -> None:
    """`"id": null` is no id at all."""
    assert m.parse_message(full("auth", text=True, id=None), text=True).id is None


@codecs
@pytest.mark.parametrize("fields", [[], ["type", "auth"], "auth", 5, None, b"\xa0", ("type",)])
def test_a_frame_that_is_not_a_map_is_bad_request(fields: object, text: bool) -> None:
    """A message must be a map."""
    rejects(fields, BAD, text=text)


@codecs
@pytest.mark.parametrize(
    "kind", [None, 5, True, b"auth", ["auth"], "", "Auth", "hello", "joinSuccess", "newMessage"]
)
def test_missing_non_string_or_unknown_type_is_bad_request(kind: object, text: bool) -> None:
    """`type` must be one of the client message types of section 4 (server ones included)."""
    fields = {"roomId": ROOM, "token": "t"}
    if kind is not None:
        fields["type"] = kind
    rejects(fields, BAD, text=text)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"id": 7, "roomId": ROOM}, (7, ROOM)),
        ({"id": "x", "roomId": "bad room"}, ("x", None)),
        ({"id": True, "roomId": ROOM}, (None, ROOM)),
        ({"id": "a" * 65, "roomId": 5}, (None, None)),
        ({"id": 2.0}, (None, None)),
        ({"type": "nope", "id": -3}, (-3, None)),
        ({}, (None, None)),
        ([{"id": 1}], (None, None)),
        ("id", (None, None)),
        (None, (None, None)),
    ],
)
def test_peek_context_returns_only_valid_id_and_room(fields: object, expected: tuple) -> None:
    """peek_context picks out a valid `id` and `roomId` and drops invalid ones."""
    assert m.peek_context(fields) == expected


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(fields=VALUES | st.dictionaries(st.sampled_from(["id", "roomId", "type"]), VALUES))
def test_peek_context_never_raises(fields: object) -> None:
    """peek_context accepts any decoded value and returns a pair, never raising."""
    request_id, room_id = m.peek_context(fields)
    assert request_id is None or isinstance(request_id, str | int)
    assert room_id is None or isinstance(room_id, str)


FIELD_NAMES = sorted({name for fields, _ in FULL.values() for name in fields} | {"id"})


@given(
    kind=st.sampled_from(sorted(FULL)),
    fields=st.dictionaries(st.sampled_from(FIELD_NAMES), VALUES),
    text=st.booleans(),
)
def test_parse_message_raises_only_bad_request_or_too_large(
    kind: str, fields: dict[str, Any], text: bool
) -> None:
    """On any map, parse_message returns a Message or raises badRequest / tooLarge only."""
    try:
        msg = m.parse_message({**fields, "type": kind}, text=text)
    except ProtocolError as exc:
        assert exc.code in (BAD, LARGE)
    else:
        assert type(msg) is m.MESSAGE_TYPES[kind]
