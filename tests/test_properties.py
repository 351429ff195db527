"""Property tests: no client input breaks the codec, the validator or the connection.

PROTOCOL.md section 7: "A bad message never closes the connection by itself and
never changes any state." The sans-I/O properties feed `decode_frame` and
`parse_message` arbitrary and near-valid input; the shell properties run the real
server tree per example (`trio.run` on a fresh `MockClock`, since hypothesis drives
the examples) and check replies, liveness and room state after a barrage of bad
frames. The message schema below is written from PROTOCOL.md sections 4 and 6,
not read from `roomd.message`, so the two are checked against each other.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

import cbor2
import orjson
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.core.codec import decode_frame
from roomd.errors import ErrorCode, ProtocolError

from .harness import running_server

REJECTED = {ErrorCode.BAD_REQUEST, ErrorCode.TOO_LARGE}
CODECS = ["roomd.v1.json", "roomd.v1.cbor"]

# Examples are derived from the test's name, so every run tries the same inputs.
SANS_IO = settings(max_examples=300, derandomize=True, database=None, deadline=None)
SHELL = settings(
    max_examples=40,
    derandomize=True,
    database=None,
    deadline=None,
    # The autouse `no_error_logs` fixture is function-scoped on purpose: its caplog
    # must span every example, so an error logged by any of them fails the test.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- the schema of PROTOCOL.md section 4, with the limits of section 6 -------------

# kind: "blob" (limit in bytes), "text" (limit in characters, 1..limit), "room",
# "aid" (1..128 printable), "bool", "token" (a JWT: no length range is stated).
Field = tuple[str, str, int, bool]  # (wire name, kind, limit, required)
ROOM: Field = ("roomId", "room", 0, True)
SPEC: dict[str, tuple[Field, ...]] = {
    "auth": (("token", "token", 0, True),),
    "createChatroom": (
        ("encryptedRoomKey", "blob", 4096, False),
        ("publicKey", "blob", 256, False),
    ),
    "joinChatroom": (ROOM, ("publicKey", "blob", 256, False)),
    "message": (
        ROOM,
        ("ciphertext", "blob", 64 * 1024, True),
        ("iv", "blob", 64, False),
        ("clientMsgId", "text", 64, False),
    ),
    "typing": (ROOM, ("isTyping", "bool", 0, True)),
    "reaction": (
        ROOM,
        ("messageId", "text", 64, True),
        ("emoji", "text", 32, True),
        ("remove", "bool", 0, False),
    ),
    "signal": (ROOM, ("to", "aid", 128, True), ("payload", "blob", 16 * 1024, True)),
    "leaveChatroom": (ROOM,),
    "updateRoomKey": (ROOM, ("encryptedRoomKey", "blob", 4096, True)),
    "transferHost": (ROOM, ("to", "aid", 128, True)),
    "kick": (ROOM, ("aid", "aid", 128, True)),
    "deleteChatroom": (ROOM,),
}
RFC4648 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")

# -- strategies ----------------------------------------------------------------------


def _values(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4)
        ),
        max_leaves=12,
    )


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can write
    | st.floats(allow_nan=False, allow_infinity=False)  # orjson writes both as null
    | st.text(max_size=20)
)
json_values = _values(_SCALARS, st.text(max_size=10))
cbor_values = _values(
    _SCALARS | st.integers() | st.floats() | st.binary(max_size=20),
    st.text(max_size=10) | st.integers() | st.binary(max_size=5),
)
printable = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=16)
some_char = st.characters(codec="utf-8")
room_ids = st.from_regex(r"[A-Za-z0-9_-]{1,43}", fullmatch=True)
valid_ids = st.text(min_size=1, max_size=64) | st.integers(min_value=-(2**53), max_value=2**53)


def invalid_ids(text: bool) -> st.SearchStrategy[Any]:
    """Return values that are not an `id` (a 1..64 character string or an int within 2^53)."""
    out_of_range = st.integers(min_value=2**53 + 1, max_value=2**63 - 1)
    fractions = st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda x: not x.is_integer()
    )
    wrong = (
        st.booleans()
        | fractions
        | st.just("")
        | st.text(min_size=65, max_size=80)
        | out_of_range
        | out_of_range.map(lambda n: -n)
        | st.lists(st.integers(-(2**53), 2**53), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.integers(-(2**53), 2**53), max_size=2)
    )
    return wrong if text else wrong | st.binary(max_size=4)


def render(blob: bytes, text: bool) -> str | bytes:
    """Return `blob` as a JSON frame (base64) or a CBOR frame (a byte string) carries it."""
    return base64.b64encode(blob).decode() if text else blob


def encode(fields: object, text: bool) -> str | bytes:
    """Return the frame payload of `fields`: JSON text or CBOR bytes."""
    return orjson.dumps(fields).decode() if text else cbor2.dumps(fields)


def valid_value(kind: str, limit: int, text: bool, room: str | None) -> st.SearchStrategy[Any]:
    """Return a strategy for valid values of one field of `kind`."""
    match kind:
        case "blob":
            return st.binary(min_size=1, max_size=min(limit, 32)).map(lambda b: render(b, text))
        case "text":
            return st.text(min_size=1, max_size=min(limit, 16))
        case "room":
            return room_ids if room is None else st.just(room)
        case "aid":
            return printable
        case "bool":
            return st.booleans()
        case _:
            return st.text(min_size=1, max_size=32)


def wrong_typed(kind: str, text: bool) -> st.SearchStrategy[Any]:
    """Return non-null values of the wrong type for a field of `kind`."""
    values = json_values if text else cbor_values
    if kind == "bool":
        return values.filter(lambda v: v is not None and not isinstance(v, bool))
    if kind == "blob" and not text:
        return values.filter(lambda v: v is not None and not isinstance(v, bytes))
    return values.filter(lambda v: v is not None and not isinstance(v, str))


@st.composite
def valid_maps(draw: st.DrawFn, text: bool, room: str | None = None) -> dict[str, Any]:
    """Draw a valid client message of a random type, as the frame's map."""
    kind = draw(st.sampled_from(sorted(SPEC)))
    fields: dict[str, Any] = {"type": kind}
    for name, field_kind, limit, required in SPEC[kind]:
        if required or draw(st.booleans()):
            fields[name] = draw(valid_value(field_kind, limit, text, room))
    if draw(st.booleans()):
        fields["id"] = draw(valid_ids)
    return fields


