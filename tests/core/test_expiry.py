"""Expiry of empty rooms (PROTOCOL.md section 6, "Expiry"), across a restart too."""

from __future__ import annotations

import math

import pytest

from roomd.core.expiry import (
    Expiry,
    alive_mark_interval,
    remaining_ttl_ms,
    restored_empty_since,
)
from roomd.core.history import HistoryPolicy
from roomd.core.room import Room, RoomRecord

HISTORY_OFF = HistoryPolicy(size=0, ttl_ms=0, recovery_limit=0)
TTL = 100.0
INF = math.inf


def new_room() -> Room:
    """Return a freshly created room: empty, its creator not joined yet."""
    return Room.new(
        "r1",
        host="alice",
        encrypted_room_key=None,
        now_ms=0,
        max_members=8,
        message_id_prefix="px",
        epoch="E0",
        history=HISTORY_OFF,
    )


def record(empty_since: int | None) -> RoomRecord:
    """Return a stored room that was empty since `empty_since` (None: it had members)."""
    return RoomRecord(
        room_id="r1",
        host="alice",
        encrypted_room_key=None,
        created_at=0,
        empty_since=empty_since,
        seq_reserved=0,
    )


# A scenario: "+a1" joins connection a1 ("a..." as alice, "b..." as bob), "-a1" makes it
# leave; (now, deadline) calls track(room, now) and checks the deadline it leaves.
Step = str | tuple[float, float]


def play(expiry: Expiry, steps: list[Step]) -> None:
    """Apply `steps` to a new room, checking the deadline after each track."""
    room = new_room()
    for i, step in enumerate(steps):
        if isinstance(step, tuple):
            now, deadline = step
            expiry.track(room, now)
            assert expiry.deadline == deadline, (i, step)
        elif step[0] == "+":
            room.join(step[1:], "alice" if step[1] == "a" else "bob", None, now_ms=0)
        else:
            assert step[0] == "-"
            room.leave(step[1:], now_ms=0)


@pytest.mark.parametrize(
    "steps",
    [
        pytest.param([(5.0, 105.0)], id="a-new-empty-room-counts-down-from-now"),
        pytest.param(
            [(5.0, 105.0), (50.0, 105.0), (104.9, 105.0)],
            id="no-restart-while-still-empty",
        ),
        pytest.param(
            [(5.0, 105.0), "+a1", (10.0, INF)],
            id="a-join-stops-the-countdown",
        ),
        pytest.param(
            ["+a1", (10.0, INF), (500.0, INF)],
            id="occupied-stays-infinite",
        ),
        pytest.param(
            [(5.0, 105.0), "+a1", (10.0, INF), "-a1", (60.0, 160.0), (90.0, 160.0)],
            id="a-new-empty-period-restarts-from-zero",
        ),
        pytest.param(
            ["+a1", "+a2", (1.0, INF), "-a1", (2.0, INF), "-a2", (3.0, 103.0)],
            id="empty-only-when-the-last-connection-goes",
        ),
        pytest.param(
            [
                "+a1",
                "+b1",
                "-a1",
                (4.0, INF),
                "-b1",
                (7.0, 107.0),
                "+b2",
                (8.0, INF),
                "-b2",
                (200.0, 300.0),
            ],
            id="several-members-and-periods",
        ),
    ],
)
def test_track_counts_down_only_while_the_room_is_empty(steps: list[Step]) -> None:
    """track starts room_ttl when the room empties, keeps it while empty, stops it on a join."""
    play(Expiry(TTL), steps)


@pytest.mark.parametrize("deadline", [42.0, 1.0])
def test_a_restored_countdown_is_not_restarted_while_empty(deadline: float) -> None:
    """An Expiry given a deadline (a restored room) keeps it while the room stays empty."""
    expiry = Expiry(TTL, deadline)
    expiry.track(new_room(), 10.0)
    assert expiry.deadline == deadline


def test_a_new_expiry_has_no_deadline() -> None:
    """Before any track, an Expiry has no deadline (+inf)."""
    assert Expiry(TTL).deadline == INF


@pytest.mark.parametrize(
    ("empty_since", "now_ms", "alive_ms", "expected"),
    [
        (None, 5_000, None, 5_000),  # had members, no alive mark: empty since this start
        (None, 0, None, 0),
        (None, 5_000, 3_000, 3_000),  # had members: empty since roomd was last known alive
        (None, 5_000, 0, 0),  # 0 is a time, not "no mark"
        (None, 5_000, 9_000, 5_000),  # a mark from the future (clock went back): now
        (1_000, 5_000, 3_000, 1_000),  # was already empty: keep counting from then
        (1_000, 5_000, None, 1_000),
        (0, 5_000, None, 0),  # 0 is a time, not "no time"
        (9_000, 5_000, None, 9_000),  # a clock that went back: the stored value stands
    ],
)
def test_a_restored_room_is_empty_since_the_stored_time_or_the_last_alive_mark(
    empty_since: int | None, now_ms: int, alive_ms: int | None, expected: int
) -> None:
    """The stored emptySince, else the last alive mark, else now (rooms with members)."""
    assert restored_empty_since(record(empty_since), now_ms, alive_ms) == expected


@pytest.mark.parametrize(
    ("ttl", "interval"), [(86_400.0, 60.0), (600.0, 60.0), (300.0, 30.0), (1.0, 0.1)]
)
def test_roomd_marks_itself_alive_every_minute_or_a_tenth_of_a_short_ttl(
    ttl: float, interval: float
) -> None:
    """The mark's interval bounds how early a room with members at a crash may expire."""
    assert alive_mark_interval(ttl) == pytest.approx(interval)


@pytest.mark.parametrize(
    ("empty_since", "ttl_ms", "now_ms", "remaining"),
    [
        (1_000, 10_000.0, 1_000, 10_000),  # just emptied: the whole ttl
        (1_000, 10_000.0, 4_000, 7_000),
        (1_000, 10_000.0, 10_999, 1),
        (1_000, 10_000.0, 11_000, 0),  # exactly ttl: expired
        (1_000, 10_000.0, 50_000, -39_000),  # expired long ago
        (0, 86_400_000.0, 3_600_000, 82_800_000),  # the default 24 h, one hour in
    ],
)
def test_remaining_ttl_is_what_is_left_of_the_countdown(
    empty_since: int, ttl_ms: float, now_ms: int, remaining: float
) -> None:
    """remaining_ttl_ms is emptySince + ttl - now; <= 0 means the room has expired."""
    assert remaining_ttl_ms(empty_since, ttl_ms, now_ms) == remaining


@pytest.mark.parametrize(
    ("empty_since", "now_ms", "expired"),
    [(None, 1_000_000, False), (1_000, 100_999, False), (1_000, 101_000, True), (0, 10**9, True)],
)
def test_a_restart_expires_a_stored_room_only_past_its_ttl(
    empty_since: int | None, now_ms: int, expired: bool
) -> None:
    """Restore: a room with members at the stop gets a whole ttl; an empty one what was left."""
    since = restored_empty_since(record(empty_since), now_ms, None)
    assert (remaining_ttl_ms(since, TTL * 1000, now_ms) <= 0) is expired
