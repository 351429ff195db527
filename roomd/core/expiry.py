"""Expiry of empty rooms: when a room that nobody is in gets deleted.

A room is deleted `room_ttl` after it became empty (PROTOCOL.md section 5,
`roomDeleted expired`); a join stops the countdown, and the next time the room
empties it starts again from zero. Across a restart the countdown goes on from
the stored `emptySince`.
"""

from __future__ import annotations

import math

import attrs

from roomd.core.room import Room, RoomRecord

# How often roomd marks itself alive in the store (seconds), at the most.
ALIVE_EVERY = 60.0


@attrs.define(slots=True)
class Expiry:
    """When an empty room is deleted: `room_ttl` after it became empty (monotonic seconds).

    The room loop waits for its next command no longer than `deadline`, and
    calls `track` after every command it applied.
    """

    room_ttl: float
    # +inf while the room has members.
    deadline: float = math.inf

    def track(self, room: Room, now: float) -> None:
        """Start the countdown when `room` has just become empty; stop it when it is not."""
        if not room.is_empty:
            self.deadline = math.inf
        elif self.deadline == math.inf:
            self.deadline = now + self.room_ttl


def restored_empty_since(record: RoomRecord, now_ms: int, last_alive_ms: int | None) -> int:
    """Return since when a stored room counts as empty at a start at `now_ms`.

    A room that had members when roomd stopped (or died) counts as empty from
    the last moment roomd was known alive (`last_alive_ms`, its periodic mark):
    its members were gone from then on at the latest. Without a mark (a data
    dir from before marks existed) it counts as empty since the start.
    """
    if record.empty_since is not None:
        return record.empty_since
    return now_ms if last_alive_ms is None else min(last_alive_ms, now_ms)


def alive_mark_interval(room_ttl: float) -> float:
    """Return how often (seconds) roomd marks itself alive for a `room_ttl`.

    Once a minute, or a tenth of a shorter ttl: a room with members at a crash
    is judged empty from a mark at most this old, so it may expire that much
    early, never late.
    """
    return min(ALIVE_EVERY, room_ttl / 10)


def remaining_ttl_ms(empty_since: int, room_ttl_ms: float, now_ms: int) -> float:
    """Return how long a room empty since `empty_since` has left to live (<= 0: expired)."""
    return empty_since + room_ttl_ms - now_ms
