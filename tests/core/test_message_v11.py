"""Validation of the 1.1 client fields (PROTOCOL.md sections 4, 7 and 8).

`joinChatroom.since`, `message.keyEpoch`, `updateRoomKey.keyEpoch`, `signal.signals`,
`getHistory`, `kick.ban` and `unban`: each valid form parses to its value, every
invalid one is refused with the code PROTOCOL.md names.
"""

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
codecs = pytest.mark.parametrize("text", [True, False], ids=["json", "cbor"])


def blob(data: bytes, *, text: bool) -> str | bytes:
    """Return `data` as a wire blob: padded base64 in JSON, bytes in CBOR."""
    return base64.b64encode(data).decode() if text else data


def parse(kind: str, *, text: bool = True, **fields: Any) -> m.Message:
    """Return the parsed message `kind` of room ROOM with `fields`."""
    return m.parse_message({"type": kind, "roomId": ROOM, **fields}, text=text)


def rejects(kind: str, code: ErrorCode = BAD, *, text: bool = True, **fields: Any) -> None:
    """Assert that message `kind` of room ROOM with `fields` is refused with `code`."""
    with pytest.raises(ProtocolError) as info:
        parse(kind, text=text, **fields)
    assert info.value.code is code, info.value.message


# -- joinChatroom.since ----------------------------------------------------------


@codecs
@pytest.mark.parametrize(
    ("since", "position"),
    [
        ({"epoch": "Ep0chAbc", "seq": 0}, m.Position("Ep0chAbc", 0)),
        ({"epoch": "e", "seq": 1}, m.Position("e", 1)),
        ({"epoch": "x" * 32, "seq": 41}, m.Position("x" * 32, 41)),
        ({"epoch": "é" * 64, "seq": 2**53}, m.Position("é" * 64, 2**53)),
        ({"epoch": "E", "seq": 3, "extra": [1]}, m.Position("E", 3)),
    ],
    ids=["seq-0", "short-epoch", "longest-room-epoch", "longest-accepted", "extra-key"],
)
def test_since_parses_to_a_position(
    since: dict[str, Any], position: m.Position, text: bool
) -> None:
    """A map of a non-empty epoch string and an integer seq >= 0 is the join's position."""
    msg = parse("joinChatroom", text=text, since=since)
    assert msg == m.JoinChatroom(room_id=ROOM, since=position)


@codecs
def test_join_without_since_or_with_null_since_has_none(text: bool) -> None:
    """since is optional; null counts as absent (docs/protocol-notes.md)."""
    for fields in ({}, {"since": None}):
        msg = parse("joinChatroom", text=text, **fields)
        assert isinstance(msg, m.JoinChatroom) and msg.since is None


@codecs
@pytest.mark.parametrize(
    "since",
    [
        5,
        "E0:3",
        ["E0", 3],
        [],
        True,
        b"E0",
        {},
        {"seq": 3},  # no epoch
        {"epoch": None, "seq": 3},
        {"epoch": "", "seq": 3},  # empty epoch
        {"epoch": "x" * 65, "seq": 3},  # epoch too long
        {"epoch": 7, "seq": 3},
        {"epoch": ["E0"], "seq": 3},
        {"epoch": b"E0", "seq": 3},
        {"epoch": "E0"},  # no seq
        {"epoch": "E0", "seq": None},
        {"epoch": "E0", "seq": -1},  # negative
        {"epoch": "E0", "seq": -(2**53)},
        {"epoch": "E0", "seq": True},  # a bool is not an integer on the wire
        {"epoch": "E0", "seq": False},
        {"epoch": "E0", "seq": 3.0},  # a float, even a whole one
        {"epoch": "E0", "seq": 0.5},
        {"epoch": "E0", "seq": "3"},
        {"epoch": "E0", "seq": 2**53 + 1},
    ],
)
def test_invalid_since_is_bad_request(since: object, text: bool) -> None:
    """A since that is not {epoch: 1..64 chars, seq: integer >= 0} is a badRequest."""
    rejects("joinChatroom", BAD, text=text, since=since)


# -- keyEpoch ----------------------------------------------------------------------


KEY_EPOCH_HOSTS = {
    "message": {"ciphertext": b"ct"},
    "updateRoomKey": {"encryptedRoomKey": b"k2"},
}


def with_blobs(kind: str, *, text: bool) -> dict[str, Any]:
    """Return the required blob fields of `kind` on the wire."""
    return {name: blob(value, text=text) for name, value in KEY_EPOCH_HOSTS[kind].items()}


