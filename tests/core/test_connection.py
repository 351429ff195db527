"""The rules of one client connection, sans-I/O: phases, auth, bad frames, closing.

Every test drives a core `Connection` with frames and times, as the trio shell
(roomd.daemon.reader) does, and checks the actions it answers: no trio, no clock.
The room rules are in test_connection_rooms.py, timers and limits in
test_connection_limits.py.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import attrs
import cbor2
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.core.connection import (
    Authenticated,
    Close,
    Connection,
    CreateRoom,
    JoinRoom,
    Phase,
    Reply,
    ToRoom,
)
from roomd.core.token import mint_token
from roomd.errors import CloseCode, ErrorCode

from .connection_support import (
    LIMITS,
    QUIET,
    ROOM_MESSAGES,
    WALL,
    R,
    auth,
    authed,
    enter,
    error,
    send,
    snapshot,
    start,
    token,
)

# -- phases ---------------------------------------------------------------------


def test_a_new_connection_awaits_auth_and_is_in_no_room() -> None:
    """Connection.start is AWAITING_AUTH, with no AID, no close code and no rooms."""
    conn = start()
    assert (conn.phase, conn.aid, conn.close_code) == (Phase.AWAITING_AUTH, None, None)
    assert conn.member_of == set()


@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
@pytest.mark.parametrize("request_id", [None, "a1", 0, 7])
def test_a_valid_auth_authenticates_and_answers_auth_ok(
    cbor: bool, request_id: m.RequestId | None
) -> None:
    """A valid token moves to AUTHENTICATED: authOk {aid, expiresAt} echoing the id."""
    conn = start()
    extra: dict[str, Any] = {} if request_id is None else {"id": request_id}
    actions = send(conn, auth("alice", ttl=3600, **extra), cbor=cbor)
    reply = {"type": "authOk", "aid": "alice", "expiresAt": int(WALL) + 3600, **extra}
    assert actions == [Authenticated("alice", reply)]
    assert (conn.phase, conn.aid) == (Phase.AUTHENTICATED, "alice")


@pytest.mark.parametrize("setup", [start, authed], ids=["awaiting-auth", "authenticated"])
@pytest.mark.parametrize(
    ("first", "second"),
    [(4002, 1000), (1000, 4002), (1009, 1006), (4003, 4003), (1006, 1011)],
)
def test_close_enters_closing_and_the_first_code_wins(
    setup: Callable[[], Connection], first: int, second: int
) -> None:
    """close(code) enters CLOSING; a second close returns False and keeps the first code."""
    conn = setup()
    assert conn.close(first) is True
    assert (conn.phase, conn.close_code) == (Phase.CLOSING, first)
    assert conn.close(second) is False
    assert (conn.phase, conn.close_code) == (Phase.CLOSING, first)


@pytest.mark.parametrize(
    "payload",
    [
        orjson.dumps(auth()).decode(),
        cbor2.dumps(auth()),
        orjson.dumps({"type": "createChatroom", "id": 1}).decode(),
        orjson.dumps(ROOM_MESSAGES[0][0]).decode(),
        "{not json",
        b"\xff",
    ],
    ids=["auth", "auth-cbor", "create", "message", "bad-json", "bad-cbor"],
)
@pytest.mark.parametrize("setup", [start, authed], ids=["awaiting-auth", "authenticated"])
def test_frames_are_ignored_once_closing(
    setup: Callable[[], Connection], payload: str | bytes
) -> None:
    """In CLOSING every frame is ignored: no action, no count, no rate-limit unit."""
    conn = setup()
    counted = conn.stats.frames_in
    conn.close(1000)
    before, level = snapshot(conn), conn.bucket.level
    assert send(conn, payload) == []
    assert snapshot(conn) == before
    assert conn.bucket.level == level
    assert (conn.stats.frames_in, conn.stats.rate_limited) == (counted, 0)


# -- before auth ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "request_id", "room_id"),
    [
        ({"type": "createChatroom", "id": "c1"}, "c1", None),
        ({"type": "joinChatroom", "roomId": R, "id": 2}, 2, R),
        *[({**fields, "id": f"x{i}"}, f"x{i}", R) for i, (fields, _) in enumerate(ROOM_MESSAGES)],
        ({"type": "message", "id": "m"}, "m", None),  # malformed: still unauthenticated
        ({"type": "nope", "id": 7, "roomId": "r2"}, 7, "r2"),  # unknown type
        ({"id": 8}, 8, None),  # no type at all
        ({"type": "typing", "roomId": "bad room!", "id": True}, None, None),  # nothing valid
        ([1, 2], None, None),  # not a map
    ],
)
@pytest.mark.parametrize("cbor", [False, True], ids=["json", "cbor"])
def test_before_auth_every_other_message_is_unauthenticated(
    fields: object, request_id: m.RequestId | None, room_id: str | None, cbor: bool
) -> None:
    """Before authOk anything but auth gets unauthenticated (echoing valid id/roomId), no effect."""
    conn = start()
    before = snapshot(conn)
    error(send(conn, fields, cbor=cbor), ErrorCode.UNAUTHENTICATED, request_id, room_id)
    assert snapshot(conn) == before
    assert conn.phase is Phase.AWAITING_AUTH
    assert [type(a) for a in send(conn, auth())] == [Authenticated]


@pytest.mark.parametrize(
    ("fields", "request_id"),
    [({"type": "auth", "id": "a"}, "a"), ({"type": "auth", "token": 5, "id": 3}, 3)],
    ids=["no-token", "token-not-a-string"],
)
def test_an_auth_with_bad_fields_is_a_bad_request(
    fields: dict[str, Any], request_id: m.RequestId
) -> None:
    """An auth that does not parse is badRequest (not unauthenticated) and changes nothing."""
    conn = start()
    before = snapshot(conn)
    error(send(conn, fields), ErrorCode.BAD_REQUEST, request_id)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    "bad_token",
    [
        token("alice", ttl=-60),
        token("alice", ttl=0),  # exp == now is already expired
        "not.a.jwt",
        mint_token("another-secret-another-secret-another-secret", "alice", now=WALL, ttl=60)[0],
    ],
    ids=["expired", "expires-now", "garbage", "bad-signature"],
)
def test_a_bad_token_is_unauthenticated_and_the_client_may_try_again(bad_token: str) -> None:
    """A bad token gets unauthenticated (with its id), changes nothing; a good one then works."""
    conn = start()
    before = snapshot(conn)
    error(send(conn, {"type": "auth", "token": bad_token, "id": 1}), ErrorCode.UNAUTHENTICATED, 1)
    assert snapshot(conn) == before
    assert [type(a) for a in send(conn, auth())] == [Authenticated]


# -- bad frames -----------------------------------------------------------------

UNDECODABLE: list[Any] = [
    pytest.param("{", id="json-truncated"),
    pytest.param("", id="json-empty"),
    pytest.param("{'type': 'auth'}", id="json-single-quotes"),
    pytest.param(b"\xff", id="cbor-break"),
    pytest.param(b"", id="cbor-empty"),
    pytest.param(b"\xa1\x64type", id="cbor-truncated-map"),
    pytest.param(cbor2.dumps({"type": "typing"}) + b"\x00", id="cbor-trailing-data"),
]


@pytest.mark.parametrize("payload", UNDECODABLE)
@pytest.mark.parametrize("setup", [start, authed], ids=["awaiting-auth", "authenticated"])
def test_a_frame_that_does_not_decode_is_a_bad_request(
    setup: Callable[[], Connection], payload: str | bytes
) -> None:
    """Invalid JSON or CBOR is badRequest, before auth too, and changes nothing."""
    conn = setup()
    before = snapshot(conn)
    error(send(conn, payload), ErrorCode.BAD_REQUEST)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("fields", "cbor", "request_id", "room_id"),
    [
        pytest.param([1, 2], False, None, None, id="json-list"),
        pytest.param(3, False, None, None, id="json-number"),
        pytest.param("auth", False, None, None, id="json-string"),
        pytest.param(None, False, None, None, id="json-null"),
        pytest.param([{"type": "auth"}], True, None, None, id="cbor-list"),
        pytest.param({"id": 1}, False, 1, None, id="no-type"),
        pytest.param({"type": 5, "id": "x"}, False, "x", None, id="type-not-a-string"),
        pytest.param({"type": "nope", "id": "x", "roomId": R}, False, "x", R, id="unknown-type"),
        pytest.param({"type": "Message", "roomId": R}, False, None, R, id="type-is-case-sensitive"),
        pytest.param({"type": "message", "roomId": R, "id": 3}, False, 3, R, id="no-ciphertext"),
        pytest.param({"type": "joinChatroom", "id": 4}, False, 4, None, id="join-no-room"),
        pytest.param(
            {"type": "typing", "roomId": R, "isTyping": "yes"}, False, None, R, id="not-a-bool"
        ),
        pytest.param(
            {"type": "message", "roomId": R, "ciphertext": "no base64!"},
            False,
            None,
            R,
            id="bad-base64",
        ),
        pytest.param(
            {"type": "message", "roomId": R, "ciphertext": "aGk="},
            True,
            None,
            R,
            id="cbor-blob-as-text",
        ),
        pytest.param(
            {"type": "typing", "roomId": "no spaces", "isTyping": True, "id": "t"},
            False,
            "t",
            None,
            id="bad-room-id",
        ),
    ],
)
def test_a_frame_that_is_not_a_valid_message_is_a_bad_request(
    fields: object, cbor: bool, request_id: m.RequestId | None, room_id: str | None
) -> None:
    """Not a map, no or unknown type, a missing or mistyped field: badRequest, nothing else."""
    conn = authed()
    enter(conn, R)
    before = snapshot(conn)
    error(send(conn, fields, cbor=cbor), ErrorCode.BAD_REQUEST, request_id, room_id)
    assert snapshot(conn) == before


# -- re-authentication ----------------------------------------------------------


@pytest.mark.parametrize(
    ("first_ttl", "again_at", "again_ttl", "deadline"),
    [
        pytest.param(30, 20.0, 3600, 3620.0, id="later-token-extends"),
        pytest.param(100, 50.0, 51, 101.0, id="one-second-later-extends"),
        pytest.param(100, 50.0, 50, 100.0, id="same-expiry-keeps"),
        pytest.param(3600, 20.0, 30, 3600.0, id="older-token-never-shortens"),
        pytest.param(3600, 3000.0, 1, 3600.0, id="nearly-expired-token-never-shortens"),
    ],
)
def test_reauth_as_the_same_aid_moves_the_token_deadline_to_the_later_expiry(
    first_ttl: float, again_at: float, again_ttl: float, deadline: float
) -> None:
    """A fresh token for the same AID extends the 4005 deadline; an older one never shortens it."""
    conn = authed(ttl=first_ttl, **QUIET)
    actions = send(conn, auth(ttl=again_ttl, now=again_at, id="re"), now=again_at)
    assert [type(a) for a in actions] == [Authenticated]
    assert (conn.phase, conn.aid) == (Phase.AUTHENTICATED, "alice")
    assert conn.deadlines.token_deadline == deadline
    assert conn.next_deadline() == deadline
    assert conn.wake(deadline - 0.001) is None
    assert conn.wake(deadline) == Close(CloseCode.TOKEN_EXPIRED)


def test_a_reauth_answers_auth_ok_with_the_fresh_token_s_expiry() -> None:
    """A re-auth's authOk names the AID, the new expiresAt, echoes the id; it is a renewal."""
    conn = authed(ttl=30)
    actions = send(conn, auth(ttl=3600, now=20.0, id=9), now=20.0)
    reply = {"type": "authOk", "aid": "alice", "expiresAt": int(WALL) + 20 + 3600, "id": 9}
    assert actions == [Authenticated("alice", reply, renewed=True)]


