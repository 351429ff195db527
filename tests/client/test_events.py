"""Server frames to typed events (roomd/client/events.py, PROTOCOL.md section 5)."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from roomd.client.events import (
    AuthOk,
    ErrorEvent,
    Event,
    Hello,
    History,
    HostUpdated,
    Joined,
    LeftRoom,
    MalformedEvent,
    Member,
    NewMessage,
    Reaction,
    RoomDeleted,
    RoomKeyUpdated,
    Signal,
    Typing,
    Unbanned,
    UserJoined,
    UserLeft,
    parse_event,
)

Frame = dict[str, Any]

LIMITS = {
    "rate": 10,
    "burst": 30,
    "maxFrame": 131072,
    "maxMembers": 256,
    "maxRoomsPerConnection": 32,
    "historySize": 1000,
    "recoveryLimit": 500,
    "maxRoomsPerAid": 64,
}


def wire(frame: object) -> Any:
    """Return `frame` as the client's CBOR codec delivers it (blobs are bytes)."""
    return cbor2.loads(cbor2.dumps(frame))


def parsed(frame: Frame) -> Event:
    """Parse `frame` after a trip through CBOR, as the client does."""
    return parse_event(wire(frame))


# A representative frame of every PROTOCOL.md section 5 type, with its optional
# fields present, and the event it parses to.
FULL: list[tuple[Frame, Event]] = [
    (
        {
            "type": "hello",
            "protocol": "roomd.v1",
            "heartbeatInterval": 25,
            "authTimeout": 10.5,
            "limits": LIMITS,
            "features": ["history", "keyEpochs"],
        },
        Hello("roomd.v1", 25.0, 10.5, LIMITS, ("history", "keyEpochs")),
    ),
    (
        {"type": "authOk", "aid": "alice", "expiresAt": 1_900_000_000},
        AuthOk("alice", 1_900_000_000),
    ),
    (
        {
            "type": "joinSuccess",
            "roomId": "r1",
            "you": "bob",
            "host": "alice",
            "encryptedRoomKey": b"\x00key",
            "members": [
                {"aid": "alice", "publicKey": b"A" * 32},
                {"aid": "bob", "publicKey": None},
            ],
            "lastSeq": 7,
            "epoch": "ep0ch-1234",
            "keyEpoch": 2,
            "recovered": True,
        },
        Joined(
            "r1",
            "bob",
            "alice",
            b"\x00key",
            (Member("alice", b"A" * 32), Member("bob", None)),
            7,
            "ep0ch-1234",
            2,
            True,
        ),
    ),
    (
        {
            "type": "newMessage",
            "roomId": "r1",
            "seq": 8,
            "messageId": "m8",
            "from": "alice",
            "ciphertext": b"\xffcipher",
            "iv": b"\x01" * 12,
            "clientMsgId": "c8",
            "ts": 1_700_000_000_123,
            "keyEpoch": 2,
        },
        NewMessage("r1", 8, "m8", "alice", b"\xffcipher", b"\x01" * 12, "c8", 1_700_000_000_123, 2),
    ),
    (
        {"type": "userJoined", "roomId": "r1", "aid": "carol", "publicKey": b"C" * 32},
        UserJoined("r1", "carol", b"C" * 32),
    ),
    (
        {"type": "userLeft", "roomId": "r1", "aid": "carol", "reason": "timeout"},
        UserLeft("r1", "carol", "timeout"),
    ),
    ({"type": "hostUpdated", "roomId": "r1", "host": "bob"}, HostUpdated("r1", "bob")),
    (
        {"type": "typing", "roomId": "r1", "aid": "alice", "isTyping": True},
        Typing("r1", "alice", True),
    ),
    (
        {
            "type": "reaction",
            "roomId": "r1",
            "messageId": "m8",
            "aid": "bob",
            "emoji": "👍",
            "remove": True,
        },
        Reaction("r1", "m8", "bob", "👍", True),
    ),
    (
        {"type": "signal", "roomId": "r1", "from": "alice", "payload": b"\x00\x01"},
        Signal("r1", "alice", b"\x00\x01"),
    ),
    (
        {
            "type": "roomKeyUpdated",
            "roomId": "r1",
            "encryptedRoomKey": b"k3",
            "by": "alice",
            "keyEpoch": 3,
        },
        RoomKeyUpdated("r1", b"k3", "alice", 3),
    ),
    (
        {
            "type": "history",
            "roomId": "r1",
            "epoch": "ep0ch-1234",
            "messages": [
                {
                    "seq": 1,
                    "messageId": "m1",
                    "from": "alice",
                    "ciphertext": b"one",
                    "iv": b"i1",
                    "clientMsgId": "c1",
                    "ts": 100,
                    "keyEpoch": 0,
                },
                {"seq": 2, "messageId": "m2", "from": "bob", "ciphertext": b"two", "ts": 200},
            ],
            "more": True,
        },
        History(
            "r1",
            "ep0ch-1234",
            (
                NewMessage("r1", 1, "m1", "alice", b"one", b"i1", "c1", 100, 0),
                NewMessage("r1", 2, "m2", "bob", b"two", None, None, 200, None),
            ),
            True,
        ),
    ),
    ({"type": "unbanned", "roomId": "r1", "aid": "mallory"}, Unbanned("r1", "mallory")),
    ({"type": "leftChatroom", "roomId": "r1", "reason": "kicked"}, LeftRoom("r1", "kicked")),
    ({"type": "roomDeleted", "roomId": "r1", "reason": "expired"}, RoomDeleted("r1", "expired")),
    (
        {
            "type": "error",
            "code": "conflict",
            "message": "key epoch 5 is not 3 or 4",
            "roomId": "r1",
            "retryAfter": 1,
            "keyEpoch": 3,
        },
        ErrorEvent("conflict", "key epoch 5 is not 3 or 4", "r1", 1.0, 3),
    ),
]