@codecs
@pytest.mark.parametrize("kind", KEY_EPOCH_HOSTS)
@pytest.mark.parametrize("epoch", [0, 1, 17, 2**53])
def test_key_epoch_parses_as_a_non_negative_integer(kind: str, epoch: int, text: bool) -> None:
    """keyEpoch on message and updateRoomKey is any integer >= 0."""
    msg = parse(kind, text=text, keyEpoch=epoch, **with_blobs(kind, text=text))
    assert isinstance(msg, m.SendMessage | m.UpdateRoomKey) and msg.key_epoch == epoch


@codecs
@pytest.mark.parametrize("kind", KEY_EPOCH_HOSTS)
def test_absent_or_null_key_epoch_is_none(kind: str, text: bool) -> None:
    """Without keyEpoch (or with null) the message is a v1 one: key_epoch is None, not 0."""
    for extra in ({}, {"keyEpoch": None}):
        msg = parse(kind, text=text, **with_blobs(kind, text=text), **extra)
        assert isinstance(msg, m.SendMessage | m.UpdateRoomKey) and msg.key_epoch is None


@codecs
@pytest.mark.parametrize("kind", KEY_EPOCH_HOSTS)
@pytest.mark.parametrize(
    "epoch", [-1, -(2**53), True, False, 1.0, 0.5, "1", [1], {}, b"\x01", 2**53 + 1]
)
def test_invalid_key_epoch_is_bad_request(kind: str, epoch: object, text: bool) -> None:
    """A negative, bool, float, string or otherwise non-integer keyEpoch is a badRequest."""
    rejects(kind, BAD, text=text, keyEpoch=epoch, **with_blobs(kind, text=text))


# -- signal.signals --------------------------------------------------------------


@codecs
def test_signal_batch_parses_every_entry_in_order(text: bool) -> None:
    """signals: each {to, payload} becomes an entry, in list order, duplicates kept."""
    signals = [
        {"to": "bob", "payload": blob(b"k-bob", text=text)},
        {"to": "carol", "payload": blob(b"", text=text)},
        {"to": "bob", "payload": blob(b"again", text=text), "extra": 1},
    ]
    msg = parse("signal", text=text, signals=signals, id=3)
    assert isinstance(msg, m.Signal) and msg.id == 3
    assert msg.entries == (
        m.SignalTo("bob", b"k-bob"),
        m.SignalTo("carol", b""),
        m.SignalTo("bob", b"again"),
    )


@codecs
def test_single_signal_is_one_entry(text: bool) -> None:
    """A v1 signal (to, payload) has exactly one entry, and no batch."""
    msg = parse("signal", text=text, to="bob", payload=blob(b"sdp", text=text))
    assert isinstance(msg, m.Signal) and msg.signals is None
    assert msg.entries == (m.SignalTo("bob", b"sdp"),)


@codecs
def test_signal_batch_with_null_single_fields_is_a_batch(text: bool) -> None:
    """to: null and payload: null next to signals are absent, so the batch is valid."""
    msg = parse(
        "signal",
        text=text,
        to=None,
        payload=None,
        signals=[{"to": "b", "payload": blob(b"p", text=text)}],
    )
    assert isinstance(msg, m.Signal) and msg.entries == (m.SignalTo("b", b"p"),)


@codecs
def test_signal_batch_of_the_hard_bound_parses_and_one_more_is_refused(text: bool) -> None:
    """A batch of MAX_SIGNALS entries parses; one more is a badRequest."""
    entry = {"to": "bob", "payload": blob(b"p", text=text)}
    msg = parse("signal", text=text, signals=[entry] * m.MAX_SIGNALS)
    assert isinstance(msg, m.Signal) and len(msg.entries) == m.MAX_SIGNALS
    rejects("signal", BAD, text=text, signals=[entry] * (m.MAX_SIGNALS + 1))


GOOD_ENTRY = {"to": "bob", "payload": b"p"}


@codecs
@pytest.mark.parametrize(
    "signals",
    [
        [],  # empty
        {"to": "bob", "payload": b"p"},  # a map, not a list
        "bob",
        5,
        True,
        b"p",
        ["bob"],  # an entry that is not a map
        [GOOD_ENTRY, 7],
        [{"payload": b"p"}],  # entry missing to
        [{"to": "bob"}],  # entry missing payload
        [{}],
        [{"to": None, "payload": b"p"}],
        [{"to": "bob", "payload": None}],
        [GOOD_ENTRY, {"to": "carol"}],  # one bad entry fails the batch
        [{"to": 5, "payload": b"p"}],
        [{"to": "", "payload": b"p"}],
        [{"to": "bob\n", "payload": b"p"}],  # unprintable AID
        [{"to": "bob", "payload": 5}],
        [{"to": "bob", "payload": [1]}],
    ],
)
def test_invalid_signal_batch_is_bad_request(signals: object, text: bool) -> None:
    """signals must be a list of 1.. maps, each with a valid AID `to` and a blob `payload`."""
    if isinstance(signals, list):
        signals = [
            {**e, "payload": blob(e["payload"], text=text)}
            if isinstance(e, dict) and isinstance(e.get("payload"), bytes)
            else e
            for e in signals
        ]
    rejects("signal", BAD, text=text, signals=signals)