def test_reauth_as_another_aid_is_forbidden_and_changes_nothing() -> None:
    """A token for another AID on an authenticated connection is forbidden; AID and expiry stay."""
    conn = authed("alice", ttl=30)
    before = snapshot(conn)
    error(send(conn, auth("mallory", ttl=3600, id=2)), ErrorCode.FORBIDDEN, 2)
    assert snapshot(conn) == before
    assert (conn.aid, conn.deadlines.token_deadline) == ("alice", 30.0)


@pytest.mark.parametrize("bad_token", [token("alice", ttl=-1), "garbage", token("mallory", ttl=-1)])
def test_a_bad_token_on_an_authenticated_connection_changes_nothing(bad_token: str) -> None:
    """A bad re-auth token is unauthenticated; the connection stays as it was."""
    conn = authed(ttl=30)
    before = snapshot(conn)
    error(send(conn, {"type": "auth", "token": bad_token}), ErrorCode.UNAUTHENTICATED)
    assert snapshot(conn) == before


@pytest.mark.parametrize(
    ("started", "at", "wall", "minted", "ttl", "deadline"),
    [
        pytest.param(0.0, 0.0, WALL, WALL, 3600, 3600.0, id="fresh-token-at-start"),
        pytest.param(1000.0, 1004.0, WALL, WALL - 100, 400, 1304.0, id="token-minted-earlier"),
        pytest.param(5.5, 7.25, WALL, WALL, 30, 37.25, id="fractional-monotonic-time"),
        pytest.param(0.0, 2.0, WALL + 0.75, WALL, 60, 61.25, id="fractional-wall-time"),
        pytest.param(-50.0, -40.0, WALL + 86_400, WALL + 86_000, 500, 60.0, id="clocks-apart"),
    ],
)
def test_the_token_deadline_is_now_plus_what_the_token_has_left(
    started: float, at: float, wall: float, minted: float, ttl: float, deadline: float
) -> None:
    """The 4005 deadline is now + (exp - wall): the token's remaining life in monotonic time."""
    conn = start(now=started, **QUIET)
    fields = {"type": "auth", "token": token(ttl=ttl, wall=minted)}
    assert [type(a) for a in send(conn, fields, now=at, wall=wall)] == [Authenticated]
    assert conn.deadlines.token_deadline == pytest.approx(deadline)
    assert conn.wake(deadline - 0.001) is None
    assert conn.wake(deadline + 1e-9) == Close(CloseCode.TOKEN_EXPIRED)