# The same types with every optional field absent.
MINIMAL: list[tuple[Frame, Event]] = [
    (
        {
            "type": "hello",
            "protocol": "roomd.v1",
            "heartbeatInterval": 25,
            "authTimeout": 10,
            "limits": LIMITS,
        },
        Hello("roomd.v1", 25.0, 10.0, LIMITS, ()),
    ),
    (
        {
            "type": "joinSuccess",
            "roomId": "r1",
            "you": "alice",
            "host": "alice",
            "members": [{"aid": "alice"}],
            "lastSeq": 0,
            "epoch": "ep0ch-1234",
            "keyEpoch": 0,
        },
        Joined("r1", "alice", "alice", None, (Member("alice", None),), 0, "ep0ch-1234", 0, None),
    ),
    (
        {
            "type": "newMessage",
            "roomId": "r1",
            "seq": 1,
            "messageId": "m1",
            "from": "alice",
            "ciphertext": b"",
            "ts": 0,
        },
        NewMessage("r1", 1, "m1", "alice", b"", None, None, 0, None),
    ),
    ({"type": "userJoined", "roomId": "r1", "aid": "carol"}, UserJoined("r1", "carol", None)),
    (
        {"type": "reaction", "roomId": "r1", "messageId": "m8", "aid": "bob", "emoji": "x"},
        Reaction("r1", "m8", "bob", "x", False),
    ),
    (
        {"type": "history", "roomId": "r1", "epoch": "e", "messages": [], "more": False},
        History("r1", "e", (), False),
    ),
    (
        {"type": "error", "code": "badRequest", "message": "no type"},
        ErrorEvent("badRequest", "no type", None, None, None),
    ),
]