@pytest.mark.parametrize("payload", ["aGk", "-_8=", "aGk!"])
def test_signal_batch_entry_with_bad_base64_is_bad_request(payload: str) -> None:
    """A JSON batch entry's payload must be padded standard base64."""
    rejects("signal", BAD, text=True, signals=[{"to": "bob", "payload": payload}])


def test_signal_batch_entry_given_a_string_payload_in_cbor_is_bad_request() -> None:
    """In CBOR a batch entry's payload must be a byte string."""
    rejects("signal", BAD, text=False, signals=[{"to": "bob", "payload": "cA=="}])


@codecs
def test_signal_batch_entry_limits_are_the_single_signal_limits(text: bool) -> None:
    """A payload over 16 KiB or a `to` over 128 characters in a batch is tooLarge."""
    big = blob(b"\x01" * (m.MAX_PAYLOAD + 1), text=text)
    at_limit = blob(b"\x01" * m.MAX_PAYLOAD, text=text)
    assert parse("signal", text=text, signals=[{"to": "b" * 128, "payload": at_limit}])
    rejects("signal", LARGE, text=text, signals=[{"to": "bob", "payload": big}])
    long_to = [{"to": "b" * 129, "payload": blob(b"p", text=text)}]
    rejects("signal", LARGE, text=text, signals=long_to)


@codecs
@pytest.mark.parametrize(
    "fields",
    [
        {"to": "bob"},  # both: to and signals
        {"payload": b"p"},  # both: payload and signals
        {"to": "bob", "payload": b"p"},
    ],
    ids=["to", "payload", "to-and-payload"],
)
def test_single_fields_and_signals_together_are_bad_request(
    fields: dict[str, Any], text: bool
) -> None:
    """to/payload and signals together are a badRequest (section 8.6)."""
    wire = {k: blob(v, text=text) if isinstance(v, bytes) else v for k, v in fields.items()}
    signals = [{"to": "bob", "payload": blob(b"p", text=text)}]
    rejects("signal", BAD, text=text, signals=signals, **wire)


@codecs
@pytest.mark.parametrize(
    "fields",
    [{}, {"to": "bob"}, {"payload": b"p"}, {"signals": None}, {"to": None, "payload": None}],
    ids=["neither", "to-only", "payload-only", "null-signals", "all-null"],
)
def test_signal_without_a_target_and_payload_or_a_batch_is_bad_request(
    fields: dict[str, Any], text: bool
) -> None:
    """A signal needs both to and payload, or signals: anything less is a badRequest."""
    wire = {k: blob(v, text=text) if isinstance(v, bytes) else v for k, v in fields.items()}
    rejects("signal", BAD, text=text, **wire)


# -- getHistory --------------------------------------------------------------------


@codecs
def test_get_history_defaults_to_the_newest_fifty(text: bool) -> None:
    """Without before and limit: before is after the last message, limit 50."""
    msg = parse("getHistory", text=text)
    assert msg == m.GetHistory(room_id=ROOM)
    assert isinstance(msg, m.GetHistory) and msg.before is None and msg.limit == 50
    assert parse("getHistory", text=text, before=None, limit=None) == msg


@codecs
@pytest.mark.parametrize(("before", "limit"), [(1, 1), (2, 100), (51, 50), (2**53, 7), (10**6, 99)])
def test_get_history_takes_before_and_limit_as_given(before: int, limit: int, text: bool) -> None:
    """before >= 1 and limit 1..100 are kept exactly, never clamped."""
    msg = parse("getHistory", text=text, before=before, limit=limit, id="h1")
    assert msg == m.GetHistory(room_id=ROOM, before=before, limit=limit, id="h1")


@codecs
@pytest.mark.parametrize(
    "fields",
    [
        {"before": 0},
        {"before": -1},
        {"before": 2**53 + 1},
        {"limit": 0},
        {"limit": 101},
        {"limit": -5},
        {"limit": 1000},
        *(
            {name: value}
            for name in ("before", "limit")
            for value in (True, False, 5.0, 1.5, "5", [5], {})
        ),
    ],
)
def test_get_history_out_of_range_or_non_integer_is_bad_request(
    fields: dict[str, Any], text: bool
) -> None:
    """before < 1, limit outside 1..100, or a non-integer (bools, floats) is a badRequest."""
    rejects("getHistory", BAD, text=text, **fields)


