"""One room's loop: the task that applies every change of one room, in order.

The loop takes commands from the room's inbox (a bounded memory channel),
applies them to the core `Room` and carries out the effects in order, so all of
a room's state changes happen in this one task and need no locks. It waits
for commands while the room has members. Once the room is empty and nothing is
queued, the loop ends and the registry keeps the room dormant: in the store
and in its expiry index, with the core `Expiry`'s deadline (`room_ttl` after
the room became empty), and no task of its own.

Durability: when a command changes what the store keeps (host, key, emptiness,
the `seq` reservation), the loop saves the room *before* anyone is told, so a
crash can lose an unsent event but never resend a `seq`.

Commands come from connections (`Join`, `Act`, `Disconnect`) and from the event
bus (`Kick`, `Delete`). A refused command is answered with `error` to the
connection that sent it and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs
import trio

from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.expiry import Expiry
from roomd.core.quota import RoomQuota
from roomd.core.room import Attached, Detached, Effect, Room, Send, room_tag
from roomd.core.stats import Stats
from roomd.daemon.bus import Delete, Kick
from roomd.daemon.outbox import fan_out
from roomd.daemon.session import Session
from roomd.errors import ErrorCode, ProtocolError
from roomd.store import RoomStore

log = logging.getLogger("roomd.room_loop")


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


Command = Join | Act | Disconnect | Kick | Delete


@attrs.define(eq=False)
class RoomLoop:
    """Applies one room's commands in order and carries out their effects."""

    room: Room
    store: RoomStore
    stats: Stats
    # Wall-clock Unix milliseconds (`ts`, `emptySince`).
    wall_ms: Callable[[], int]
    expiry: Expiry
    # Counts the rooms each AID hosts: told of every host change.
    quota: RoomQuota
    # What the store holds of the room, to know when a command changed it.
    _saved: tuple[object, ...] = attrs.field(init=False)
    # The host the quota counts this room for.
    counted_host: str | None = attrs.field(init=False)

    @_saved.default
    def _initially_saved(self) -> tuple[object, ...]:
        return self.room.durable_state()

    @counted_host.default
    def _initially_counted_host(self) -> str | None:
        return self.room.host

    async def run(self, inbox_recv: trio.MemoryReceiveChannel[Command]) -> None:
        """Serve commands until the room is deleted, or is empty with nothing queued.

        Returning with `room.deleted` None means the room may go dormant: it is
        saved (its `seq` settled) and its inbox was empty, with no checkpoint since.
        """
        room = self.room
        try:
            command = inbox_recv.receive_nowait()
        except trio.WouldBlock:
            if room.is_empty:
                return
            command = await inbox_recv.receive()
        while True:
            # Apply everything already queued before yielding: one task switch per
            # burst, not per command. Shielded: a command is applied whole or not at all.
            with trio.CancelScope(shield=True):
                while True:
                    await self.apply(command)
                    if room.deleted is not None:
                        return
                    self.expiry.track(room, trio.current_time())
                    try:
                        command = inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
            if room.is_empty:
                return
            command = await inbox_recv.receive()

    async def apply(self, command: Command) -> None:
        """Apply one command; a refused one is answered with `error` and changes nothing."""
        room = self.room
        now = self.wall_ms()
        try:
            match command:
                case Join(session, aid, public_key, request_id):
                    if not session.connection.join_arrived(room.room_id):
                        return
                    effects = room.join(session, aid, public_key, now, request_id)
                case Act(session, msg):
                    effects = room.handle(session, msg, now)
                case Disconnect(session, reason):
                    effects = room.disconnect(session, reason, now)
                case Kick(_, aid):
                    effects = room.kick(aid, now)
                case Delete(_, reason):
                    effects = room.delete(reason)
        except ProtocolError as exc:
            self.refuse(command, exc)
            return
        await self.commit(effects)

    async def commit(self, effects: list[Effect]) -> None:
        """Make the room's new state durable when it must be, then carry out `effects`."""
        room = self.room
        if room.host != self.counted_host:
            self.quota.host_changed(self.counted_host, room.host)
            self.counted_host = room.host
        if room.deleted is not None:
            await self.store.delete(room.room_id)
            self.perform(effects)
            return
        if room.is_empty:
            # An empty room is about to go dormant: no reserved block outlives it, so
            # the next member sees seq go on from the last one sent.
            room.settle_seq()
        if room.durable_state() != self._saved:
            await self.store.save(room.to_record())
        self._saved = room.durable_state()
        self.perform(effects)

    def refuse(self, command: Command, exc: ProtocolError) -> None:
        """Answer `command` with the error `exc` (bus commands have no one to answer)."""
        if isinstance(command, Join):
            session, request_id = command.session, command.request_id
        elif isinstance(command, Act):
            session, request_id = command.session, command.msg.id
        else:
            kind = type(command).__name__  # not the command: it would show room ids in full
            log.debug("room %s: %s refused: %s", room_tag(self.room.room_id), kind, exc.code)
            return
        session.send(ev.error(exc, request_id, self.room.room_id))

    def perform(self, effects: list[Effect]) -> None:
        """Carry out the effects of one room method, in order."""
        room_id = self.room.room_id
        for effect in effects:
            match effect:
                case Send(to, event):
                    fan_out(to, event)  # type: ignore[arg-type]  # the room's handles are Sessions
                    self.stats.deliveries_out += len(to)
                case Attached(session):
                    assert isinstance(session, Session)
                    session.connection.attached(room_id)
                case Detached(session):
                    assert isinstance(session, Session)
                    session.connection.detached(room_id)

    def answer_leftovers(self, inbox_recv: trio.MemoryReceiveChannel[Command]) -> None:
        """Answer commands still queued when the room ended, as if it never existed."""
        room_id = self.room.room_id
        while True:
            try:
                command = inbox_recv.receive_nowait()
            except trio.WouldBlock:
                return
            if isinstance(command, Join):
                command.session.connection.join_settled(room_id)
            code = ErrorCode.NOT_FOUND if isinstance(command, Join) else ErrorCode.NOT_MEMBER
            self.refuse(command, ProtocolError(code, f"room '{room_id}' is gone"))