# Optional fields sent as null, as a JSON-minded server might: read as absent.
NULLS: list[tuple[Frame, Event]] = [
    (
        {
            "type": "hello",
            "protocol": "roomd.v1",
            "heartbeatInterval": 25,
            "authTimeout": 10,
            "limits": {"rate": 10, "burst": 30},
            "features": None,
        },
        Hello("roomd.v1", 25.0, 10.0, {"rate": 10, "burst": 30}, ()),
    ),
    (
        {
            "type": "joinSuccess",
            "roomId": "r1",
            "you": "bob",
            "host": "alice",
            "encryptedRoomKey": None,
            "members": [{"aid": "alice", "publicKey": None}],
            "lastSeq": 3,
            "epoch": "e",
            "keyEpoch": 1,
            "recovered": None,
        },
        Joined("r1", "bob", "alice", None, (Member("alice", None),), 3, "e", 1, None),
    ),
    (
        {
            "type": "newMessage",
            "roomId": "r1",
            "seq": 2,
            "messageId": "m2",
            "from": "bob",
            "ciphertext": b"c",
            "iv": None,
            "clientMsgId": None,
            "ts": 5,
            "keyEpoch": None,
        },
        NewMessage("r1", 2, "m2", "bob", b"c", None, None, 5, None),
    ),
    (
        {"type": "userJoined", "roomId": "r1", "aid": "carol", "publicKey": None},
        UserJoined("r1", "carol", None),
    ),
    (
        {
            "type": "error",
            "code": "rateLimited",
            "message": "slow down",
            "roomId": None,
            "retryAfter": None,
            "keyEpoch": None,
        },
        ErrorEvent("rateLimited", "slow down", None, None, None),
    ),
]

ALL_TYPES = sorted({frame["type"] for frame, _ in FULL})
FRAME = {frame["type"]: frame for frame, _ in FULL}


def ids(table: list[tuple[Frame, Event]]) -> list[str]:
    """Name each table row after its frame's type."""
    return [frame["type"] for frame, _ in table]


def test_the_table_covers_every_section_5_type() -> None:
    """FULL has one frame of each of the 16 server-to-client types of PROTOCOL.md section 5."""
    section_5 = "hello authOk joinSuccess newMessage userJoined userLeft hostUpdated typing"
    section_5 += " reaction signal roomKeyUpdated history unbanned leftChatroom roomDeleted error"
    assert sorted(section_5.split()) == ALL_TYPES


@pytest.mark.parametrize(("frame", "event"), FULL, ids=ids(FULL))
def test_every_type_parses_with_its_optional_fields(frame: Frame, event: Event) -> None:
    """A frame with every field of its type parses to the event carrying all of them."""
    assert parsed(frame) == event


@pytest.mark.parametrize(("frame", "event"), MINIMAL, ids=ids(MINIMAL))
def test_optional_fields_may_be_absent(frame: Frame, event: Event) -> None:
    """A frame without its optional fields parses, those fields None (or empty, or False)."""
    assert parsed(frame) == event


@pytest.mark.parametrize(("frame", "event"), NULLS, ids=ids(NULLS))
def test_optional_fields_may_be_null(frame: Frame, event: Event) -> None:
    """An optional field sent as null reads as absent."""
    assert parsed(frame) == event


@pytest.mark.parametrize(("frame", "event"), FULL, ids=ids(FULL))
def test_unknown_extra_fields_are_ignored(frame: Frame, event: Event) -> None:
    """Fields a later 1.x server adds change nothing, as PROTOCOL.md asks of a 1.x client."""
    extra = {**frame, "futureField": {"nested": [1, b"x"]}, "zz": None, "seqs": [1, 2]}
    assert parsed(extra) == event


@pytest.mark.parametrize("request_id", [1, 2**53, "req-7", None])
@pytest.mark.parametrize(("frame", "event"), FULL, ids=ids(FULL))
def test_id_is_ignored_by_the_parser(frame: Frame, event: Event, request_id: object) -> None:
    """An echoed `id` (int, string, or anything) does not change the parsed event."""
    assert parsed({**frame, "id": request_id}) == event


def test_members_keep_join_order() -> None:
    """`joinSuccess.members` keeps the server's join order."""
    aids = [f"m{i}" for i in range(10)]
    frame = {**FRAME["joinSuccess"], "members": [{"aid": aid, "publicKey": None} for aid in aids]}
    event = parsed(frame)
    assert isinstance(event, Joined)
    assert [member.aid for member in event.members] == aids