@codecs
def test_get_history_needs_a_room(text: bool) -> None:
    """getHistory without roomId is a badRequest."""
    with pytest.raises(ProtocolError) as info:
        m.parse_message({"type": "getHistory", "limit": 5}, text=text)
    assert info.value.code is BAD


# -- kick.ban and unban -------------------------------------------------------------


@codecs
@pytest.mark.parametrize(
    ("fields", "ban"),
    [({}, False), ({"ban": None}, False), ({"ban": False}, False), ({"ban": True}, True)],
)
def test_kick_ban_is_an_optional_bool_defaulting_to_false(
    fields: dict[str, Any], ban: bool, text: bool
) -> None:
    """kick.ban absent or null is no ban; true bans."""
    assert parse("kick", text=text, aid="bob", **fields) == m.Kick(room_id=ROOM, aid="bob", ban=ban)


@codecs
@pytest.mark.parametrize("ban", [1, 0, "true", "", 1.0, [], {}, b"\x01"])
def test_kick_ban_that_is_not_a_bool_is_bad_request(ban: object, text: bool) -> None:
    """kick.ban must be a boolean: 1, "true" and the like are badRequest."""
    rejects("kick", BAD, text=text, aid="bob", ban=ban)


@codecs
def test_unban_parses_room_and_aid(text: bool) -> None:
    """unban {roomId, aid} parses, keeping the id for the `unbanned` reply."""
    assert parse("unban", text=text, aid="bob", id=9) == m.Unban(room_id=ROOM, aid="bob", id=9)


@codecs
@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({}, BAD),  # aid missing
        ({"aid": None}, BAD),
        ({"aid": ""}, BAD),
        ({"aid": 5}, BAD),
        ({"aid": True}, BAD),
        ({"aid": "bob\x00"}, BAD),
        ({"aid": "b" * 129}, LARGE),
    ],
)
def test_unban_needs_a_valid_aid(fields: dict[str, Any], code: ErrorCode, text: bool) -> None:
    """unban without an AID, or with an invalid one, is refused."""
    rejects("unban", code, text=text, **fields)


@codecs
def test_unban_needs_a_room(text: bool) -> None:
    """unban without roomId is a badRequest."""
    with pytest.raises(ProtocolError) as info:
        m.parse_message({"type": "unban", "aid": "bob"}, text=text)
    assert info.value.code is BAD


# -- any input ---------------------------------------------------------------------


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=70) | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["epoch", "seq", "to", "payload", "x"]), inner, max_size=3
        )
    ),
    max_leaves=8,
)
NEW_FIELDS = {
    "joinChatroom": ["roomId", "since", "publicKey"],
    "message": ["roomId", "ciphertext", "keyEpoch"],
    "updateRoomKey": ["roomId", "encryptedRoomKey", "keyEpoch"],
    "signal": ["roomId", "to", "payload", "signals"],
    "getHistory": ["roomId", "before", "limit"],
    "kick": ["roomId", "aid", "ban"],
    "unban": ["roomId", "aid"],
}


@given(data=st.data(), kind=st.sampled_from(sorted(NEW_FIELDS)), text=st.booleans())
def test_new_fields_raise_only_bad_request_or_too_large(
    data: st.DataObject, kind: str, text: bool
) -> None:
    """Any values in the 1.1 fields: a message of the type, or badRequest / tooLarge only."""
    names = NEW_FIELDS[kind]
    fields = data.draw(st.dictionaries(st.sampled_from(names), VALUES))
    if data.draw(st.booleans()):
        fields["roomId"] = ROOM
    try:
        msg = m.parse_message({**fields, "type": kind}, text=text)
    except ProtocolError as exc:
        assert exc.code in (BAD, LARGE), exc.message
    else:
        assert type(msg) is m.MESSAGE_TYPES[kind]


@given(
    epoch=st.text(min_size=1, max_size=m.MAX_EPOCH),
    seq=st.integers(0, 2**53),
    text=st.booleans(),
)
def test_any_valid_since_round_trips(epoch: str, seq: int, text: bool) -> None:
    """Every epoch of 1..64 characters with every seq in 0..2^53 parses to exactly that position."""
    msg = parse("joinChatroom", text=text, since={"epoch": epoch, "seq": seq})
    assert isinstance(msg, m.JoinChatroom) and msg.since == m.Position(epoch, seq)
