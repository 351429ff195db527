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


def restored_empty_since(record: RoomRecord, now_ms: int) -> int:
    """Return since when a stored room counts as empty at a start at `now_ms`.

    A room that had members when roomd stopped counts as empty since the start:
    its members were disconnected then, not earlier.
    """
    return now_ms if record.empty_since is None else record.empty_since


def remaining_ttl_ms(empty_since: int, room_ttl_ms: float, now_ms: int) -> float:
    """Return how long a room empty since `empty_since` has left to live (<= 0: expired)."""
    return empty_since + room_ttl_ms - now_ms