@st.composite
def invalid_maps(draw: st.DrawFn, text: bool, room: str | None = None) -> tuple[dict, Any]:
    """Draw a map that breaks exactly one rule of section 4; return it and the valid `id`.

    The returned id is the one the error reply must echo (None when the id itself
    is the broken field, or absent).
    """
    fields = draw(valid_maps(text, room))
    request_id = fields.get("id")
    spec = SPEC[fields["type"]]
    mutations: list[tuple[str, str, str, int]] = [
        ("type", "wrong", "", 0),
        ("type", "unknown", "", 0),
        ("id", "id", "", 0),
    ]
    for name, kind, limit, required in spec:
        mutations.append((name, "wrong", kind, limit))
        if required:
            mutations += [(name, "delete", kind, limit), (name, "null", kind, limit)]
        if kind == "blob":
            mutations.append((name, "oversize", kind, limit))
            if text:
                mutations.append((name, "base64", kind, limit))
        if kind in ("text", "aid"):
            mutations += [(name, "oversize", kind, limit), (name, "empty", kind, limit)]
    name, how, kind, limit = draw(st.sampled_from(mutations))
    if how == "id":
        fields["id"] = draw(invalid_ids(text))
        request_id = None
    elif name == "type" and how == "wrong":
        fields["type"] = draw(wrong_typed("text", text) | st.none())
    elif name == "type":
        fields["type"] = draw(st.text(max_size=20).filter(lambda t: t not in SPEC))
    elif how == "delete":
        del fields[name]
    elif how == "null":
        fields[name] = None
    elif how == "wrong":
        fields[name] = draw(wrong_typed(kind, text))
    elif how == "base64":
        fields[name] = draw(
            st.text(st.sampled_from("AZaz09+/=-_!. \n\u00e9"), max_size=12).filter(
                lambda s: not RFC4648.fullmatch(s)
            )
        )
    elif how == "empty":
        fields[name] = ""
    elif kind == "blob":
        fields[name] = render(bytes(limit + draw(st.integers(1, 64))), text)
    else:
        fields[name] = draw(some_char) * (limit + draw(st.integers(1, 64)))
    return fields, request_id


def _not_json(payload: str) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    return False


def _not_cbor(payload: bytes) -> bool:
    try:
        cbor2.loads(payload)
    except Exception:
        return True
    return False


