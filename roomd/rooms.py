"""The trio shell around `Room`: the registry of live rooms and one loop per room.

Each room runs one task, its room loop: it takes commands from the room's inbox
(a bounded memory channel), applies them to the `Room` and carries out the
effects in order, so all of a room's state changes happen in that task. The
loop waits for each command inside an `expiry_scope` whose deadline is
`expires_at`: `room_ttl` after the room became empty, +inf while it has members.
When it fires, the room is deleted with reason `expired`. A fresh scope per wait
means a deadline can only fire while the loop is idle, never halfway through
applying a command.

Durability: when a command changes what the store keeps (host, key, emptiness,
the `seq` reservation), the loop saves the room *before* anyone is told, so a
crash can lose an unsent event but never resend a `seq`. On a clean stop each
room saves its exact last `seq`, so a graceful restart numbers on without a gap.

Connections talk to a room only through `RoomHandle.inbox_send`. A sender that
finds the inbox closed (`trio.BrokenResourceError`) raced with the room's end and
answers its client as if the room never existed.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable

import attrs
import trio

from roomd import message as m
from roomd.config import Config
from roomd.errors import ErrorCode, ProtocolError
from roomd.room import Attached, Deleted, Deliver, Detached, Effect, Room
from roomd.session import Session, fan_out
from roomd.stats import Stats
from roomd.store import RoomStore

log = logging.getLogger("roomd.rooms")

INBOX_SIZE = 256
# A clean stop saves each room's last seq; bound how long one room's save may take.
SETTLE_TIMEOUT = 5.0


@attrs.frozen
class Join:
    """`session`, authenticated as `aid`, asks to join."""

    session: Session
    aid: str
    public_key: bytes | None
    request_id: m.RequestId | None


@attrs.frozen
class Act:
    """`session` sends a room message (anything but a join)."""

    session: Session
    msg: m.RoomMessage


@attrs.frozen
class Disconnect:
    """`session` closed; `reason` is `disconnected` or `timeout`."""

    session: Session
    reason: str


@attrs.frozen
class Evict:
    """Remove every connection of `aid`, as the host's `kick` does (server API)."""

    aid: str


@attrs.frozen
class Remove:
    """Delete the room; members get `roomDeleted {reason}` (server API)."""

    reason: str


Command = Join | Act | Disconnect | Evict | Remove


def new_room_id() -> str:
    """Return a fresh unguessable room id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


def room_tag(room_id: str) -> str:
    """Return a short, loggable name for a room: its id is the key to join it."""
    return room_id[:6] + "…" if len(room_id) > 6 else room_id


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
    rooms: dict[str, RoomHandle] = attrs.field(factory=dict)

    def get(self, room_id: str) -> RoomHandle | None:
        """Return the live room `room_id`, or None."""
        return self.rooms.get(room_id)

    async def create(
        self, *, host: str | None, encrypted_room_key: bytes | None, room_id: str | None = None
    ) -> RoomHandle | None:
        """Store and start a new, empty room; None when `room_id` is taken.

        The room exists (durably) once this returns; its creator joins next.
        """
        room_id = room_id or new_room_id()
        if room_id in self.rooms:
            return None
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

        Returns (rooms restored, rooms expired). A room that had members when
        roomd stopped counts as empty since now.
        """
        now = self.wall_ms()
        ttl_ms = self.config.room_ttl * 1000
        restored = expired = 0
        for record in await self.store.load():
            empty_since = now if record.empty_since is None else record.empty_since
            remaining_ms = empty_since + ttl_ms - now
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
            self._start(room, trio.current_time() + remaining_ms / 1000)
            restored += 1
        return restored, expired

    def _start(self, room: Room, expiry_deadline: float) -> RoomHandle:
        inbox_send, inbox_recv = trio.open_memory_channel[Command](INBOX_SIZE)
        handle = self.rooms[room.room_id] = RoomHandle(room, inbox_send)
        loop = RoomLoop(room, self)
        self.nursery.start_soon(
            self._run_room, loop, handle, inbox_recv, expiry_deadline, name="room loop"
        )
        return handle

    async def _run_room(
        self,
        loop: RoomLoop,
        handle: RoomHandle,
        inbox_recv: trio.MemoryReceiveChannel[Command],
        expiry_deadline: float,
    ) -> None:
        room = loop.room
        try:
            await loop.run(inbox_recv, expiry_deadline)
        finally:
            # No checkpoint from here to close(): nothing can be queued unanswered.
            del self.rooms[room.room_id]
            loop.answer_leftovers(inbox_recv)
            inbox_recv.close()
            handle.ended.set()
            with trio.CancelScope(shield=True), trio.move_on_after(SETTLE_TIMEOUT):
                if loop.deleted_reason is None:
                    room.settle_seq()
                    await self.store.save(room.to_record())
        if loop.deleted_reason is None:
            log.debug("room %s stopped", room_tag(room.room_id))
        else:
            log.info("room %s deleted (%s)", room_tag(room.room_id), loop.deleted_reason)


