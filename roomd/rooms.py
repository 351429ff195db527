"""The trio shell around `Room`: the registry of live rooms and one loop per room.

Each room runs one task, its room loop: it takes commands from the room's inbox
(a bounded memory channel), applies them to the `Room` and carries out the
effects in order, so all of a room's state changes happen in that task. The
loop runs inside the room's `expiry_scope`, whose deadline is `room_ttl` after
the room became empty and +inf while it has members: when it fires, the room is
deleted with reason `expired`.

Connections talk to a room only through `RoomHandle.inbox_send`. A sender that
finds the inbox closed (`trio.BrokenResourceError`) raced with the room's end and
answers its client as if the room never existed.
"""

from __future__ import annotations

import logging
import math
import secrets
import time

import attrs
import trio

from roomd import message as m
from roomd.config import Config
from roomd.errors import ErrorCode, ProtocolError
from roomd.room import Attached, Deleted, Deliver, Detached, Effect, Room
from roomd.session import Session, fan_out

log = logging.getLogger("roomd.rooms")

INBOX_SIZE = 256


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


Command = Join | Act | Disconnect


def wall_ms() -> int:
    """Return the wall-clock time in Unix milliseconds (for `ts` and `createdAt`)."""
    return time.time_ns() // 1_000_000


def new_room_id() -> str:
    """Return a fresh unguessable room id: 128 random bits, URL-safe."""
    return secrets.token_urlsafe(16)


@attrs.define(eq=False)
class RoomHandle:
    """How the rest of roomd reaches one live room."""

    room_id: str
    inbox_send: trio.MemorySendChannel[Command]


@attrs.define(eq=False)
class RoomRegistry:
    """The live rooms of this process, each run as a task in `nursery`."""

    config: Config
    nursery: trio.Nursery
    rooms: dict[str, RoomHandle] = attrs.field(factory=dict)

    def get(self, room_id: str) -> RoomHandle | None:
        """Return the live room `room_id`, or None."""
        return self.rooms.get(room_id)

    def create(
        self, *, host: str | None, encrypted_room_key: bytes | None, room_id: str | None = None
    ) -> RoomHandle:
        """Start a new, empty room and return its handle; its creator joins next."""
        room_id = room_id or new_room_id()
        room = Room.new(
            room_id,
            host=host,
            encrypted_room_key=encrypted_room_key,
            now_ms=wall_ms(),
            max_members=self.config.max_members,
            message_id_prefix=secrets.token_urlsafe(6),
        )
        inbox_send, inbox_recv = trio.open_memory_channel[Command](INBOX_SIZE)
        handle = self.rooms[room_id] = RoomHandle(room_id, inbox_send)
        self.nursery.start_soon(self._run_room, room, inbox_recv, name=f"room {room_id}")
        log.info("room %s created", room_id)
        return handle

    async def _run_room(self, room: Room, inbox_recv: trio.MemoryReceiveChannel[Command]) -> None:
        loop = RoomLoop(room, self.config.room_ttl)
        try:
            await loop.run(inbox_recv)
        finally:
            # No checkpoint from here to close(): nothing can be queued unanswered.
            del self.rooms[room.room_id]
            loop.answer_leftovers(inbox_recv)
            inbox_recv.close()
        log.info("room %s deleted (%s)", room.room_id, loop.deleted_reason)


@attrs.define(eq=False)
class RoomLoop:
    """Applies one room's commands in order and carries out their effects."""

    room: Room
    room_ttl: float
    deleted_reason: str | None = None

    async def run(self, inbox_recv: trio.MemoryReceiveChannel[Command]) -> None:
        """Serve commands until the room is deleted or expires."""
        with trio.CancelScope(deadline=trio.current_time() + self.room_ttl) as expiry_scope:
            while self.deleted_reason is None:
                command = await inbox_recv.receive()
                # Apply everything already queued before yielding: one task switch per
                # burst, not per command.
                while True:
                    self.apply(command)
                    if self.deleted_reason is not None:
                        return
                    try:
                        command = inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                if self.room.is_empty:
                    if expiry_scope.deadline == math.inf:
                        expiry_scope.deadline = trio.current_time() + self.room_ttl
                else:
                    expiry_scope.deadline = math.inf
        if expiry_scope.cancelled_caught:
            self.perform(self.room.delete("expired"))

    def apply(self, command: Command) -> None:
        """Apply one command; a refused one is answered with `error` and changes nothing."""
        room = self.room
        try:
            match command:
                case Join(session, aid, public_key, request_id):
                    # The join is no longer pending, whatever its outcome: a repeated join
                    # of a room the session is already in attaches nothing.
                    session.joining.discard(room.room_id)
                    effects = room.join(session, aid, public_key, wall_ms(), request_id)
                case Act(session, msg):
                    effects = room.handle(session, msg, wall_ms())
                case Disconnect(session, reason):
                    effects = room.disconnect(session, reason, wall_ms())
        except ProtocolError as exc:
            self.refuse(command, exc)
            return
        self.perform(effects)

    def refuse(self, command: Command, exc: ProtocolError) -> None:
        """Answer `command` with the error `exc` (a `Disconnect` has no one to answer)."""
        if isinstance(command, Disconnect):
            return
        event = exc.to_wire()
        event["roomId"] = self.room.room_id
        if isinstance(command, Join):
            command.session.joining.discard(self.room.room_id)
            request_id = command.request_id
        else:
            request_id = command.msg.id
        if request_id is not None:
            event["id"] = request_id
        command.session.send(event)

    def perform(self, effects: list[Effect]) -> None:
        """Carry out the effects of one room method, in order."""
        room_id = self.room.room_id
        for effect in effects:
            match effect:
                case Deliver(to, event):
                    fan_out(to, event)
                case Attached(session):
                    assert isinstance(session, Session)
                    session.joining.discard(room_id)
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
            code = ErrorCode.NOT_FOUND if isinstance(command, Join) else ErrorCode.NOT_MEMBER
            self.refuse(command, ProtocolError(code, f"room '{self.room.room_id}' is gone"))