# -- closing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("peer_code", "peer_spoke_first", "code"),
    [
        (None, True, 1006),
        (None, False, 1006),
        (1000, True, 1000),
        (1001, True, 1000),
        (4002, True, 1000),
        (4003, True, 1000),
        (3000, True, 1000),
        (1000, False, 1000),
        (1002, False, 1002),
        (1007, False, 1007),
    ],
)
@pytest.mark.parametrize("setup", [start, authed], ids=["awaiting-auth", "authenticated"])
def test_the_close_code_after_the_reader_stopped(
    setup: Callable[[], Connection], peer_code: int | None, peer_spoke_first: bool, code: int
) -> None:
    """No close frame is 1006; a peer's clean close is 1000 whatever its code; else its code."""
    assert setup().close_code_after_read(peer_code, peer_spoke_first=peer_spoke_first) == code


@pytest.mark.parametrize(
    ("codes", "reason"),
    [
        ([], "disconnected"),
        ([4002], "timeout"),
        ([4002, 1006], "timeout"),
        ([1000, 4002], "disconnected"),
        *[([code], "disconnected") for code in (1000, 1001, 1006, 1009, 1011)],
        *[([code], "disconnected") for code in (4001, 4003, 4004, 4005)],
    ],
)
def test_the_leave_reason_is_timeout_only_after_a_4002_close(codes: list[int], reason: str) -> None:
    """leave_reason is "timeout" when the (first) close code was 4002, else "disconnected"."""
    conn = authed()
    for code in codes:
        conn.close(code)
    assert conn.leave_reason == reason


