"""One room's loop: the task that applies every change of one room, in order.

The loop takes commands from the room's inbox (a bounded memory channel),
applies them to the core `Room` and carries out the effects in order, so all of
a room's state changes happen in this one task and need no locks. It waits
for commands while the room has members. Once the room is empty and nothing is
queued, the loop ends and the registry keeps the room dormant: in the store
and in its expiry index, with the core `Expiry`'s deadline (`room_ttl` after
the room became empty), and no task of its own.

Durability: the loop applies a burst of commands (everything queued), then
submits what they changed (the room's record when host, key, emptiness, bans
or the `seq` reservation changed; a deletion; the messages for history) to the
`StoreWriter`, one transaction shared with every other room of the same
scheduler turn, and the burst's effects are carried out once that commit is
done. So a crash can lose an unsent event but never resend a `seq`, and with
history on every message a member received is stored. Effects are carried out
in the order their commands were applied. A join that recovers from `since`
and a `getHistory` first wait until what came before them is durable, then
read history; so does a room about to end.

The fast path: while the loop waits for commands with none queued, a reader
applies a member's everyday message (`apply_now`: a message, typing, a
reaction, a signal...) itself, in its own task and without a checkpoint, so
every state change stays serial and the room's task is not woken for it
(measured: a task switch and a channel hop per message were about a tenth of
the server's CPU in the chat mix, README Performance). Anything that may end the
room or must read the store goes through the inbox.

Commands come from connections (`Join`, `Act`, `Disconnect`) and from the event
bus (`Kick`, `Delete`). A refused command is answered with `error` to the
connection that sent it and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import attrs
import trio

from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.event import Event
from roomd.core.expiry import Expiry
from roomd.core.history import StoredMessage
from roomd.core.quota import RoomQuota
from roomd.core.room import Append, Effect, Room, Send, room_tag
from roomd.core.stats import Stats
from roomd.daemon.bus import Delete, Kick, Unban
from roomd.daemon.session import Session, perform
from roomd.daemon.writer import StoreWriter, Submission
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
    # The last position the client saw (PROTOCOL.md section 8.2), or None.
    since: m.Position | None = None


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


Command = Join | Act | Disconnect | Kick | Unban | Delete

# Room messages that go through the inbox even when the loop is idle: they may
# end the room, or read the store.
_VIA_INBOX = (m.LeaveChatroom, m.DeleteChatroom, m.GetHistory)


@attrs.define(eq=False)
class RoomLoop:
    """Applies one room's commands in order and carries out their effects."""

    room: Room
    # Reads history (recovery, paging); every write goes through `writer`.
    store: RoomStore
    writer: StoreWriter
    stats: Stats
    # Wall-clock Unix milliseconds (`ts`, `emptySince`).
    wall_ms: Callable[[], int]
    expiry: Expiry
    # Counts the rooms each AID hosts: told of every host change.
    quota: RoomQuota
    # The inbox's sending side: it tells whether the loop waits with nothing queued.
    inbox_send: trio.MemorySendChannel[Command]
    # What the store holds of the room, to know when a command changed it.
    _saved: tuple[object, ...] = attrs.field(init=False)
    # The host the quota counts this room for.
    counted_host: str | None = attrs.field(init=False)
    # The effects of the commands applied since the last commit, in order.
    _effects: list[Effect] = attrs.field(factory=list)
    # Submissions to the writer whose effects are not carried out yet.
    _in_flight: int = 0
    # The latest submission to the writer (to wait until it is durable).
    _submitted: Submission | None = None

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
            # Apply everything already queued, then submit it for durability in one
            # piece: one task switch and one store batch per burst, not per command.
            # Shielded: a command is applied whole or not at all.
            with trio.CancelScope(shield=True):
                while True:
                    await self.apply(command)
                    if room.deleted is not None:
                        break
                    self.expiry.track(room, trio.current_time())
                    try:
                        command = inbox_recv.receive_nowait()
                    except trio.WouldBlock:
                        break
                if room.deleted is not None or room.is_empty:
                    await self.flush()  # durable before the registry lets the room go
                else:
                    self.commit()
            if room.deleted is not None:
                return
            if room.is_empty:
                try:  # a join that came while the room was made durable
                    command = inbox_recv.receive_nowait()
                except trio.WouldBlock:
                    return  # with no checkpoint since: nothing can be queued unanswered
                continue
            command = await inbox_recv.receive()

    def apply_now(self, command: Act) -> bool:
        """Apply `command` in the caller's task if the loop waits with nothing queued.

        Returns False, having done nothing, when the command must go through the
        inbox instead (the loop is busy, or the message may end the room or read
        the store). Never blocks and never checkpoints.
        """
        if (
            isinstance(command.msg, _VIA_INBOX)
            or not self.inbox_send.statistics().tasks_waiting_receive
        ):
            return False
        self._apply_act(command.session, command.msg, self.wall_ms())
        self.expiry.track(self.room, trio.current_time())
        self.commit()
        return True

    async def apply(self, command: Command) -> None:
        """Apply one command; a refused one is answered with `error` and changes nothing."""
        room = self.room
        now = self.wall_ms()
        try:
            match command:
                case Join(session, aid, public_key, request_id, since):
                    if not session.connection.join_arrived(room.room_id):
                        return
                    member = room.aid_of(session) is not None  # a rejoin replays nothing
                    stored = [] if member else await self._missed(since, now)
                    effects = room.join(session, aid, public_key, now, request_id, since, stored)
                case Act(session, m.GetHistory() as msg):
                    effects = [Send((session,), await self._history(session, msg, now))]
                case Act(session, msg):
                    self._apply_act(session, msg, now)
                    return
                case Disconnect(session, reason):
                    effects = room.disconnect(session, reason, now)
                case Kick(_, aid, ban):
                    effects = room.kick(aid, now, ban=ban)
                case Unban(_, aid):
                    room.unban(aid)
                    effects = []
                case Delete(_, reason):
                    effects = room.delete(reason)
        except ProtocolError as exc:
            self.refuse(command, exc)
            return
        self._took(effects)

    def _apply_act(self, session: Session, msg: m.RoomMessage, now: int) -> None:
        room = self.room
        try:
            effects = room.handle(session, msg, now)
        except ProtocolError as exc:
            self.refuse(Act(session, msg), exc)
            return
        self._took(effects)

    def _took(self, effects: list[Effect]) -> None:
        """Queue an applied command's effects; tell the quota if the host changed."""
        room = self.room
        if room.host != self.counted_host:
            self.quota.host_changed(self.counted_host, room.host)
            self.counted_host = room.host
        self._effects.extend(effects)

    async def _missed(self, since: m.Position | None, now_ms: int) -> list[StoredMessage]:
        """Return the stored messages a join from `since` would replay (none: no read)."""
        room = self.room
        missed = room.missed(since)
        if not missed or since is None:
            return []
        await self.flush()  # what this burst sent so far is in history first
        oldest = room.history.oldest_ts(now_ms)
        return await self.store.messages_after(room.room_id, since.seq, missed, oldest)

    async def _history(self, session: Session, msg: m.GetHistory, now_ms: int) -> Event:
        room = self.room
        before, limit = room.history_query(session, msg)
        if not room.history.on:
            return room.history_page(msg, [])
        await self.flush()
        oldest = room.history.oldest_ts(now_ms)
        newest = await self.store.messages_before(room.room_id, before, limit + 1, oldest)
        return room.history_page(msg, newest)

    def commit(self) -> None:
        """Submit what the applied commands changed; their effects follow once it is durable.

        Effects that need no write are carried out at once, unless earlier ones
        still wait for a commit: order is kept.
        """
        room = self.room
        effects, self._effects = self._effects, []
        messages = [effect.message for effect in effects if isinstance(effect, Append)]
        save = None
        if room.deleted is None:
            if room.is_empty:
                # An empty room is about to go dormant: no reserved block outlives it,
                # so the next member sees seq go on from the last one sent.
                room.settle_seq()
            if room.durable_state() != self._saved:
                save = room.to_record()
                self._saved = room.durable_state()
        delete = room.room_id if room.deleted is not None else None
        if save is None and delete is None and not messages and not self._in_flight:
            self.perform(effects)
            return
        self._in_flight += 1
        self._submitted = self.writer.submit(
            partial(self._carry_out, effects), save=save, delete=delete, messages=messages
        )

    def _carry_out(self, effects: list[Effect]) -> None:
        self._in_flight -= 1
        self.perform(effects)

    async def flush(self) -> None:
        """Commit, and return once everything applied so far is durable and carried out."""
        self.commit()
        if self._in_flight and self._submitted is not None:
            await self._submitted.durable()

    def refuse(self, command: Command, exc: ProtocolError) -> None:
        """Answer `command` with the error `exc`, in order (bus commands have no one to answer)."""
        if isinstance(command, Join):
            session, request_id = command.session, command.request_id
        elif isinstance(command, Act):
            session, request_id = command.session, command.msg.id
        else:
            kind = type(command).__name__  # not the command: it would show room ids in full
            log.debug("room %s: %s refused: %s", room_tag(self.room.room_id), kind, exc.code)
            return
        self._effects.append(Send((session,), ev.error(exc, request_id, self.room.room_id)))

    def perform(self, effects: list[Effect]) -> None:
        """Carry out the effects of one room method, in order."""
        perform(self.room.room_id, effects, self.stats)

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
            effects, self._effects = self._effects, []
            self.perform(effects)
