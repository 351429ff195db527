"""The room rules of one client connection: quota, create, join, membership, late answers."""

from __future__ import annotations

import base64
from collections import Counter
from typing import Any

import pytest

from roomd.core import message as m
from roomd.core.connection import (
    CreateRoom,
    JoinRoom,
    ToRoom,
)
from roomd.errors import ErrorCode

from .connection_support import (
    ROOM_MESSAGE_IDS,
    ROOM_MESSAGES,
    ROOMS,
    R,
    Setup,
    authed,
    chain,
    created,
    enter,
    error,
    join_gone,
    pending,
    send,
    snapshot,
)

# -- rooms: quota -----------------------------------------------------------------

FULL: list[Any] = [
    pytest.param(chain(lambda c: enter(c, "r1"), lambda c: enter(c, "r2")), id="two-attached"),
    pytest.param(
        chain(lambda c: enter(c, "r1"), lambda c: pending(c, "r2")), id="one-attached-one-pending"
    ),
    pytest.param(chain(lambda c: pending(c, "r1"), lambda c: pending(c, "r2")), id="two-pending"),
    pytest.param(
        chain(lambda c: created(c, "r1"), lambda c: created(c, "r2")), id="two-created-pending"
    ),
]


@pytest.mark.parametrize("fill", FULL)
@pytest.mark.parametrize(
    ("fields", "request_id", "room_id"),
    [
        ({"type": "createChatroom", "id": "c"}, "c", None),
        ({"type": "joinChatroom", "roomId": "r3", "id": 4}, 4, "r3"),
    ],
    ids=["create", "join"],
)
def test_a_connection_in_max_rooms_cannot_create_or_join_another(
    fill: Setup, fields: dict[str, Any], request_id: m.RequestId, room_id: str | None
) -> None:
    """At max_rooms_per_conn (pending joins counted) create and join are tooManyRooms."""
    conn = authed(max_rooms_per_conn=2)
    fill(conn)
    assert len(conn.member_of) == 2
    before = snapshot(conn)
    error(send(conn, fields), ErrorCode.TOO_MANY_ROOMS, request_id, room_id)
    assert snapshot(conn) == before


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_the_quota_admits_exactly_max_rooms_per_conn(limit: int) -> None:
    """limit - 1 rooms still admit a create and a join; the limit-th refuses the next."""
    conn = authed(max_rooms_per_conn=limit)
    rooms = [f"room{i}" for i in range(limit + 1)]
    for room_id in rooms[: limit - 1]:
        enter(conn, room_id, rooms)
    (create,) = send(conn, {"type": "createChatroom"}, rooms=rooms)
    assert isinstance(create, CreateRoom)
    last = rooms[limit - 1]
    assert send(conn, {"type": "joinChatroom", "roomId": last}, rooms=rooms) == [
        JoinRoom(last, "alice", None, None)
    ]
    refused = send(conn, {"type": "joinChatroom", "roomId": rooms[limit]}, rooms=rooms)
    error(refused, ErrorCode.TOO_MANY_ROOMS, room_id=rooms[limit])


@pytest.mark.parametrize("fill", FULL)
@pytest.mark.parametrize("again", ["r1", "r2"])
def test_joining_a_room_already_in_or_joining_is_not_refused_by_the_quota(
    fill: Setup, again: str
) -> None:
    """At the quota, a join of a room in member_of passes: it is counted as another pending join."""
    conn = authed(max_rooms_per_conn=2)
    fill(conn)
    count = conn.joining[again]
    actions = send(conn, {"type": "joinChatroom", "roomId": again, "id": 1})
    assert actions == [JoinRoom(again, "alice", None, 1)]
    assert conn.joining[again] == count + 1
    assert conn.member_of == {"r1", "r2"}


@pytest.mark.parametrize(
    "free",
    [
        pytest.param(lambda c: c.detached("r1"), id="detached"),
        pytest.param(lambda c: c.room_gone(JoinRoom("r2", "alice", None, None)), id="join-gone"),
    ],
)
def test_a_room_left_or_a_join_refused_frees_its_place(free: Setup) -> None:
    """Once a room detaches or a pending join is settled as gone, the quota has room again."""
    conn = authed(max_rooms_per_conn=2)
    enter(conn, "r1")
    pending(conn, "r2")
    free(conn)
    assert len(conn.member_of) == 1
    assert isinstance(send(conn, {"type": "createChatroom"})[0], CreateRoom)