def bad_frames(room: str | None = None) -> st.SearchStrategy[tuple[str | bytes, Any]]:
    """Return frames that are not a valid message, each with the `id` its error must echo."""
    maps = st.booleans().flatmap(
        lambda text: invalid_maps(text, room).map(lambda pair: (encode(pair[0], text), pair[1]))
    )
    no_id = lambda payload: (payload, None)  # noqa: E731
    return st.one_of(
        maps,
        json_values.filter(lambda v: not isinstance(v, dict)).map(lambda v: no_id(encode(v, True))),
        cbor_values.filter(lambda v: not isinstance(v, dict)).map(
            lambda v: no_id(encode(v, False))
        ),
        st.text(max_size=40).filter(_not_json).map(no_id),
        json_values.map(lambda v: no_id(encode(v, True) + ",")),
        st.binary(max_size=40).filter(_not_cbor).map(no_id),
        st.tuples(cbor_values, st.binary(min_size=1, max_size=4)).map(
            lambda pair: no_id(encode(pair[0], False) + pair[1])
        ),
    )


def parse(payload: str | bytes) -> m.Message:
    """Decode and validate one frame the way the connection does."""
    return m.parse_message(decode_frame(payload), text=isinstance(payload, str))


def assert_valid_or_rejected(payload: str | bytes) -> None:
    """Assert that `payload` parses, or is refused with badRequest or tooLarge only."""
    try:
        parse(payload)
    except ProtocolError as exc:
        assert exc.code in REJECTED, (payload, exc.code, exc.message)


# -- sans-I/O ------------------------------------------------------------------------


@SANS_IO
@given(st.text() | st.binary())
def test_any_frame_is_a_message_or_a_bad_request(payload: str | bytes) -> None:
    """Any text or binary payload decodes to a message or raises badRequest/tooLarge."""
    assert_valid_or_rejected(payload)


@SANS_IO
@given(json_values)
def test_any_json_value_is_a_message_or_a_bad_request(value: object) -> None:
    """Any JSON document yields a message or badRequest/tooLarge, nothing else."""
    assert_valid_or_rejected(encode(value, True))


@SANS_IO
@given(cbor_values)
def test_any_cbor_value_is_a_message_or_a_bad_request(value: object) -> None:
    """Any CBOR item (bytes, bignums and floats included) yields a message or a rejection."""
    assert_valid_or_rejected(encode(value, False))


@SANS_IO
@given(st.data(), st.booleans())
def test_any_fields_under_a_known_type_are_a_message_or_a_bad_request(
    data: st.DataObject, text: bool
) -> None:
    """A known `type` with arbitrary values in its own field names never raises otherwise."""
    kind = data.draw(st.sampled_from(sorted(SPEC)))
    values = json_values if text else cbor_values
    optional = {name: values for name, *_ in SPEC[kind]} | {"id": values}
    fields = data.draw(st.fixed_dictionaries({"type": st.just(kind)}, optional=optional))
    assert_valid_or_rejected(encode(fields, text))


@SANS_IO
@given(st.booleans(), st.data())
def test_valid_messages_parse_to_their_type(text: bool, data: st.DataObject) -> None:
    """Every message built to section 4's schema parses, keeping its type and `id`."""
    fields = data.draw(valid_maps(text))
    msg = parse(encode(fields, text))
    assert fields["type"] == msg.TYPE
    assert msg.id == fields.get("id")


@SANS_IO
@given(st.data())
def test_json_and_cbor_carry_the_same_message(data: st.DataObject) -> None:
    """A message sent as JSON (base64 blobs) and as CBOR (byte strings) parses identically."""
    fields = data.draw(valid_maps(False))
    as_json = {k: render(v, True) if isinstance(v, bytes) else v for k, v in fields.items()}
    assert parse(encode(as_json, True)) == parse(encode(fields, False))


@SANS_IO
@given(st.booleans(), st.data())
def test_near_valid_messages_are_valid_or_rejected(text: bool, data: st.DataObject) -> None:
    """A valid message with one field deleted, retyped, oversized or added is valid or refused."""
    fields = data.draw(valid_maps(text))
    names = sorted(fields)
    sized = [(name, kind, limit) for name, kind, limit, _ in SPEC[fields["type"]] if limit]
    how = data.draw(st.sampled_from(["delete", "replace", "extra"] + ["oversize"] * bool(sized)))
    if how == "delete":
        del fields[data.draw(st.sampled_from(names))]
    elif how == "replace":
        fields[data.draw(st.sampled_from(names))] = data.draw(json_values if text else cbor_values)
    elif how == "extra":
        fields[data.draw(st.text(max_size=12))] = data.draw(json_values if text else cbor_values)
    else:
        name, kind, limit = data.draw(st.sampled_from(sized))
        over = limit + data.draw(st.integers(1, 64))
        fields[name] = render(bytes(over), text) if kind == "blob" else "x" * over
    assert_valid_or_rejected(encode(fields, text))