def test_a_client_s_own_4002_close_is_a_disconnect() -> None:
    """A peer that closes with 4002 is answered 1000, so its rooms hear "disconnected"."""
    conn = authed()
    conn.close(conn.close_code_after_read(4002, peer_spoke_first=True))
    assert (conn.close_code, conn.leave_reason) == (1000, "disconnected")


# -- hello ------------------------------------------------------------------------


def test_hello_tells_the_client_its_limits() -> None:
    """ConnectionLimits.hello() is PROTOCOL.md's hello with the configured limits."""
    limits = attrs.evolve(LIMITS, rate=2.5, burst=7.0, max_members=16, max_rooms_per_conn=3)
    assert limits.hello() == {
        "type": "hello",
        "protocol": "roomd.v1",
        "heartbeatInterval": 25.0,
        "authTimeout": 10.0,
        "limits": {
            "rate": 2.5,
            "burst": 7.0,
            "maxFrame": 1024,
            "maxMembers": 16,
            "maxRoomsPerConnection": 3,
            "maxRoomsPerAid": 4,
            "historySize": 0,
            "recoveryLimit": 0,
        },
        "features": ["keyEpochs"],
    }


# -- any input --------------------------------------------------------------------

FIELD_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10)
    | st.binary(max_size=10)
)
MESSAGE_FIELDS = st.dictionaries(
    st.sampled_from(["type", "id", "roomId", "token", "ciphertext", "isTyping", "to", "aid"]),
    FIELD_VALUES,
) | st.fixed_dictionaries(
    {"type": st.sampled_from([*m.MESSAGE_TYPES, "nope"])},
    optional={
        "id": FIELD_VALUES,
        "roomId": st.sampled_from([R, "r2", "x y"]),
        "token": FIELD_VALUES,
        "ciphertext": FIELD_VALUES,
        "isTyping": FIELD_VALUES,
    },
)