@attrs.define(eq=False)
class RoomLoop:
    """Applies one room's commands in order and carries out their effects."""

    room: Room
    registry: RoomRegistry
    deleted_reason: str | None = None
    # When the room expires (trio's clock); +inf while it has members.
    expires_at: float = math.inf
    # What the store holds of the room, to know when a command changed it.
    _saved: tuple[object, ...] = attrs.field(init=False)

    @_saved.default
    def _initially_saved(self) -> tuple[object, ...]:
        return self.room.durable_state()

    async def run(self, inbox_recv: trio.MemoryReceiveChannel[Command], deadline: float) -> None:
        """Serve commands until the room is deleted or its expiry deadline passes."""
        self.expires_at = deadline
        while True:
            # A fresh scope per wait: a deadline that passes while a command is being
            # applied (a slow store) must not cancel the room after a join saved it.
            with trio.move_on_at(self.expires_at) as expiry_scope:
                command = await inbox_recv.receive()
            if expiry_scope.cancelled_caught:
                with trio.CancelScope(shield=True):
                    await self.commit(self.room.delete("expired"))
                return
            # Apply everything already queued before yielding: one task switch per
            # burst, not per command. Shielded: a command is applied whole or not at all.
            with trio.CancelScope(shield=True):
                while True:
                    await self.apply(command)
                    if self.deleted_reason is not None:
                        return
                    self._track_expiry()
                    try:
                        command = inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break

    def _track_expiry(self) -> None:
        """Start the countdown when the room has just become empty; stop it on a join."""
        if not self.room.is_empty:
            self.expires_at = math.inf
        elif self.expires_at == math.inf:
            self.expires_at = trio.current_time() + self.registry.config.room_ttl

    async def apply(self, command: Command) -> None:
        """Apply one command; a refused one is answered with `error` and changes nothing."""
        room = self.room
        now = self.registry.wall_ms()
        try:
            match command:
                case Join(session, aid, public_key, request_id):
                    session.join_settled(room.room_id)
                    if session.close_code is not None:
                        return  # closed meanwhile: it may already have said its leaves
                    effects = room.join(session, aid, public_key, now, request_id)
                case Act(session, msg):
                    effects = room.handle(session, msg, now)
                case Disconnect(session, reason):
                    effects = room.disconnect(session, reason, now)
                case Evict(aid):
                    effects = room.remove_aid(aid, now)
                case Remove(reason):
                    effects = room.delete(reason)
        except ProtocolError as exc:
            self.refuse(command, exc)
            return
        await self.commit(effects)

    async def commit(self, effects: list[Effect]) -> None:
        """Make the room's new state durable when it must be, then carry out `effects`."""
        store = self.registry.store
        if any(isinstance(effect, Deleted) for effect in effects):
            await store.delete(self.room.room_id)
        elif self.room.durable_state() != self._saved:
            await store.save(self.room.to_record())
        self._saved = self.room.durable_state()
        self.perform(effects)

    def refuse(self, command: Command, exc: ProtocolError) -> None:
        """Answer `command` with the error `exc` (server commands have no one to answer)."""
        if isinstance(command, Join):
            session, request_id = command.session, command.request_id
        elif isinstance(command, Act):
            session, request_id = command.session, command.msg.id
        else:
            kind = type(command).__name__  # not the command: it would show room ids in full
            log.debug("room %s: %s refused: %s", room_tag(self.room.room_id), kind, exc.code)
            return
        event = exc.to_wire()
        event["roomId"] = self.room.room_id
        if request_id is not None:
            event["id"] = request_id
        session.send(event)

    def perform(self, effects: list[Effect]) -> None:
        """Carry out the effects of one room method, in order."""
        room_id = self.room.room_id
        stats = self.registry.stats
        for effect in effects:
            match effect:
                case Deliver(to, event):
                    fan_out(to, event)
                    stats.deliveries_out += len(to)
                case Attached(session):
                    assert isinstance(session, Session)
                    session.rooms.add(room_id)
                case Detached(session):
                    assert isinstance(session, Session)
                    session.rooms.discard(room_id)
                case Deleted(reason):
                    self.deleted_reason = reason

    def answer_leftovers(self, inbox_recv: trio.MemoryReceiveChannel[Command]) -> None:
        """Answer commands still queued when the room ended, as if it never existed."""
        while True:
            try:
                command = inbox_recv.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(command, Join):
                command.session.join_settled(self.room.room_id)
            code = ErrorCode.NOT_FOUND if isinstance(command, Join) else ErrorCode.NOT_MEMBER
            self.refuse(command, ProtocolError(code, f"room '{self.room.room_id}' is gone"))
