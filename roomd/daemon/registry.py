"""The live rooms of one process: creating, restoring and running their loops.

Each live room is one task in the rooms nursery, its `RoomLoop`. Connections
and the event bus reach a room only through `RoomHandle.inbox_send`; a sender
that finds the inbox closed (`trio.BrokenResourceError`) raced with the room's
end and answers its client as if the room never existed. On a clean stop each
room saves its exact last `seq`, so a graceful restart numbers on without a gap.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

import attrs
import trio

from roomd.config import Config
from roomd.core.expiry import Expiry, remaining_ttl_ms, restored_empty_since
from roomd.core.quota import RoomQuota
from roomd.core.room import Room, room_tag
from roomd.core.stats import Stats
from roomd.daemon.room_loop import Command, RoomLoop
from roomd.store import RoomStore

log = logging.getLogger("roomd.registry")

INBOX_SIZE = 256
# A clean stop saves each room's last seq; bound how long one room's save may take.
SETTLE_TIMEOUT = 5.0


def new_room_id() -> str:
    """Return a fresh unguessable room id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


@attrs.define(eq=False)
class RoomHandle:
    """How the rest of roomd reaches one live room (and reads it, for the API)."""

    room: Room
    inbox_send: trio.MemorySendChannel[Command]
    ended: trio.Event = attrs.field(factory=trio.Event)

    @property
    def room_id(self) -> str:
        """The id of the room."""
        return self.room.room_id


@attrs.define(eq=False)
class RoomRegistry:
    """The live rooms of this process, each run as a task in `nursery`."""

    config: Config
    nursery: trio.Nursery
    store: RoomStore
    stats: Stats
    wall_ms: Callable[[], int]
    quota: RoomQuota
    rooms: dict[str, RoomHandle] = attrs.field(factory=dict)

    def get(self, room_id: str) -> RoomHandle | None:
        """Return the live room `room_id`, or None."""
        return self.rooms.get(room_id)

    async def create(
        self,
        *,
        host: str | None,
        encrypted_room_key: bytes | None,
        room_id: str | None = None,
        by_api: bool = False,
    ) -> RoomHandle | None:
        """Store and start a new, empty room; None when `room_id` is taken.

        The room exists (durably) once this returns; its creator joins next.
        Raises `ProtocolError(tooManyRooms)` past `max_rooms`, or, unless
        `by_api`, past `max_rooms_per_aid` rooms hosted by `host`.
        """
        room_id = room_id or new_room_id()
        if room_id in self.rooms:
            return None
        # Reserved before the store is awaited: two creations racing cannot both fit.
        self.quota.reserve(host, per_aid=not by_api)
        try:
            handle = await self._create(room_id, host, encrypted_room_key)
        except BaseException:
            self.quota.release(host)
            raise
        if handle is None:
            self.quota.release(host)
        return handle

    async def _create(
        self, room_id: str, host: str | None, encrypted_room_key: bytes | None
    ) -> RoomHandle | None:
        room = Room.new(
            room_id,
            host=host,
            encrypted_room_key=encrypted_room_key,
            now_ms=self.wall_ms(),
            max_members=self.config.max_members,
            message_id_prefix=secrets.token_urlsafe(16),
        )
        if not await self.store.insert(room.to_record()) or room_id in self.rooms:
            return None
        log.info("room %s created", room_tag(room_id))
        return self._start(room, trio.current_time() + self.config.room_ttl)

    async def restore(self) -> tuple[int, int]:
        """Start every stored room; delete those whose expiry passed while roomd was down.

        Returns (rooms restored, rooms expired).
        """
        now = self.wall_ms()
        ttl_ms = self.config.room_ttl * 1000
        restored = expired = 0
        last_alive = await self.store.last_alive()
        for record in await self.store.load():
            empty_since = restored_empty_since(record, now, last_alive)
            remaining_ms = remaining_ttl_ms(empty_since, ttl_ms, now)
            if remaining_ms <= 0:
                await self.store.delete(record.room_id)
                expired += 1
                continue
            room = Room.from_record(
                record,
                empty_since=empty_since,
                max_members=self.config.max_members,
                message_id_prefix=secrets.token_urlsafe(16),
            )
            if record.empty_since is None:
                await self.store.save(room.to_record())
            self.quota.reserve(room.host, per_aid=False)
            self._start(room, trio.current_time() + remaining_ms / 1000)
            restored += 1
        return restored, expired

    def _start(self, room: Room, expiry_deadline: float) -> RoomHandle:
        inbox_send, inbox_recv = trio.open_memory_channel[Command](INBOX_SIZE)
        handle = self.rooms[room.room_id] = RoomHandle(room, inbox_send)
        expiry = Expiry(self.config.room_ttl, expiry_deadline)
        loop = RoomLoop(room, self.store, self.stats, self.wall_ms, expiry, self.quota)
        self.nursery.start_soon(self._run_room, loop, handle, inbox_recv, name="room loop")
        return handle

    async def _run_room(
        self,
        loop: RoomLoop,
        handle: RoomHandle,
        inbox_recv: trio.MemoryReceiveChannel[Command],
    ) -> None:
        room = loop.room
        try:
            await loop.run(inbox_recv)
        finally:
            # No checkpoint from here to close(): nothing can be queued unanswered.
            del self.rooms[room.room_id]
            loop.answer_leftovers(inbox_recv)
            inbox_recv.close()
            handle.ended.set()
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT):
                if room.deleted is None:
                    room.settle_seq()
                    await self.store.save(room.to_record())
        if room.deleted is None:
            log.debug("room %s stopped", room_tag(room.room_id))
        else:
            self.quota.release(loop.counted_host)
            log.info("room %s deleted (%s)", room_tag(room.room_id), room.deleted)