def test_history_messages_take_the_page_room_id() -> None:
    """History entries carry no roomId: each parsed message gets the page's."""
    event = parsed(FRAME["history"])
    assert isinstance(event, History)
    assert {message.room_id for message in event.messages} == {"r1"}


@pytest.mark.parametrize("frame", [None, True, 0, 1.5, "hello", b"hello", [], [{"type": "hello"}]])
def test_a_frame_that_is_not_a_map_is_malformed(frame: object) -> None:
    """A frame that is not a map raises MalformedEvent."""
    with pytest.raises(MalformedEvent):
        parse_event(wire(frame))


@pytest.mark.parametrize(
    "kind",
    [
        "Hello",
        "joinchatroom",
        "joinChatroom",
        "message",
        "Gap",
        "gap",
        "",
        None,
        1,
        True,
        b"hello",
    ],
)
def test_an_unknown_or_absent_type_is_malformed(kind: object) -> None:
    """A map whose `type` is no section 5 name (client types and SDK-only events included)."""
    with pytest.raises(MalformedEvent):
        parse_event(wire({"type": kind, "roomId": "r1"}))


def test_a_map_without_type_is_malformed() -> None:
    """A map with no `type` key raises MalformedEvent."""
    with pytest.raises(MalformedEvent):
        parse_event({"roomId": "r1", "aid": "a"})


def required_fields(frame: Frame) -> list[str]:
    """Return the fields of `frame` that its MINIMAL form keeps (or all, when it has none)."""
    minimal = {f["type"]: f for f, _ in MINIMAL}.get(frame["type"], frame)
    # reaction's `remove` is read as False when absent, so it is not required.
    return [key for key in minimal if key != "type"]


MISSING = [
    pytest.param(frame, key, id=f"{frame['type']}-{key}")
    for frame, _ in FULL
    for key in required_fields(frame)
]


@pytest.mark.parametrize(("frame", "key"), MISSING)
def test_a_missing_required_field_is_malformed(frame: Frame, key: str) -> None:
    """Dropping any required field of any type raises MalformedEvent."""
    broken = {k: v for k, v in frame.items() if k != key}
    with pytest.raises(MalformedEvent):
        parsed(broken)


@pytest.mark.parametrize(("frame", "key"), MISSING)
def test_a_required_field_sent_as_null_is_malformed(frame: Frame, key: str) -> None:
    """A required field that is null is as missing as an absent one."""
    with pytest.raises(MalformedEvent):
        parsed({**frame, key: None})


BLOBS = ["ciphertext", "iv", "payload", "publicKey", "encryptedRoomKey"]
INTS = ["seq", "lastSeq", "keyEpoch", "ts", "expiresAt"]
BOOLS = ["isTyping", "more", "recovered"]
STRS = ["roomId", "aid", "you", "host", "from", "by", "messageId", "clientMsgId", "emoji"]
STRS += ["reason", "code", "message", "epoch", "protocol"]


def wrong(key: str) -> list[object]:
    """Return values of the wrong type for `key`: each one type confusion a codec allows."""
    if key in BLOBS:
        # The JSON spelling of a blob (base64 text) is not a blob on a CBOR connection.
        return ["AAEC", [0, 1, 2], 5]
    if key in INTS:
        return [True, False, 1.0, "1", b"\x01"]
    if key in BOOLS:
        return [1, 0, "true", b"\x01"]
    if key in STRS:
        return [b"r1", 1, True, ["r1"], {"r1": 1}]
    others: dict[str, list[object]] = {
        "heartbeatInterval": ["25", b"25", [25]],
        "authTimeout": ["10", None, {}],
        "retryAfter": ["1.5", b"1"],
        "limits": [[], "rate=10", 10],
        "features": ["history", {"history": True}, 1],
        "members": [{"aid": "a"}, "alice", [["alice"]], ["alice"], [{"aid": 1}]],
        "messages": [{"seq": 1}, "m", [1], [{"seq": 1}]],
    }
    return others[key]


WRONG = [
    pytest.param(frame, key, value, id=f"{frame['type']}-{key}-{value!r}")
    for frame, _ in FULL
    for key in frame
    if key not in ("type", "remove")
    for value in wrong(key)
]


