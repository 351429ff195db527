"""Room events through Redis: numbered, stored (messages) and published in one atomic step.

`RoomEvents.publish` is how a node tells the cluster that something happened
in a room. Redis numbers the event (every event: guarantee 10's gap
detection), gives a message its `seq` (one contiguous order however many
nodes send: guarantee 1), appends it to the room's stream (history), and
publishes it to the room's channel, all in the `roomd_event` function
(functions.py), so no lock between nodes is needed. Each call carries an
operation id and a deadline: Redis refuses it once the deadline has passed on
its own clock, and answers a repeated id with the first reply (guarantee 8).
"""

from __future__ import annotations

import attrs
import coredis

from roomd.cluster.functions import EVENT_FUNCTION, LIBRARY


def room_key(room_id: str) -> str:
    """Return the key of room `room_id`'s counters (also its channel)."""
    return f"roomd:{{{room_id}}}"


def stream_key(room_id: str) -> str:
    """Return the key of room `room_id`'s message stream."""
    return f"roomd:{{{room_id}}}:stream"


def op_key(room_id: str, op_id: str) -> str:
    """Return the key under which Redis keeps the reply to operation `op_id`."""
    return f"roomd:{{{room_id}}}:op:{op_id}"


@attrs.frozen
class Published:
    """An event Redis took: its number in the room, and its `seq` (0 unless a message)."""

    event: int
    seq: int


@attrs.frozen
class Late:
    """Redis's clock had passed the operation's deadline: nothing was applied."""


@attrs.define(eq=False)
class RoomEvents:
    """Publishes room events through one Redis instance's `roomd` functions."""

    redis: coredis.Redis[bytes]

    async def load(self) -> None:
        """Load (or replace) the `roomd` function library; the same text on every node."""
        await self.redis.function_load(LIBRARY, replace=True)

    async def publish(
        self,
        room_id: str,
        op_id: str,
        *,
        deadline_ms: int,
        history_size: int,
        kind: str,
        payload: bytes,
    ) -> Published | Late:
        """Number, store (a `message`) and publish one event of `room_id`, once.

        Asking again with the same `op_id` returns the first answer and changes
        nothing; past `deadline_ms` (Redis's clock, Unix ms) nothing is applied.
        """
        keys = [room_key(room_id), stream_key(room_id), op_key(room_id, op_id)]
        args: list[str | bytes | int] = [deadline_ms, history_size, kind, payload]
        reply = await self.redis.fcall(EVENT_FUNCTION, keys=keys, args=args)
        assert isinstance(reply, list)
        if reply[0] == b"late":
            return Late()
        return Published(int(reply[1]), int(reply[2]))
