"""What the server API may do to this node's rooms (the API's `RoomService`).

Reads are direct: the API runs on the same trio loop, so it sees a live room's
state as it is; a dormant room is read back from the store. Changes go where a
client's would: creation through the registry, deletions and kicks through the
event bus into the room's loop, so they are ordered with everything else the
room does.
"""

from __future__ import annotations

import attrs
import trio

from roomd.core import message as m
from roomd.core.admission import Admission
from roomd.core.event import Event
from roomd.core.room import Room
from roomd.core.stats import LiveCounts
from roomd.daemon.bus import Delete, EventBus, Kick, Unban
from roomd.daemon.registry import RoomRegistry
from roomd.daemon.session import Sessions

# How long a deletion waits for the room to be gone before answering.
DELETE_WAIT = 5.0


@attrs.define(eq=False)
class RoomControl:
    """This node's rooms as the server API sees them."""

    registry: RoomRegistry
    bus: EventBus
    admission: Admission
    sessions: Sessions

    @property
    def draining(self) -> bool:
        """True once shutdown began: the node takes no new connections."""
        return self.admission.draining

    async def room(self, room_id: str) -> Room | None:
        """Return the room `room_id` (live, or dormant as stored), or None."""
        return await self.registry.read(room_id)

    async def room_ids(self) -> list[str]:
        """Return the ids of every room, sorted."""
        return self.registry.room_ids()

    def live_counts(self) -> LiveCounts:
        """Return how many connections, rooms and members there are now."""
        members = sum(len(handle.room.members) for handle in self.registry.live.values())
        return LiveCounts(len(self.sessions.open), len(self.registry), members)

    async def create_room(
        self, *, room_id: str | None, host: str | None, encrypted_room_key: bytes | None
    ) -> Room | None:
        """Create an empty room; None when `room_id` is taken."""
        return await self.registry.create(
            room_id=room_id, host=host, encrypted_room_key=encrypted_room_key, by_api=True
        )

    async def delete_room(self, room_id: str) -> None:
        """Delete a room through the bus and wait (bounded) until it is gone here."""
        await self.bus.publish(Delete(room_id))
        with trio.move_on_after(DELETE_WAIT):
            await self.registry.wait_deleted(room_id)

    async def kick(self, room_id: str, aid: str, *, ban: bool = False) -> None:
        """Remove every connection of `aid` from a room (banning it with `ban`), through the bus."""
        await self.bus.publish(Kick(room_id, aid, ban))

    async def unban(self, room_id: str, aid: str) -> None:
        """Let a banned `aid` join the room again, through the bus."""
        await self.bus.publish(Unban(room_id, aid))

    async def history(self, room_id: str, before: int | None, limit: int) -> Event | None:
        """Return the `history` page of room `room_id` (PROTOCOL.md 8.3), or None if no room."""
        room = await self.registry.read(room_id)
        if room is None:
            return None
        page = m.GetHistory(room_id=room_id, before=before, limit=limit)
        if not room.history.on:
            return room.history_page(page, [])
        store, oldest = self.registry.store, room.history.oldest_ts(self.registry.wall_ms())
        first_after = room.seq + 1 if before is None else before
        newest = await store.messages_before(room_id, first_after, limit + 1, oldest)
        return room.history_page(page, newest)