@pytest.mark.parametrize(("frame", "key", "value"), WRONG)
def test_a_field_of_the_wrong_type_is_malformed(frame: Frame, key: str, value: object) -> None:
    """A str where bytes are due, a bool where an int is due, and the like raise MalformedEvent."""
    with pytest.raises(MalformedEvent):
        parsed({**frame, key: value})


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("members", 0, "publicKey"), "QUFB"),
        (("members", 0, "aid"), b"alice"),
        (("messages", 0, "seq"), True),
        (("messages", 0, "ciphertext"), "b25l"),
        (("messages", 1, "ts"), 2.5),
        (("messages", 1, "iv"), "aXY="),
    ],
)
def test_a_wrong_type_inside_a_list_entry_is_malformed(
    path: tuple[Any, ...], value: object
) -> None:
    """A member or history entry with a field of the wrong type makes the whole frame malformed."""
    frame = wire(FRAME["joinSuccess"] if path[0] == "members" else FRAME["history"])
    frame[path[0]][path[1]][path[2]] = value
    with pytest.raises(MalformedEvent):
        parse_event(frame)


@pytest.mark.parametrize("entry", [None, 1, "alice", b"alice", ["alice"], True])
@pytest.mark.parametrize("key", ["members", "messages"])
def test_a_list_entry_that_is_not_a_map_is_malformed(key: str, entry: object) -> None:
    """A member or history entry that is not a map raises MalformedEvent, not AttributeError."""
    frame = wire(FRAME["joinSuccess"] if key == "members" else FRAME["history"])
    frame[key].append(entry)
    with pytest.raises(MalformedEvent):
        parse_event(frame)


@pytest.mark.parametrize(
    ("frame", "key"),
    [
        (FRAME["hello"], "heartbeatInterval"),
        (FRAME["hello"], "authTimeout"),
        (FRAME["error"], "retryAfter"),
    ],
    ids=["heartbeatInterval", "authTimeout", "retryAfter"],
)
def test_a_bool_where_a_number_of_seconds_is_due_is_malformed(frame: Frame, key: str) -> None:
    """`true` for a number of seconds (CBOR keeps bools and numbers apart) raises MalformedEvent."""
    with pytest.raises(MalformedEvent):
        parsed({**frame, key: True})


@pytest.mark.parametrize("value", ["false", "no", 0, 1, b"", []])
def test_a_reaction_remove_that_is_not_a_bool_is_malformed(value: object) -> None:
    """`reaction.remove` of another type than bool raises MalformedEvent (not read as truthy)."""
    with pytest.raises(MalformedEvent):
        parsed({**FRAME["reaction"], "remove": value})


@pytest.mark.parametrize("features", [[1, 2], [b"history"], [None], [["history"]]])
def test_hello_features_that_are_not_strings_are_malformed(features: list[object]) -> None:
    """`hello.features` entries that are not strings raise MalformedEvent (Hello says str)."""
    with pytest.raises(MalformedEvent):
        parsed({**FRAME["hello"], "features": features})


@pytest.mark.parametrize(
    "limits",
    [{}, {"burst": 30}, {"rate": 10}, {"rate": "10", "burst": 30}, {"rate": 10, "burst": None}],
)
def test_hello_limits_without_a_numeric_rate_and_burst_are_malformed(limits: Frame) -> None:
    """A `hello` whose limits lack a numeric rate or burst (section 5 has both) is malformed."""
    with pytest.raises(MalformedEvent):
        parsed({**FRAME["hello"], "limits": limits})


HUGE = 10**400  # a CBOR bignum: cbor2 decodes it to a Python int beyond float's range
LONG = 10**5000  # more digits than Python 3.11 turns into a str (sys.get_int_max_str_digits)

