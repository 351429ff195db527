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

from roomd.core.admission import Admission
from roomd.core.room import Room
from roomd.core.stats import LiveCounts
from roomd.daemon.bus import Delete, EventBus, Kick
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

    def room_ids(self) -> list[str]:
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

    async def kick(self, room_id: str, aid: str) -> None:
        """Remove every connection of `aid` from a room, through the bus."""
        await self.bus.publish(Kick(room_id, aid))
