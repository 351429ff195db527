"""A room store in a dict: fast, in-process, forgotten at exit."""

from __future__ import annotations

import heapq

import attrs
import trio

from roomd.core.room import RoomRecord
from roomd.store import LOAD_PAGE


@attrs.define
class MemoryRoomStore:
    """A store in a dict: fast, in-process, forgotten at exit."""

    records: dict[str, RoomRecord] = attrs.field(factory=dict)
    alive_ms: int | None = None

    async def load(self, after: str = "", limit: int = LOAD_PAGE) -> list[RoomRecord]:
        """Return up to `limit` stored rooms whose ids sort after `after`, in id order."""
        await trio.lowlevel.checkpoint()
        ids = heapq.nsmallest(limit, (room_id for room_id in self.records if room_id > after))
        return [self.records[room_id] for room_id in ids]

    async def get(self, room_id: str) -> RoomRecord | None:
        """Return the stored room `room_id`, or None when there is none."""
        await trio.lowlevel.checkpoint()
        return self.records.get(room_id)

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        await trio.lowlevel.checkpoint()
        if record.room_id in self.records:
            return False
        self.records[record.room_id] = record
        return True

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of a room; durable on return."""
        await trio.lowlevel.checkpoint()
        self.records[record.room_id] = record

    async def delete(self, room_id: str) -> None:
        """Forget a room (no error when it is unknown)."""
        await trio.lowlevel.checkpoint()
        self.records.pop(room_id, None)

    async def mark_alive(self, now_ms: int) -> None:
        """Record that roomd was running at `now_ms`."""
        await trio.lowlevel.checkpoint()
        self.alive_ms = now_ms

    async def last_alive(self) -> int | None:
        """Return the last `mark_alive` time, or None."""
        await trio.lowlevel.checkpoint()
        return self.alive_ms

    async def aclose(self) -> None:
        """Release the store's resources."""
        await trio.lowlevel.checkpoint()