def as_json(fields: dict[str, Any]) -> str:
    """Return `fields` as JSON text, bytes as base64 (a valid blob)."""
    return orjson.dumps(fields, default=lambda b: base64.b64encode(b).decode()).decode()


PAYLOADS = (
    st.text(max_size=40)
    | st.binary(max_size=40)
    | MESSAGE_FIELDS.map(as_json)
    | MESSAGE_FIELDS.map(cbor2.dumps)
)


@given(payload=PAYLOADS)
def test_before_auth_any_frame_is_an_error_and_changes_nothing(payload: str | bytes) -> None:
    """Whatever arrives before a valid auth is answered with one error and changes no state."""
    conn = start()
    before = snapshot(conn)
    (action,) = send(conn, payload)
    assert isinstance(action, Reply) and action.event["type"] == "error"
    assert action.event["code"] in {ErrorCode.BAD_REQUEST, ErrorCode.UNAUTHENTICATED}
    assert snapshot(conn) == before


@given(payload=PAYLOADS)
def test_an_authenticated_connection_answers_any_frame_with_one_action(
    payload: str | bytes,
) -> None:
    """Any frame is one action; a refused one (an error) changes no state."""
    conn = authed()
    enter(conn, R)
    before = snapshot(conn)
    (action,) = send(conn, payload)
    if isinstance(action, Reply):
        assert action.event["type"] == "error"
        assert snapshot(conn) == before
    else:
        assert isinstance(action, ToRoom | CreateRoom | JoinRoom)


@pytest.mark.parametrize(
    ("code", "flushes"),
    [(1000, True), (1001, True), (1006, False), (1009, False), (4002, False), (4003, False)],
)
def test_only_a_clean_close_lets_queued_frames_go_out(code: int, flushes: bool) -> None:
    """Frames already queued are flushed on 1000/1001 and dropped on a close for cause."""
    assert Connection.flushes_queue(code) is flushes