# -- rooms: create and join -------------------------------------------------------


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
def test_create_asks_for_a_room_with_the_creator_as_host(cbor: bool) -> None:
    """createChatroom is CreateRoom(aid, key, publicKey, id), blobs decoded, nothing pending yet."""
    conn = authed()
    key, public_key = (b"KEY", b"PK") if cbor else ("S0VZ", "UEs=")
    fields = {"type": "createChatroom", "encryptedRoomKey": key, "publicKey": public_key, "id": 1}
    assert send(conn, fields, cbor=cbor) == [CreateRoom("alice", b"KEY", b"PK", 1)]
    assert conn.joining == Counter()


@pytest.mark.parametrize("request_id", [None, "c1", 0])
def test_a_created_room_is_joined_by_its_creator(request_id: m.RequestId | None) -> None:
    """room_created(action, id) is the creator's JoinRoom, counted as pending."""
    conn = authed()
    create = CreateRoom("alice", b"KEY", b"PK", request_id)
    assert conn.room_created(create, "new") == JoinRoom("new", "alice", b"PK", request_id)
    assert conn.joining == Counter({"new": 1})
    assert conn.member_of == {"new"}


@pytest.mark.parametrize("request_id", [None, "c1", 0])
def test_a_room_that_could_not_be_created_is_an_internal_error(
    request_id: m.RequestId | None,
) -> None:
    """room_created(action, None) answers error internal echoing the request id; nothing pending."""
    conn = authed()
    before = snapshot(conn)
    reply = conn.room_created(CreateRoom("alice", None, None, request_id), None)
    error([reply], ErrorCode.INTERNAL, request_id)
    assert snapshot(conn) == before


@pytest.mark.parametrize("fill", [lambda c: None, lambda c: enter(c, "r1")], ids=["empty", "in-r1"])
def test_joining_a_room_that_does_not_exist_is_not_found(fill: Setup) -> None:
    """joinChatroom of a room not in the registry is notFound with its roomId; nothing pending."""
    conn = authed()
    fill(conn)
    before = snapshot(conn)
    fields = {"type": "joinChatroom", "roomId": "nowhere", "id": "j"}
    error(send(conn, fields), ErrorCode.NOT_FOUND, "j", "nowhere")
    assert snapshot(conn) == before


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
def test_joining_an_existing_room_asks_that_room_and_counts_the_join(cbor: bool) -> None:
    """joinChatroom of an existing room is JoinRoom(room, aid, publicKey, id), pending."""
    conn = authed()
    public_key = b"PK" if cbor else "UEs="
    fields = {"type": "joinChatroom", "roomId": R, "publicKey": public_key, "id": 3}
    assert send(conn, fields, cbor=cbor) == [JoinRoom(R, "alice", b"PK", 3)]
    assert conn.joining == Counter({R: 1})
    assert conn.joined == set()
    assert conn.member_of == {R}


# -- rooms: messages --------------------------------------------------------------

NOT_A_MEMBER: list[Any] = [
    pytest.param(lambda c: None, ROOMS - {R}, id="room-does-not-exist"),
    pytest.param(lambda c: None, ROOMS, id="room-exists-not-joined"),
    pytest.param(lambda c: enter(c, "r2"), ROOMS, id="member-of-another-room"),
    pytest.param(lambda c: enter(c, R), ROOMS - {R}, id="member-but-room-gone"),
    pytest.param(chain(lambda c: enter(c, R), lambda c: c.detached(R)), ROOMS, id="detached"),
    pytest.param(lambda c: join_gone(c, R), ROOMS, id="join-answered-room-gone"),
]


@pytest.mark.parametrize(("setup", "rooms"), NOT_A_MEMBER)
@pytest.mark.parametrize(("fields", "cls"), ROOM_MESSAGES, ids=ROOM_MESSAGE_IDS)
def test_a_room_message_from_a_non_member_is_not_member(
    setup: Setup, rooms: frozenset[str], fields: dict[str, Any], cls: type[m.RoomMessage]
) -> None:
    """A message for a room this connection is not in (or that is gone) is notMember."""
    conn = authed()
    setup(conn)
    before = snapshot(conn)
    error(send(conn, {**fields, "id": 5}, rooms=rooms), ErrorCode.NOT_MEMBER, 5, R)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(lambda c: enter(c, R), id="attached"),
        pytest.param(lambda c: pending(c, R), id="join-pending"),
        pytest.param(
            chain(lambda c: enter(c, R), lambda c: c.detached(R), lambda c: enter(c, R)),
            id="rejoined",
        ),
    ],
)
@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
@pytest.mark.parametrize(("fields", "cls"), ROOM_MESSAGES, ids=ROOM_MESSAGE_IDS)
def test_a_room_message_from_a_member_goes_to_the_room(
    setup: Setup, cbor: bool, fields: dict[str, Any], cls: type[m.RoomMessage]
) -> None:
    """A member's (or joiner's) room message is ToRoom(room, parsed message), nothing else."""
    conn = authed()
    setup(conn)
    if cbor:  # the same message with its blobs as byte strings
        blobs = {"ciphertext", "iv", "payload", "encryptedRoomKey"}
        fields = {k: base64.b64decode(v) if k in blobs else v for k, v in fields.items()}
    before = snapshot(conn)
    (action,) = send(conn, {**fields, "id": "x"}, cbor=cbor)
    assert isinstance(action, ToRoom) and action.room_id == R
    assert type(action.msg) is cls
    assert action.msg == m.parse_message({**fields, "id": "x"}, text=not cbor)
    assert snapshot(conn) == before


