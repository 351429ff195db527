"""Helpers for the tests of the core `Connection`: limits, frames, tokens, set-ups."""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

import attrs
import cbor2
import orjson

from roomd.core import message as m
from roomd.core.connection import (
    Action,
    Authenticated,
    Connection,
    ConnectionLimits,
    CreateRoom,
    JoinRoom,
    Reply,
)
from roomd.core.event import Event
from roomd.core.stats import Stats
from roomd.core.token import mint_token
from roomd.errors import ErrorCode

from ..conftest import SECRET

# The wall clock (token times) at the connection's monotonic time 0.
WALL = 1_700_000_000.0
LIMITS = ConnectionLimits(
    protocol="roomd.v1",
    auth_timeout=10.0,
    heartbeat_interval=25.0,
    heartbeat_timeout=60.0,
    rate=10.0,
    burst=30.0,
    max_frame=1024,
    max_members=8,
    max_rooms_per_conn=2,
    max_rooms_per_aid=4,
)
# Limits under which no heartbeat timer interferes with a test of another timer.
QUIET: dict[str, Any] = {"heartbeat_interval": 1e6, "heartbeat_timeout": 1e6}
R = "r1"
ROOMS = frozenset({"r1", "r2", "r3"})

# One valid frame of every message type addressed to room R (JSON blobs are base64).
ROOM_MESSAGES: list[tuple[dict[str, Any], type[m.RoomMessage]]] = [
    ({"type": "message", "roomId": R, "ciphertext": "aGk=", "iv": "aXY="}, m.SendMessage),
    ({"type": "typing", "roomId": R, "isTyping": True}, m.Typing),
    ({"type": "reaction", "roomId": R, "messageId": "m1", "emoji": "+1"}, m.Reaction),
    ({"type": "signal", "roomId": R, "to": "bob", "payload": "aGk="}, m.Signal),
    ({"type": "leaveChatroom", "roomId": R}, m.LeaveChatroom),
    ({"type": "updateRoomKey", "roomId": R, "encryptedRoomKey": "S0VZ"}, m.UpdateRoomKey),
    ({"type": "transferHost", "roomId": R, "to": "bob"}, m.TransferHost),
    ({"type": "kick", "roomId": R, "aid": "bob"}, m.Kick),
    ({"type": "deleteChatroom", "roomId": R}, m.DeleteChatroom),
]
ROOM_MESSAGE_IDS = [fields["type"] for fields, _ in ROOM_MESSAGES]


def start(now: float = 0.0, **changes: Any) -> Connection:
    """Return a connection accepted at `now` under LIMITS with `changes`."""
    return Connection.start(attrs.evolve(LIMITS, **changes), SECRET, Stats(), now=now)


def token(aid: str = "alice", *, ttl: float = 3600, wall: float = WALL) -> str:
    """Return a token for `aid` minted at wall-clock `wall`, valid for `ttl` seconds."""
    return mint_token(SECRET, aid, now=wall, ttl=ttl)[0]


def frame(fields: object, *, cbor: bool = False) -> str | bytes:
    """Return `fields` as a JSON text payload, or a CBOR binary one."""
    return cbor2.dumps(fields) if cbor else orjson.dumps(fields).decode()


def send(
    conn: Connection,
    fields: object,
    *,
    now: float = 0.0,
    wall: float | None = None,
    rooms: Container[str] = ROOMS,
    cbor: bool = False,
) -> list[Action]:
    """Feed `conn` one frame at `now` (a raw str/bytes payload, or fields to encode).

    The wall clock defaults to WALL + `now`: both clocks advance together.
    """
    payload = fields if isinstance(fields, str | bytes) else frame(fields, cbor=cbor)
    wall_ms = int((WALL + now if wall is None else wall) * 1000)
    return conn.receive_frame(payload, now, wall_ms, rooms)


def auth(
    aid: str = "alice", *, ttl: float = 3600, now: float = 0.0, **extra: Any
) -> dict[str, Any]:
    """Return the fields of an `auth` for `aid` with a token minted at `now`."""
    return {"type": "auth", "token": token(aid, ttl=ttl, wall=WALL + now), **extra}


def authed(aid: str = "alice", *, ttl: float = 3600, **changes: Any) -> Connection:
    """Return a connection accepted and authenticated as `aid` at time 0."""
    conn = start(**changes)
    actions = send(conn, auth(aid, ttl=ttl))
    assert [type(a) for a in actions] == [Authenticated]
    return conn


def error(
    actions: list[Action],
    code: ErrorCode,
    request_id: m.RequestId | None = None,
    room_id: str | None = None,
) -> Event:
    """Assert `actions` is one `error code` echoing exactly `request_id` and `room_id`."""
    assert len(actions) == 1 and isinstance(actions[0], Reply), actions
    event = actions[0].event
    assert (event["type"], event["code"]) == ("error", code)
    assert isinstance(event["message"], str) and event["message"]
    assert (event.get("id"), event.get("roomId")) == (request_id, room_id)
    return event


def snapshot(conn: Connection) -> tuple[object, ...]:
    """Return every piece of a connection's state a frame could change."""
    return (
        conn.phase,
        conn.aid,
        conn.close_code,
        frozenset(conn.joined),
        dict(conn.joining),
        attrs.astuple(conn.deadlines),
    )


def enter(conn: Connection, room_id: str, rooms: Container[str] = ROOMS) -> None:
    """Make `conn` a member of `room_id` as the shell does: join, arrival, attach."""
    actions = send(conn, {"type": "joinChatroom", "roomId": room_id}, rooms=rooms)
    assert actions == [JoinRoom(room_id, "alice", None, None)]
    assert conn.join_arrived(room_id)
    conn.attached(room_id)


def pending(conn: Connection, room_id: str) -> None:
    """Ask to join `room_id` without the room applying it yet."""
    assert send(conn, {"type": "joinChatroom", "roomId": room_id}) == [
        JoinRoom(room_id, "alice", None, None)
    ]


Setup = Callable[[Connection], None]


def chain(*setups: Setup) -> Setup:
    """Return a set-up that runs `setups` in order."""

    def run_all(conn: Connection) -> None:
        for setup in setups:
            setup(conn)

    return run_all


def join_gone(conn: Connection, room_id: str) -> None:
    """Ask to join `room_id` and have the shell find the room gone."""
    pending(conn, room_id)
    conn.room_gone(JoinRoom(room_id, "alice", None, None))


def created(conn: Connection, room_id: str) -> None:
    """Create `room_id`, its creator's join still pending."""
    (create,) = send(conn, {"type": "createChatroom"})
    assert isinstance(create, CreateRoom)
    assert isinstance(conn.room_created(create, room_id), JoinRoom)