@SANS_IO
@given(bad_frames())
def test_invalid_frames_are_rejected_with_their_id(frame: tuple[str | bytes, Any]) -> None:
    """Every frame breaking one rule of section 4 is refused; a valid `id` is kept for the reply."""
    payload, request_id = frame
    with pytest.raises(ProtocolError) as caught:
        parse(payload)
    assert caught.value.code in REJECTED
    try:
        fields = decode_frame(payload)
    except ProtocolError:
        fields = None
    assert m.peek_context(fields)[0] == request_id


@SANS_IO
@given(st.text(st.sampled_from("AZaz09+/=-_ \n\u00e9"), max_size=16) | st.text(max_size=16))
def test_json_blobs_are_padded_standard_base64(value: str) -> None:
    """Padded RFC 4648 base64 is accepted as its bytes; anything else is a badRequest."""
    try:
        blob = m.decode_blob("iv", value, 64, text=True)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST
        assert not RFC4648.fullmatch(value)
    else:
        assert RFC4648.fullmatch(value), value
        assert blob == base64.b64decode(value)


@pytest.mark.parametrize("value", ["aGlh=", "aGlh==", "aGlhaGlh="])
def test_excess_base64_padding_is_a_bad_request(value: str) -> None:
    """A base64 blob with `=` after a complete 4-character quantum is not RFC 4648: badRequest."""
    with pytest.raises(ProtocolError) as caught:
        m.decode_blob("iv", value, 64, text=True)
    assert caught.value.code is ErrorCode.BAD_REQUEST


# -- through the trio shell ----------------------------------------------------------


def run_on_mock_clock(scenario: Callable[..., Any], *args: Any) -> None:
    """Run one example's scenario in a fresh trio run on an autojumping mock clock."""
    trio.run(scenario, *args, clock=trio.testing.MockClock(autojump_threshold=0))


async def _room_of_two(h: Any, codec: str) -> tuple[Any, Any, str]:
    """Return alice (host) and bob, both in a new room, and its id; nothing left unread."""
    alice = await h.login("alice", codec=codec)
    room = (await alice.request({"type": "createChatroom"}))["roomId"]
    bob = await h.login("bob", codec=codec)
    joined = await bob.request({"type": "joinChatroom", "roomId": room})
    assert joined["type"] == "joinSuccess", joined
    assert (await alice.recv())["type"] == "userJoined"
    return alice, bob, room


async def _assert_room_intact(
    h: Any, alice: Any, others: list[Any], room: str, last_seq: int = 0
) -> None:
    """Assert seq, host, members and the registry are what they were before the noise."""
    ciphertext = b"hi" if alice.cbor else "aGk="
    await alice.send({"type": "message", "roomId": room, "ciphertext": ciphertext})
    for client in [alice, *others]:
        event = await client.recv()
        assert (event["type"], event["seq"], event["from"]) == ("newMessage", last_seq + 1, "alice")
    carol = await h.login("carol")
    joined = await carol.request({"type": "joinChatroom", "roomId": room})
    assert joined["type"] == "joinSuccess", joined
    assert joined["host"] == "alice" and joined["lastSeq"] == last_seq + 1
    expected = ["alice", *(["bob"] if others else []), "carol"]
    assert [member["aid"] for member in joined["members"]] == expected
    assert h.registry.room_ids() == [room]


async def _bad_frames_scenario(codec: str, data: st.DataObject) -> None:
    with trio.fail_after(30):
        async with running_server(rate=10000, burst=10000) as h:
            alice, bob, room = await _room_of_two(h, codec)
            frames = data.draw(st.lists(bad_frames(room), min_size=1, max_size=12))
            for payload, request_id in frames:
                await bob.send_raw(payload)
                reply = await bob.recv()
                assert reply["type"] == "error" and reply["code"] in REJECTED, (payload, reply)
                assert reply.get("id") == request_id, (payload, reply)
            assert await bob.drain() == []
            assert await alice.drain() == []
            assert bob.close_code is None
            await _assert_room_intact(h, alice, [bob], room)


