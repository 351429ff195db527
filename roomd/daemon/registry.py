"""The rooms of one process: live ones with a loop, dormant ones with a deadline.

A room with members is *live*: one task in the rooms nursery, its `RoomLoop`,
reached only through `RoomHandle.inbox_send`. A room that nobody is in is
*dormant*: it costs one entry in `dormant` (its expiry deadline) and one in the
expiry heap, and lives in the store. One timer for the whole process, a cancel
scope whose deadline is the earliest expiry (`run_expiry`), deletes dormant
rooms on time. A join wakes a dormant room: its record is read back and its
loop starts again, with the same deadline, so expiry is as if it never slept.

A live room's loop ends once the room is empty and its inbox is too; the
room is dormant from the same scheduler turn, so a room is never missing in
between. A sender that finds an inbox closed (`trio.BrokenResourceError`)
raced with that end and looks the room up again. On a clean stop each live room
saves its exact last `seq`, so a graceful restart numbers on without a gap.
"""

from __future__ import annotations

import heapq
import logging
import math
import secrets
from collections.abc import AsyncIterator, Callable

import attrs
import trio

from roomd.config import Config
from roomd.core.expiry import Expiry, remaining_ttl_ms, restored_empty_since
from roomd.core.quota import RoomQuota
from roomd.core.room import Room, RoomRecord, room_tag
from roomd.core.stats import Stats
from roomd.daemon.room_loop import Command, RoomLoop
from roomd.daemon.writer import StoreWriter
from roomd.store import RoomStore

log = logging.getLogger("roomd.registry")

INBOX_SIZE = 256
# A clean stop saves each room's last seq; bound how long one room's save may take.
SETTLE_TIMEOUT = 5.0
# The expiry heap keeps stale entries (rooms woken since) until it holds this
# many more than there are dormant rooms; then it is rebuilt.
HEAP_SLACK = 1024


def new_room_id() -> str:
    """Return a fresh unguessable room id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def new_epoch() -> str:
    """Return a fresh stream epoch: 16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


@attrs.define(eq=False)
class RoomHandle:
    """How the rest of roomd reaches one live room (and reads it, for the API)."""

    room: Room
    inbox_send: trio.MemorySendChannel[Command]
    # The room's loop: readers apply everyday messages through it while it is idle.
    loop: RoomLoop

    @property
    def room_id(self) -> str:
        """The id of the room."""
        return self.room.room_id


