"""The timers and limits of one client connection: auth, heartbeat, token, rate, frame size."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.core.bucket import ABUSE_AFTER
from roomd.core.connection import (
    Authenticated,
    Close,
    Connection,
    Phase,
    Reply,
    SendPong,
    ToRoom,
)
from roomd.core.deadline import PING_GRID
from roomd.errors import CloseCode, ErrorCode

from .connection_support import (
    WALL,
    R,
    auth,
    authed,
    enter,
    error,
    send,
    snapshot,
    start,
)

# -- timers -----------------------------------------------------------------------

PING = True  # ("ping", t, PING): the server's pinger finds a ping due at t
# A scenario: ("auth", t, ttl) authenticates at t; ("heard", t, _) records bytes at t;
# ("wake", t, expected) asserts what wake(t) returns; ("next", _, t) asserts next_deadline();
# ("ping", t, due) asserts ping_due(t); ("next_ping", _, t) asserts next_ping.
Step = tuple[str, float, object]


def run(conn: Connection, steps: list[Step]) -> None:
    """Play `steps` on `conn`, asserting each expectation in order."""
    for i, (op, t, want) in enumerate(steps):
        if op == "auth":
            assert isinstance(want, int)
            assert [type(a) for a in send(conn, auth(ttl=want, now=t), now=t)] == [Authenticated]
        elif op == "heard":
            conn.heard(t)
        elif op == "wake":
            assert conn.wake(t) == want, (i, op, t)
        elif op == "ping":
            assert conn.ping_due(t) is want, (i, op, t)
        elif op == "next_ping":
            assert conn.next_ping == want, (i, op)
        else:
            assert op == "next"
            assert conn.next_deadline() == want, (i, op)


@pytest.mark.parametrize(
    ("changes", "steps"),
    [
        pytest.param(
            {},
            [
                ("next", 0, 10.0),
                ("wake", 0.0, None),
                ("wake", 9.999, None),
                ("wake", 10.0, Close(CloseCode.AUTH_TIMEOUT)),
            ],
            id="auth-timeout-at-exactly-auth-timeout",
        ),
        pytest.param(
            {},
            [
                ("heard", 9.9, None),
                ("next", 0, 10.0),
                ("wake", 10.0, Close(CloseCode.AUTH_TIMEOUT)),
            ],
            id="bytes-heard-do-not-postpone-the-auth-timeout",
        ),
        pytest.param(
            {},
            [("wake", 1000.0, Close(CloseCode.AUTH_TIMEOUT))],
            id="a-late-wake-before-auth-is-still-4001",
        ),
        pytest.param(
            {"auth_timeout": 30.0},
            [
                ("next_ping", 0, 25.0),
                ("ping", 24.999, False),
                ("ping", 25.0, PING),
                ("next", 0, 30.0),
                ("wake", 29.999, None),
                ("wake", 30.0, Close(CloseCode.AUTH_TIMEOUT)),
            ],
            id="pings-before-auth-when-the-interval-is-shorter",
        ),
        pytest.param(
            {},
            [("auth", 5.0, 3600), ("next", 0, 60.0), ("wake", 10.0, None)],
            id="auth-stops-the-auth-countdown",
        ),
        pytest.param(
            {},
            [
                ("auth", 0.0, 3600),
                ("ping", 25.0, PING),
                ("ping", 50.0, PING),
                ("next", 0, 60.0),
                ("wake", 59.999, None),
                ("wake", 60.0, Close(CloseCode.HEARTBEAT_TIMEOUT)),
            ],
            id="silence-for-heartbeat-timeout-closes-4002",
        ),
        pytest.param(
            {},
            [
                ("auth", 0.0, 3600),
                ("ping", 25.0, PING),
                ("heard", 30.0, None),
                ("ping", 50.0, PING),
                ("wake", 60.0, None),
                ("ping", 75.0, PING),
                ("wake", 75.0, None),
                ("next", 0, 90.0),
                ("wake", 89.999, None),
                ("wake", 90.0, Close(CloseCode.HEARTBEAT_TIMEOUT)),
            ],
            id="heard-postpones-the-heartbeat-timeout",
        ),
        pytest.param(
            {"heartbeat_timeout": 20.0},
            [
                ("auth", 0.0, 3600),
                ("next", 0, 20.0),
                ("wake", 20.0, Close(CloseCode.HEARTBEAT_TIMEOUT)),
            ],
            id="timeout-before-the-first-ping",
        ),
        pytest.param(
            {"heartbeat_timeout": 1000.0},
            [
                ("auth", 0.0, 3600),
                ("ping", 24.9, False),
                ("ping", 25.0, PING),
                ("ping", 25.0, False),
                ("next_ping", 0, 50.0),
                ("ping", 53.0, PING),
                ("next_ping", 0, 78.0),
                ("ping", 77.9, False),
                ("ping", 78.0, PING),
                ("wake", 78.0, None),
            ],
            id="pings-every-interval-from-when-the-last-was-sent",
        ),
        pytest.param(
            {},
            [
                ("auth", 0.0, 30),
                ("next_ping", 0, 25.0),
                ("ping", 25.0, PING),
                ("heard", 26.0, None),
                ("next", 0, 30.0),
                ("wake", 29.999, None),
                ("wake", 30.0, Close(CloseCode.TOKEN_EXPIRED)),
            ],
            id="token-expiry-closes-4005",
        ),
        pytest.param(
            {},
            [("auth", 0.0, 5), ("next", 0, 5.0), ("wake", 5.0, Close(CloseCode.TOKEN_EXPIRED))],
            id="token-expiry-before-the-first-ping",
        ),
        pytest.param(
            {},
            [
                ("auth", 0.0, 3600),
                ("heard", 30.0, None),
                ("wake", 100.0, Close(CloseCode.HEARTBEAT_TIMEOUT)),
            ],
            id="an-overdue-close-wins-over-an-overdue-ping",
        ),
    ],
)
def test_timers_through_wake(changes: dict[str, float], steps: list[Step]) -> None:
    """wake(now) returns the close (4001, 4002, 4005) due, ping_due(now) the ping, on time."""
    run(start(**changes), steps)


@given(
    auth_timeout=st.floats(1, 100),
    interval=st.floats(1, 100),
    timeout=st.floats(1, 100),
    ttl=st.integers(1, 100),
    auth_at=st.one_of(st.none(), st.floats(0, 0.9)),
)
def test_next_deadline_is_the_earliest_timer_and_nothing_is_due_before_it(
    auth_timeout: float, interval: float, timeout: float, ttl: int, auth_at: float | None
) -> None:
    """next_deadline() is the earliest closing timer; next_timer, that or the ping's grid slot.

    wake says nothing before next_deadline, and ping_due nothing before next_ping.
    """
    conn = start(auth_timeout=auth_timeout, heartbeat_interval=interval, heartbeat_timeout=timeout)
    auth_deadline, token_deadline = auth_timeout, math.inf
    if auth_at is not None:  # always before the auth deadline (auth_timeout >= 1)
        assert [type(a) for a in send(conn, auth(ttl=ttl), now=auth_at, wall=WALL)] == [
            Authenticated
        ]
        auth_deadline, token_deadline = math.inf, auth_at + ttl
    deadline = conn.next_deadline()
    assert deadline == min(auth_deadline, timeout, token_deadline)
    assert conn.next_ping == interval
    # A deadline exactly; a ping on its grid slot: never early, less than a slot late.
    timer = conn.next_timer
    assert min(deadline, interval) <= timer <= deadline
    assert timer == deadline or (timer < interval + PING_GRID and timer / PING_GRID % 1 == 0)
    assert conn.wake(deadline * 0.999) is None
    assert not conn.ping_due(interval * 0.999)
    assert conn.wake(deadline) is not None


# -- rate limit -------------------------------------------------------------------

TYPING = {"type": "typing", "roomId": R, "isTyping": True}


@pytest.mark.parametrize(
    ("refused", "cbor", "request_id", "room_id"),
    [
        pytest.param({**TYPING, "id": "t4"}, False, "t4", R, id="json-id-and-room"),
        pytest.param({**TYPING, "id": 9, "roomId": "r2"}, True, 9, "r2", id="cbor-id-and-room"),
        pytest.param({"type": "createChatroom", "id": 0}, False, 0, None, id="id-only"),
        pytest.param("{not json", False, None, None, id="undecodable"),
        pytest.param({**TYPING, "id": True, "roomId": "a b"}, False, None, None, id="invalid-ids"),
    ],
)
def test_the_first_frame_beyond_the_burst_is_rate_limited_the_next_dropped(
    refused: object, cbor: bool, request_id: m.RequestId | None, room_id: str | None
) -> None:
    """Past the burst: one rateLimited {retryAfter} echoing id/roomId, then [] (dropped)."""
    conn = authed(burst=3, rate=1.0)  # the auth is frame 1
    enter(conn, R)  # frame 2
    assert [type(a) for a in send(conn, TYPING)] == [ToRoom]  # frame 3: the bucket is full
    before = snapshot(conn)
    event = error(send(conn, refused, cbor=cbor), ErrorCode.RATE_LIMITED, request_id, room_id)
    assert event["retryAfter"] == pytest.approx(1.0)
    assert [send(conn, TYPING, now=t) for t in (0.0, 0.5, 0.99)] == [[], [], []]
    assert snapshot(conn) == before
    assert (conn.stats.frames_in, conn.stats.rate_limited) == (3, 4)


def test_a_rate_limited_auth_is_not_processed() -> None:
    """A refused frame is not processed: a rate-limited auth does not authenticate."""
    conn = start(burst=1, rate=1.0)
    error(send(conn, {"type": "nope"}), ErrorCode.UNAUTHENTICATED)
    error(send(conn, auth(id="a")), ErrorCode.RATE_LIMITED, "a")
    assert (conn.phase, conn.aid) == (Phase.AWAITING_AUTH, None)
    assert [type(a) for a in send(conn, auth(now=1.0), now=1.0)] == [Authenticated]


@pytest.mark.parametrize(("rate", "burst", "wait"), [(1.0, 3, 1.0), (10.0, 30, 0.1), (2.0, 2, 0.5)])
def test_frames_flow_again_once_the_bucket_has_drained(
    rate: float, burst: int, wait: float
) -> None:
    """retryAfter is 1/rate for a full bucket; after that long the next frame is processed."""
    conn = authed(burst=burst, rate=rate)
    enter(conn, R)
    for _ in range(burst - 2):
        assert [type(a) for a in send(conn, TYPING)] == [ToRoom]
    event = error(send(conn, TYPING), ErrorCode.RATE_LIMITED, room_id=R)
    assert event["retryAfter"] == pytest.approx(wait)
    assert [type(a) for a in send(conn, TYPING, now=wait)] == [ToRoom]


@pytest.mark.parametrize("step", [0.5, 0.25, 0.125])
def test_keeping_the_bucket_full_for_abuse_after_closes_4004(step: float) -> None:
    """A flood that keeps the bucket full gets Close(4004) ABUSE_AFTER s after its first refusal."""
    conn = authed(burst=1, rate=1.0)  # full after the auth
    first_refusal = step
    abuse_at = round((first_refusal + ABUSE_AFTER) / step)
    results = [send(conn, {"type": "nope"}, now=k * step) for k in range(1, abuse_at + 1)]
    *flood, last = results
    assert last == [Close(CloseCode.RATE_LIMIT_ABUSE)]
    assert all(Close(CloseCode.RATE_LIMIT_ABUSE) not in actions for actions in flood)
    codes = [a.event["code"] for actions in flood for a in actions if isinstance(a, Reply)]
    assert codes[0] == ErrorCode.RATE_LIMITED
    # One frame per 1/rate s still gets through (a badRequest), each run refused once.
    assert codes.count(ErrorCode.BAD_REQUEST) == int(ABUSE_AFTER)
    assert codes.count(ErrorCode.RATE_LIMITED) == int(ABUSE_AFTER)
    assert conn.stats.frames_in == 1 + int(ABUSE_AFTER)
    assert conn.stats.rate_limited == abuse_at - int(ABUSE_AFTER)


def test_stats_count_accepted_frames_and_rate_limited_ones() -> None:
    """frames_in counts every frame let through (errors included); rate_limited the others."""
    conn = start(burst=4, rate=1.0)
    frames: list[object] = [{"type": "nope"}, auth(), "{", TYPING, TYPING, TYPING, auth()]
    for fields in frames:
        send(conn, fields)
    assert (conn.stats.frames_in, conn.stats.rate_limited) == (4, 3)


# -- control frames -------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"x", b"\x00" * 125])
def test_a_ping_within_the_bucket_is_answered_with_its_payload(payload: bytes) -> None:
    """A ping that fits in the bucket gets a pong carrying the same payload; a pong gets nothing."""
    conn = authed()
    assert conn.receive_control(1.0, ping=payload) == SendPong(payload)
    assert conn.receive_control(1.0, ping=None) is None


def test_pings_pay_the_bucket_and_past_it_get_no_pong() -> None:
    """Control frames cost a unit each: past `burst` pings get no pong, and data is refused."""
    conn = start(burst=5.0, rate=1.0)
    pongs = [conn.receive_control(0.0, ping=b"p") for _ in range(8)]
    assert pongs == [SendPong(b"p")] * 5 + [None] * 3
    assert conn.stats.rate_limited == 3
    # The refused pings began a run of refusals: the frame after them is dropped unanswered.
    assert send(conn, auth(id=7)) == []
    assert conn.phase is Phase.AWAITING_AUTH


def test_pongs_pay_the_bucket_too() -> None:
    """Unsolicited pongs fill the bucket, so a data frame right after them is refused."""
    conn = start(burst=3.0, rate=1.0)
    for _ in range(3):
        assert conn.receive_control(0.0, ping=None) is None
    assert conn.phase is Phase.AWAITING_AUTH
    error(send(conn, auth(id=3)), ErrorCode.RATE_LIMITED, 3)
    assert conn.phase is Phase.AWAITING_AUTH


@pytest.mark.parametrize("step", [0.001, 0.05])
def test_a_control_flood_that_keeps_the_bucket_full_closes_4004(step: float) -> None:
    """Pings that keep the bucket full for ABUSE_AFTER seconds end in Close(4004)."""
    conn = authed(burst=5.0, rate=10.0)
    now, result = 0.0, None
    while now < ABUSE_AFTER + 1:
        result = conn.receive_control(now, ping=b"")
        if isinstance(result, Close):
            break
        now += step
    assert result == Close(CloseCode.RATE_LIMIT_ABUSE)
    # Counted from the first refused ping (the bucket is full after 5).
    assert ABUSE_AFTER <= now <= ABUSE_AFTER + 1


def test_control_frames_are_ignored_once_closing() -> None:
    """A closing connection answers no ping."""
    conn = authed()
    conn.close(CloseCode.GOING_AWAY)
    assert conn.receive_control(0.0, ping=b"x") is None


# -- frame size -------------------------------------------------------------------

TOO_BIG = Close(CloseCode.MESSAGE_TOO_BIG)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        pytest.param([(1024, True)], [None], id="exactly-max-frame"),
        pytest.param([(1025, True)], [TOO_BIG], id="one-byte-over"),
        pytest.param([(0, True)], [None], id="empty"),
        pytest.param([(512, False), (512, True)], [None, None], id="two-parts-at-max"),
        pytest.param([(512, False), (513, True)], [None, TOO_BIG], id="two-parts-over"),
        pytest.param([(1000, False), (25, False)], [None, TOO_BIG], id="over-before-finished"),
        pytest.param([(1024, True), (1024, True)], [None, None], id="resets-after-a-message"),
        pytest.param(
            [(1000, True), (100, False), (924, True)], [None, None, None], id="resets-mid-stream"
        ),
        pytest.param([(1024, False), (0, False), (1, True)], [None, None, TOO_BIG], id="sums"),
    ],
)
def test_a_message_over_max_frame_closes_1009(
    parts: list[tuple[int, bool]], expected: list[Close | None]
) -> None:
    """frame_part closes 1009 once one message's parts sum past max_frame; a finished one resets."""
    conn = authed(max_frame=1024)
    assert [conn.frame_part(size, finished=finished) for size, finished in parts] == expected