@SHELL
@given(data=st.data())
@pytest.mark.parametrize("codec", CODECS)
def test_bad_frames_get_one_error_and_change_nothing(codec: str, data: st.DataObject) -> None:
    """Each bad frame gets exactly one badRequest/tooLarge; the connection and room are intact."""
    run_on_mock_clock(_bad_frames_scenario, codec, data)


def good_frames(room: str) -> st.SearchStrategy[tuple[str | bytes, str, Any]]:
    """Return valid `message` and `typing` frames to `room`, with their type and content."""

    def build(text: bool, kind: str, blob: bytes, flag: bool) -> tuple[str | bytes, str, Any]:
        if kind == "message":
            fields = {"type": kind, "roomId": room, "ciphertext": render(blob, text)}
            return encode(fields, text), kind, blob
        return encode({"type": kind, "roomId": room, "isTyping": flag}, text), kind, flag

    return st.builds(
        build,
        st.booleans(),
        st.sampled_from(["message", "typing"]),
        st.binary(min_size=1, max_size=16),
        st.booleans(),
    )


async def _mixed_frames_scenario(codec: str, data: st.DataObject) -> None:
    with trio.fail_after(30):
        async with running_server(rate=10000, burst=10000) as h:
            alice, bob, room = await _room_of_two(h, codec)
            bad = bad_frames(room).map(lambda frame: (frame[0], "bad", frame[1]))
            frames = data.draw(st.lists(bad | good_frames(room), min_size=1, max_size=12))
            seq = 0
            for payload, kind, expected in frames:
                await bob.send_raw(payload)
                if kind == "bad":
                    reply = await bob.recv()
                    assert reply["type"] == "error" and reply["code"] in REJECTED, (payload, reply)
                    assert reply.get("id") == expected
                elif kind == "message":
                    seq += 1
                    for client in (bob, alice):
                        event = await client.recv()
                        assert (event["type"], event["seq"], event["from"]) == (
                            "newMessage",
                            seq,
                            "bob",
                        )
                        assert event["ciphertext"] == render(expected, not client.cbor)
                else:
                    event = await alice.recv()
                    assert (event["type"], event["aid"], event["isTyping"]) == (
                        "typing",
                        "bob",
                        expected,
                    )
            assert await bob.drain() == []
            assert await alice.drain() == []
            assert bob.close_code is None
            await _assert_room_intact(h, alice, [bob], room, last_seq=seq)


@SHELL
@given(data=st.data())
@pytest.mark.parametrize("codec", CODECS)
def test_bad_frames_between_good_ones_change_nothing(codec: str, data: st.DataObject) -> None:
    """Bad frames among valid messages get one error each; seq counts the valid ones only."""
    run_on_mock_clock(_mixed_frames_scenario, codec, data)


async def _big_frame_scenario(codec: str, size: int, text: bool) -> None:
    max_frame = 1024
    with trio.fail_after(30):
        async with running_server(max_frame=max_frame) as h:
            alice, bob, room = await _room_of_two(h, codec)
            # Neither valid JSON (a bare x...) nor valid CBOR (0xff is a stray break).
            await bob.send_raw("x" * size if text else b"\xff" * size)
            if size > max_frame:
                assert await bob.expect_close() == 1009
                assert bob.pending() == []
                left = await alice.recv()
                assert (left["type"], left["aid"], left["reason"]) == (
                    "userLeft",
                    "bob",
                    "disconnected",
                )
                assert await alice.drain() == []
                await _assert_room_intact(h, alice, [], room)
            else:
                reply = await bob.recv()
                assert (reply["type"], reply["code"]) == ("error", "badRequest")
                assert await alice.drain() == []
                await _assert_room_intact(h, alice, [bob], room)


@SHELL
@given(
    size=st.integers(1000, 1100) | st.integers(1025, 300_000),
    text=st.booleans(),
)
@pytest.mark.parametrize("codec", CODECS)
def test_frames_over_max_frame_close_1009_and_nothing_else(
    codec: str, size: int, text: bool
) -> None:
    """A frame over max_frame closes 1009 (its sender just leaves); one at or under it does not."""
    run_on_mock_clock(_big_frame_scenario, codec, size, text)