@attrs.define(eq=False)
class RoomRegistry:
    """Every room of this process: the live ones run as tasks in `nursery`."""

    config: Config
    nursery: trio.Nursery
    store: RoomStore
    writer: StoreWriter
    stats: Stats
    wall_ms: Callable[[], int]
    quota: RoomQuota
    live: dict[str, RoomHandle] = attrs.field(factory=dict)
    # Dormant room id -> its expiry deadline (trio time).
    dormant: dict[str, float] = attrs.field(factory=dict)
    # (deadline, room id) of dormant rooms, earliest first; entries of rooms that
    # woke since are stale and skipped.
    expiries: list[tuple[float, str]] = attrs.field(factory=list)
    # The expiry timer while it waits: its deadline is the earliest expiry.
    _timer: trio.CancelScope | None = None
    # Rooms whose record is being read back to wake them; joiners wait on the event.
    _waking: dict[str, trio.Event] = attrs.field(factory=dict)
    # Set (and replaced) each time a room is deleted here.
    _deleted: trio.Event = attrs.field(factory=trio.Event)

    def __contains__(self, room_id: object) -> bool:
        """True when `room_id` is a room of this process, live or dormant."""
        return room_id in self.live or room_id in self.dormant

    def __len__(self) -> int:
        """The number of rooms, live and dormant."""
        return len(self.live) + len(self.dormant)

    def room_ids(self) -> list[str]:
        """Return the id of every room, live and dormant, sorted."""
        return sorted([*self.live, *self.dormant])

    async def read(self, room_id: str) -> Room | None:
        """Return room `room_id` to read (a dormant one as restored from the store), or None."""
        handle = self.live.get(room_id)
        if handle is not None:
            return handle.room
        if room_id not in self.dormant:
            return None
        record = await self.store.get(room_id)
        if record is None or room_id not in self.dormant:
            return None
        return self._restored(record)

    async def wake(self, room_id: str) -> RoomHandle | None:
        """Return the live room `room_id`, starting its loop again if it is dormant.

        None when there is no such room. Concurrent callers for one dormant room
        share one wake-up.
        """
        while True:
            handle = self.live.get(room_id)
            if handle is not None:
                return handle
            if room_id not in self.dormant:
                return None
            waking = self._waking.get(room_id)
            if waking is not None:
                await waking.wait()
                continue
            waking = self._waking[room_id] = trio.Event()
            try:
                # Shielded: a joiner that gives up must not abandon the others' wake-up.
                with trio.CancelScope(shield=True):
                    record = await self.store.get(room_id)
            finally:
                del self._waking[room_id]
                waking.set()
            deadline = self.dormant.pop(room_id)
            if record is None:
                log.warning("room %s was dormant but is not in the store", room_tag(room_id))
                self._note_deleted()
                return None
            return self._start(self._restored(record), deadline)

    async def wait_deleted(self, room_id: str) -> None:
        """Return once `room_id` is no room of this process (at once if it is none)."""
        while room_id in self:  # a room being woken is still in `dormant`
            await self._deleted.wait()

    async def create(
        self,
        *,
        host: str | None,
        encrypted_room_key: bytes | None,
        room_id: str | None = None,
        by_api: bool = False,
    ) -> Room | None:
        """Store a new, empty room; None when `room_id` is taken.

        The room exists (durably) once this returns. A client's room is live, as
        its creator joins next; a room the server API creates (`by_api`) has no
        one joining and starts dormant. Raises `ProtocolError(tooManyRooms)` past
        `max_rooms`, or, unless `by_api`, past `max_rooms_per_aid` rooms hosted by
        `host`.
        """
        room_id = room_id or new_room_id()
        if room_id in self:
            return None
        # Reserved before the store is awaited: two creations racing cannot both fit.
        self.quota.reserve(host, per_aid=not by_api)
        try:
            room = await self._create(room_id, host, encrypted_room_key, live=not by_api)
        except BaseException:
            self.quota.release(host)
            raise
        if room is None:
            self.quota.release(host)
        return room

    async def _create(
        self, room_id: str, host: str | None, encrypted_room_key: bytes | None, *, live: bool
    ) -> Room | None:
        room = Room.new(
            room_id,
            host=host,
            encrypted_room_key=encrypted_room_key,
            now_ms=self.wall_ms(),
            max_members=self.config.max_members,
            message_id_prefix=secrets.token_urlsafe(16),
            epoch=new_epoch(),
            history=self.config.history_policy(),
        )
        if not await self.store.insert(room.to_record()) or room_id in self:
            return None
        log.info("room %s created", room_tag(room_id))
        deadline = trio.current_time() + self.config.room_ttl
        if live:
            self._start(room, deadline)
        else:
            self._sleep(room_id, deadline)
        return room

    async def restore(self) -> tuple[int, int]:
        """Take in every stored room, dormant; delete those that expired while roomd was down.

        Returns (rooms restored, rooms expired).
        """
        now = self.wall_ms()
        ttl_ms = self.config.room_ttl * 1000
        restored = expired = 0
        last_alive = await self.store.last_alive()
        async for record in self._stored():
            empty_since = restored_empty_since(record, now, last_alive)
            remaining_ms = remaining_ttl_ms(empty_since, ttl_ms, now)
            if remaining_ms <= 0:
                await self.store.delete(record.room_id)
                expired += 1
                continue
            epoch = record.epoch
            crashed = record.empty_since is None
            if not epoch or (crashed and not self.config.history_size):
                # Without history, members of a room that was live at a crash may
                # have seen seqs the store never had: a new epoch says so.
                epoch = new_epoch()
            if crashed or epoch != record.epoch:
                await self.store.save(attrs.evolve(record, empty_since=empty_since, epoch=epoch))
            self.quota.reserve(record.host, per_aid=False)
            self._sleep(record.room_id, trio.current_time() + remaining_ms / 1000)
            restored += 1
        return restored, expired

    async def _stored(self) -> AsyncIterator[RoomRecord]:
        page = await self.store.load()
        while page:
            for record in page:
                yield record
            page = await self.store.load(after=page[-1].room_id)

    async def run_expiry(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Delete each dormant room once its deadline passes, until cancelled."""
        task_status.started()
        while True:
            deadline = self.expiries[0][0] if self.expiries else math.inf
            with trio.CancelScope(deadline=deadline) as self._timer:
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while self.expiries and self.expiries[0][0] <= now:
                deadline, room_id = heapq.heappop(self.expiries)
                # A room being woken is skipped: if nobody joins, it sleeps again
                # with this same deadline, and that entry deletes it.
                if self.dormant.get(room_id) == deadline and room_id not in self._waking:
                    await self._expire(room_id)

    async def _expire(self, room_id: str) -> None:
        del self.dormant[room_id]
        with trio.CancelScope(shield=True):
            record = await self.store.get(room_id)
            await self.store.delete(room_id)
        if record is not None:
            self.quota.release(record.host)
        log.info("room %s deleted (expired)", room_tag(room_id))
        self._note_deleted()

    def _restored(self, record: RoomRecord) -> Room:
        empty_since = self.wall_ms() if record.empty_since is None else record.empty_since
        return Room.from_record(
            record,
            empty_since=empty_since,
            max_members=self.config.max_members,
            message_id_prefix=secrets.token_urlsafe(16),
            history=self.config.history_policy(),
        )

    def _sleep(self, room_id: str, deadline: float) -> None:
        """Make `room_id` dormant until `deadline` (no checkpoint: it is never missing)."""
        self.dormant[room_id] = deadline
        heapq.heappush(self.expiries, (deadline, room_id))
        if len(self.expiries) > 2 * len(self.dormant) + HEAP_SLACK:
            self.expiries = [(when, rid) for rid, when in self.dormant.items()]
            heapq.heapify(self.expiries)
        if self._timer is not None and deadline < self._timer.deadline:
            self._timer.deadline = deadline

    def _note_deleted(self) -> None:
        deleted, self._deleted = self._deleted, trio.Event()
        deleted.set()

    def _start(self, room: Room, expiry_deadline: float) -> RoomHandle:
        inbox_send, inbox_recv = trio.open_memory_channel[Command](INBOX_SIZE)
        expiry = Expiry(self.config.room_ttl, expiry_deadline)
        loop = RoomLoop(
            room, self.store, self.writer, self.stats, self.wall_ms, expiry, self.quota, inbox_send
        )
        handle = self.live[room.room_id] = RoomHandle(room, inbox_send, loop)
        self.nursery.start_soon(self._run_room, loop, inbox_recv, name="room loop")
        return handle

    async def _run_room(
        self, loop: RoomLoop, inbox_recv: trio.MemoryReceiveChannel[Command]
    ) -> None:
        room = loop.room
        idle = False
        try:
            await loop.run(inbox_recv)
            idle = room.deleted is None
        finally:
            # No checkpoint from here to close(): nothing can be queued unanswered,
            # and a room that goes dormant is never missing from the registry.
            del self.live[room.room_id]
            if idle:
                self._sleep(room.room_id, loop.expiry.deadline)
            loop.answer_leftovers(inbox_recv)
            inbox_recv.close()
            if not idle and room.deleted is None:
                # Stopped by the shutdown: save the exact last seq.
                with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT):
                    room.settle_seq()
                    await self.store.save(room.to_record())
        if room.deleted is not None:
            self.quota.release(loop.counted_host)
            log.info("room %s deleted (%s)", room_tag(room.room_id), room.deleted)
            self._note_deleted()
        elif idle:
            log.debug("room %s dormant", room_tag(room.room_id))
        else:
            log.debug("room %s stopped", room_tag(room.room_id))