def test_detached_makes_room_messages_not_member_again() -> None:
    """After detached(room) the same message that went to the room is notMember."""
    conn = authed()
    enter(conn, R)
    fields = {"type": "typing", "roomId": R, "isTyping": True}
    assert [type(a) for a in send(conn, fields)] == [ToRoom]
    conn.detached(R)
    error(send(conn, fields), ErrorCode.NOT_MEMBER, room_id=R)


# -- rooms: answers from outside --------------------------------------------------


@pytest.mark.parametrize("joins", [1, 2, 3])
def test_a_join_whose_room_is_gone_is_not_found_and_settled(joins: int) -> None:
    """room_gone(JoinRoom) answers notFound (id, roomId) and settles exactly one pending join."""
    conn = authed()
    actions = [send(conn, {"type": "joinChatroom", "roomId": R, "id": i})[0] for i in range(joins)]
    last = actions[-1]
    assert isinstance(last, JoinRoom)
    error([conn.room_gone(last)], ErrorCode.NOT_FOUND, joins - 1, R)
    assert conn.joining[R] == joins - 1
    assert conn.member_of == ({R} if joins > 1 else set())


@pytest.mark.parametrize("request_id", [None, "m1", 0])
def test_a_room_message_whose_room_is_gone_is_not_member(request_id: m.RequestId | None) -> None:
    """room_gone(ToRoom) answers notMember with the message's id and roomId; nothing changes."""
    conn = authed()
    enter(conn, R)
    extra = {} if request_id is None else {"id": request_id}
    (action,) = send(conn, {"type": "message", "roomId": R, "ciphertext": "aGk=", **extra})
    assert isinstance(action, ToRoom)
    before = snapshot(conn)
    error([conn.room_gone(action)], ErrorCode.NOT_MEMBER, request_id, R)
    assert snapshot(conn) == before


def test_a_join_that_arrives_while_open_is_applied_and_settled() -> None:
    """join_arrived is True while open and settles the pending join (attached comes next)."""
    conn = authed()
    pending(conn, R)
    assert conn.join_arrived(R) is True
    assert conn.joining == Counter()
    conn.attached(R)
    assert conn.member_of == {R}


@pytest.mark.parametrize("code", [1000, 4002, 4003, 1006])
@pytest.mark.parametrize("joins", [1, 2])
def test_a_join_that_arrives_once_closing_is_not_applied(code: int, joins: int) -> None:
    """Ghost-join rule: once CLOSING, join_arrived is False, and still settles the pending join."""
    conn = authed()
    for _ in range(joins):
        pending(conn, R)
    conn.close(code)
    assert [conn.join_arrived(R) for _ in range(joins)] == [False] * joins
    assert conn.joining == Counter()
    assert conn.member_of == set()


@pytest.mark.parametrize(
    "pipeline",
    [
        ["join", "join"],
        ["join", "leave", "join"],
        ["join", "leave", "join", "leave"],
        ["join", "leave", "join", "leave", "join"],
        ["join", "join", "leave"],
    ],
    ids="-".join,
)
def test_pipelined_joins_and_leaves_count_as_a_multiset(pipeline: list[str]) -> None:
    """Joins sent before the room applies them are counted per join; membership ends as the last."""
    conn = authed(max_rooms_per_conn=1)
    frames = {
        "join": {"type": "joinChatroom", "roomId": R},
        "leave": {"type": "leaveChatroom", "roomId": R},
    }
    actions = [send(conn, frames[op])[0] for op in pipeline]
    assert [type(a) for a in actions] == [JoinRoom if op == "join" else ToRoom for op in pipeline]
    assert conn.joining == Counter({R: pipeline.count("join")})
    for op in pipeline:  # the room applies them in order
        assert conn.member_of == {R}
        if op == "join":
            assert conn.join_arrived(R) is True
            conn.attached(R)
        else:
            conn.detached(R)
    assert conn.joining == Counter()
    assert conn.joined == ({R} if pipeline[-1] == "join" else set())