# Inputs that made parse_event raise something other than MalformedEvent.
ESCAPES = [
    pytest.param({"type": []}, id="type-list-TypeError"),
    pytest.param({"type": {"a": 1}}, id="type-map-TypeError"),
    pytest.param(
        {**FRAME["hello"], "heartbeatInterval": HUGE}, id="heartbeatInterval-OverflowError"
    ),
    pytest.param({**FRAME["hello"], "authTimeout": -HUGE}, id="authTimeout-OverflowError"),
    pytest.param({**FRAME["error"], "retryAfter": HUGE}, id="retryAfter-OverflowError"),
    pytest.param({"type": LONG}, id="type-long-int-ValueError"),
    pytest.param(
        {**FRAME["joinSuccess"], "members": [{"type": LONG}]}, id="member-type-ValueError"
    ),
    pytest.param({**FRAME["history"], "messages": [{"type": LONG}]}, id="message-type-ValueError"),
]


@pytest.mark.parametrize("frame", ESCAPES)
def test_odd_values_raise_malformed_event_and_nothing_else(frame: Frame) -> None:
    """An unhashable `type`, a bignum of seconds, a 5000-digit int: MalformedEvent, nothing else."""
    with contextlib.suppress(MalformedEvent):
        parsed(frame)


# -- any value at all -------------------------------------------------------------------------

KEYS = sorted({key for frame, _ in FULL for key in frame} | {"aid", "publicKey", "id"})
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary()
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def near_frames(draw: st.DrawFn, values: st.SearchStrategy[Any] = values) -> Frame:
    """Draw a real frame of some type with some fields dropped, replaced or added."""
    frame = dict(draw(st.sampled_from([f for f, _ in FULL + MINIMAL])))
    kind = frame["type"]
    for key in list(frame):
        if key == "type":
            continue
        match draw(st.sampled_from(["keep"] * 6 + ["drop", "replace", "entry"])):
            case "drop":
                del frame[key]
            case "replace":
                frame[key] = draw(values)
            case "entry" if isinstance(frame[key], list) and frame[key]:
                entries = list(frame[key])
                entries[draw(st.integers(0, len(entries) - 1))] = draw(values)
                frame[key] = entries
    frame.update(draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=2)))
    # Mostly its own type, so that the parsers get past their first field.
    frame["type"] = draw(st.sampled_from([kind] * 3 + ALL_TYPES))
    return frame


def _only_malformed(frame: object) -> None:
    """Parse `frame`, letting any exception but MalformedEvent through."""
    with contextlib.suppress(MalformedEvent):
        parse_event(frame)


@given(values | near_frames())
@example({"type": []})
@example({**FRAME["hello"], "heartbeatInterval": HUGE})
def test_any_value_parses_or_raises_malformed_event(frame: object) -> None:
    """Whatever the codec delivers, parse_event returns an event or raises MalformedEvent."""
    _only_malformed(wire(frame))


# The same claim where the known escapes cannot arise: ints within CBOR's native 64 bits
# (no bignums) and a hashable top-level `type`. It guards against new escapes meanwhile.
small_ints = st.integers(-(2**64) + 1, 2**64 - 1)
small_scalars = st.none() | st.booleans() | small_ints | st.floats() | st.text() | st.binary()
small_values = st.recursive(
    small_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


def hashable_type(value: Any) -> Any:
    """Return `value` without a top-level `type` that is a list or a map."""
    if isinstance(value, dict) and isinstance(value.get("type"), list | dict):
        return {k: v for k, v in value.items() if k != "type"}
    return value


maps = st.dictionaries(st.sampled_from(KEYS), small_values, max_size=6)


@given((small_values | maps).map(hashable_type) | near_frames(small_values))
def test_any_value_without_bignums_parses_or_raises_malformed_event(frame: object) -> None:
    """Any value with 64-bit ints and a hashable `type`: an event, or MalformedEvent only."""
    _only_malformed(wire(frame))


@given(near_frames(small_values))
def test_whatever_parses_is_an_event_of_its_frame_type(frame: Frame) -> None:
    """An event that parses is of the class its `type` names (no type confusion in the table)."""
    classes = {f["type"]: type(event) for f, event in FULL}
    try:
        event = parse_event(wire(frame))
    except MalformedEvent:
        return
    assert type(event) is classes[frame["type"]]
