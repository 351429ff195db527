"""One connection as the rest of roomd sees it: who it is and how to reach it.

A `Session` is created when a handshake is accepted and lives until the
connection's task ends. Room loops deliver to it through its outbox, which never
blocks: a full outbound queue means a slow consumer, and the session is closed
with 4003 rather than making the room wait. Who writes what: the connection's
reader sets `aid` and counts a join into `joining`; the room loop that applies
the join counts it out and sets `rooms` (through the `Attached`/`Detached`
effects); whoever closes first sets `close_code`.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import attrs
import trio

from roomd.codec import Codec
from roomd.errors import CloseCode
from roomd.frame import build_frame
from roomd.outbox import Outbox

log = logging.getLogger("roomd.session")


@attrs.define(eq=False, slots=True)
class Session:
    """The state of one accepted connection that other tasks may touch."""

    conn_id: int
    codec: Codec
    outbox: Outbox
    reader_scope: trio.CancelScope
    aid: str | None = None
    rooms: set[str] = attrs.field(factory=set)
    # Joins sent to a room and not yet applied there, per room (a multiset: a client
    # may pipeline join, leave, join).
    joining: Counter[str] = attrs.field(factory=Counter)
    close_code: int | None = None

    def frame(self, event: dict[str, Any]) -> bytes:
        """Return the WebSocket frame of `event` in this session's codec."""
        return build_frame(self.codec.encode(event), text=self.codec.text)

    def deliver(self, frame: bytes) -> None:
        """Queue one frame for the socket; never blocks (a full queue closes 4003)."""
        self.outbox.put(frame)

    def overflowed(self) -> None:
        """Close as a slow consumer: the outbound queue is full."""
        log.info("conn %d slow consumer: outbound queue full", self.conn_id)
        self.close(CloseCode.SLOW_CONSUMER)

    def send(self, event: dict[str, Any]) -> None:
        """Encode `event` for this session alone and queue it."""
        self.deliver(self.frame(event))

    def close(self, code: int) -> None:
        """Start closing with `code` (the first code wins); never blocks.

        After this, nothing more is queued; the outbox finishes (or drops) what
        it holds, the connection task sends the close frame and leaves every room.
        """
        if self.close_code is not None:
            return
        self.close_code = code
        # A clean close (ours on shutdown, or the peer's 1000/1001) lets queued frames
        # go out first; a close for cause drops them: they are not worth the wait.
        self.outbox.stop(drain=code in (CloseCode.NORMAL, CloseCode.GOING_AWAY))
        self.reader_scope.cancel()

    @property
    def member_of(self) -> set[str]:
        """Rooms this session is in or has asked to join."""
        return self.rooms | self.joining.keys()

    def join_pending(self, room_id: str) -> None:
        """Record a join on its way to `room_id` (so a close tells that room too)."""
        self.joining[room_id] += 1

    def join_settled(self, room_id: str) -> None:
        """Record that `room_id` has applied (or refused) one pending join."""
        left = self.joining[room_id] - 1
        if left > 0:
            self.joining[room_id] = left
        else:
            del self.joining[room_id]


def fan_out(sessions: Any, event: dict[str, Any]) -> None:
    """Deliver `event` to every session, encoding it once per codec."""
    frames: dict[Codec, bytes] = {}
    for session in sessions:
        frame = frames.get(session.codec)
        if frame is None:
            frame = frames[session.codec] = session.frame(event)
        session.outbox.put(frame)
