"""Room state and rules: the sans-I/O heart of roomd.

Theory of operation
-------------------
A `Room` holds everything one room knows: its members in join order (each an AID
with one or more connections), the host AID, the encrypted room key, the last
`seq`, and since when it has been empty. It never does I/O and never reads a
clock: every method takes what it needs (`now_ms`) and returns a list of effects
for the shell to carry out, in order:

- `Send(to, event)`: send `event` to the connections `to` (encode it once);
- `Append(message)`: store `message` in the room's history before carrying out
  any effect after it (PROTOCOL.md section 8.1);
- `Attached(conn)` / `Detached(conn)`: `conn` entered / left the room, so the
  shell updates what that connection is a member of.

After `delete` (or a host's `deleteChatroom`), `deleted` holds the reason and
the shell forgets the room. A method that raises `ProtocolError` changed
nothing. The shell owns one `Room` per room task and calls its methods from
that task only, so events are totally ordered: every member sees them in the
order the methods were called.

States: a room is *occupied* (at least one member; `empty_since` is None),
*empty* (`empty_since` set; `Expiry` counts down `room_ttl`) or *deleted*
(`deleted` set; final). `join` moves an empty room to occupied; removing the
last connection moves it back; `delete` ends either.

Host rules: the creator is host. When the host AID's last connection goes, the
member present longest becomes host (`hostUpdated` to all). An empty room keeps
its last host; a different AID joining an empty room becomes host (its
`joinSuccess` names it, then `hostUpdated` follows).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import attrs

from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.event import Event
from roomd.core.history import (
    HistoryPolicy,
    StoredMessage,
    history_page,
    missed_count,
    recovery,
)
from roomd.errors import ErrorCode, ProtocolError

Handle = Hashable
# How many `seq` numbers a room reserves (durably) at a time: see `Room.seq_reserved`.
SEQ_BLOCK = 1000


def room_tag(room_id: str) -> str:
    """Return a short, loggable name for a room: its full id is the key to join it."""
    return room_id[:6] + "…" if len(room_id) > 6 else room_id


@attrs.frozen
class RoomRecord:
    """The durable fields of one room (times in Unix milliseconds)."""

    room_id: str
    host: str | None
    encrypted_room_key: bytes | None
    created_at: int
    empty_since: int | None
    seq_reserved: int
    epoch: str = ""
    key_epoch: int = 0
    bans: frozenset[str] = frozenset()


@attrs.frozen
class Send:
    """Send `event` to each connection in `to`, in the room's order."""

    to: Sequence[Handle]
    event: Event


@attrs.frozen
class Attached:
    """`conn` is now a member of the room."""

    conn: Handle


@attrs.frozen
class Detached:
    """`conn` is no longer a member of the room."""

    conn: Handle


@attrs.frozen
class Append:
    """Store `message` in history before any later effect is carried out."""

    message: StoredMessage


Effect = Send | Attached | Detached | Append


@attrs.define(eq=False, slots=True)
class Member:
    """One AID present in a room, with its connections in join order."""

    aid: str
    public_key: bytes | None
    conns: list[Handle]


@attrs.define(eq=False)
class Room:
    """The state of one room; see the module docstring for the rules."""

    room_id: str
    host: str | None
    encrypted_room_key: bytes | None
    created_at: int
    max_members: int
    message_id_prefix: str
    # The stream's epoch (PROTOCOL.md section 8.1) and the key's (section 8.4).
    epoch: str
    history: HistoryPolicy
    key_epoch: int = 0
    bans: frozenset[str] = frozenset()
    empty_since: int | None = None
    seq: int = 0
    # The durable high-water mark of `seq`: no message may carry a seq above it
    # until the shell has saved a higher one (see `durable_state`). With history
    # on, every message is stored with its seq, so the mark is the seq itself,
    # and the store reads it back from the stored messages (roomd.store).
    seq_reserved: int = 0
    seq_block: int = SEQ_BLOCK
    # Why the room was deleted (`deleted`, `expired`); None while it exists.
    deleted: str | None = None
    members: dict[str, Member] = attrs.field(factory=dict)
    _conn_aid: dict[Handle, str] = attrs.field(factory=dict)
    _all_conns: tuple[Handle, ...] | None = None

    @classmethod
    def new(
        cls,
        room_id: str,
        *,
        host: str | None,
        encrypted_room_key: bytes | None,
        now_ms: int,
        max_members: int,
        message_id_prefix: str,
        epoch: str,
        history: HistoryPolicy,
    ) -> Room:
        """Return an empty room; its creator joins it next (as host, being `host`)."""
        return cls(
            room_id=room_id,
            host=host,
            encrypted_room_key=encrypted_room_key,
            created_at=now_ms,
            max_members=max_members,
            message_id_prefix=message_id_prefix,
            epoch=epoch,
            history=history,
            empty_since=now_ms,
        )

    @classmethod
    def from_record(
        cls,
        record: RoomRecord,
        *,
        empty_since: int,
        max_members: int,
        message_id_prefix: str,
        history: HistoryPolicy,
    ) -> Room:
        """Return a restored room: empty, and numbering on from above every seq it ever sent."""
        return cls(
            room_id=record.room_id,
            host=record.host,
            encrypted_room_key=record.encrypted_room_key,
            created_at=record.created_at,
            max_members=max_members,
            message_id_prefix=message_id_prefix,
            epoch=record.epoch,
            history=history,
            key_epoch=record.key_epoch,
            bans=record.bans,
            empty_since=empty_since,
            seq=record.seq_reserved,
            seq_reserved=record.seq_reserved,
        )

    def to_record(self) -> RoomRecord:
        """Return the durable fields of this room."""
        return RoomRecord(
            room_id=self.room_id,
            host=self.host,
            encrypted_room_key=self.encrypted_room_key,
            created_at=self.created_at,
            empty_since=self.empty_since,
            seq_reserved=self.seq_reserved,
            epoch=self.epoch,
            key_epoch=self.key_epoch,
            bans=self.bans,
        )

    def durable_state(self) -> tuple[object, ...]:
        """Return what the store keeps of this room that can change.

        The shell compares it before and after each method and, when it changed,
        saves `to_record()` before it carries out the method's effects. With
        history on, a message changes none of it: its `seq` is durable with the
        stored message itself, so sending is not also a write of the record.
        """
        return (
            self.host,
            self.encrypted_room_key,
            self.empty_since,
            None if self.history.on else self.seq_reserved,
            self.key_epoch,
            self.bans,
        )

    def settle_seq(self) -> None:
        """Lower the reservation to the last seq sent (the room empties or stops; then save)."""
        self.seq_reserved = self.seq

    # -- queries ---------------------------------------------------------------

    @property
    def is_empty(self) -> bool:
        """True when no connection is in the room."""
        return not self._conn_aid

    def aid_of(self, conn: Handle) -> str | None:
        """Return the AID `conn` joined as, or None when it is not a member."""
        return self._conn_aid.get(conn)

    def connections(self) -> tuple[Handle, ...]:
        """Return every member connection, members in join order."""
        if self._all_conns is None:
            self._all_conns = tuple(c for member in self.members.values() for c in member.conns)
        return self._all_conns

    def member_list(self) -> list[Event]:
        """Return `[{aid, publicKey}]` of the present AIDs in join order."""
        return [ev.member(aid, mem.public_key) for aid, mem in self.members.items()]

    def _others(self, aid: str) -> list[Handle]:
        return [c for mem in self.members.values() if mem.aid != aid for c in mem.conns]

    def _require_member(self, conn: Handle) -> str:
        aid = self._conn_aid.get(conn)
        if aid is None:
            raise ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room '{self.room_id}'")
        return aid

    def _require_host(self, conn: Handle) -> str:
        aid = self._require_member(conn)
        if aid != self.host:
            raise ProtocolError(ErrorCode.FORBIDDEN, "only the host may do this")
        return aid

    def _require_present(self, aid: str) -> Member:
        member = self.members.get(aid)
        if member is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"'{aid}' is not in room '{self.room_id}'")
        return member

    # -- membership ------------------------------------------------------------

    def missed(self, since: m.Position | None) -> int:
        """Return how many stored messages a join from `since` needs (0: none to read)."""
        if since is None:
            return 0
        return missed_count(self.history, since, self.epoch, self.seq) or 0

    def join(
        self,
        conn: Handle,
        aid: str,
        public_key: bytes | None,
        now_ms: int,
        request_id: m.RequestId | None = None,
        since: m.Position | None = None,
        stored: list[StoredMessage] | None = None,
    ) -> list[Effect]:
        """Add `conn` (authenticated as `aid`) to the room; raise `roomFull` when full.

        With `since`, `stored` is what the store returned for `missed(since)`
        messages after it: when they are all there, they are replayed right after
        `joinSuccess {recovered: true}`. Raises `forbidden` for a banned AID.
        """
        if conn in self._conn_aid:
            current = since is not None and since == m.Position(self.epoch, self.seq)
            reply = self._join_success(aid, None if since is None else current, request_id)
            return [Send((conn,), reply)]
        if aid in self.bans:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"'{aid}' is banned from room '{self.room_id}'"
            )
        recovered, replay = recovery(self.history, since, self.epoch, self.seq, stored or [])

        member = self.members.get(aid)
        effects: list[Effect] = []
        if member is None:
            if len(self.members) >= self.max_members:
                raise ProtocolError(
                    ErrorCode.ROOM_FULL,
                    f"room '{self.room_id}' is full ({self.max_members} members)",
                )
            others = self.connections()
            member = self.members[aid] = Member(aid, public_key, [])
            if others:
                effects.append(Send(others, ev.user_joined(self.room_id, aid, public_key)))
        new_host = self.is_empty and self.host != aid
        if new_host:
            self.host = aid
        member.conns.append(conn)
        self._conn_aid[conn] = aid
        self._all_conns = None
        self.empty_since = None
        effects.append(Attached(conn))
        effects.append(Send((conn,), self._join_success(aid, recovered, request_id)))
        effects.extend(Send((conn,), message.event()) for message in replay)
        if new_host:
            effects.append(Send(self.connections(), self._host_updated()))
        return effects

    def _join_success(
        self, aid: str, recovery: bool | None, request_id: m.RequestId | None
    ) -> Event:
        return ev.join_success(
            self.room_id,
            aid,
            self.host,
            self.encrypted_room_key,
            self.member_list(),
            self.seq,
            self.epoch,
            self.key_epoch,
            recovery,
            request_id,
        )

    def _host_updated(self) -> Event:
        return ev.host_updated(self.room_id, self.host)

    def _remove_conn(self, conn: Handle, reason: str, now_ms: int) -> list[Effect]:
        """Remove one connection; tell the others if its AID is now gone."""
        aid = self._conn_aid.pop(conn)
        member = self.members[aid]
        member.conns.remove(conn)
        self._all_conns = None
        effects: list[Effect] = [Detached(conn)]
        if not member.conns:
            del self.members[aid]
            effects.extend(self._after_aid_left(aid, reason, now_ms))
        return effects

    def _after_aid_left(self, aid: str, reason: str, now_ms: int) -> list[Effect]:
        if not self.members:
            self.empty_since = now_ms
            return []
        effects: list[Effect] = [Send(self.connections(), ev.user_left(self.room_id, aid, reason))]
        if aid == self.host:
            self.host = next(iter(self.members))
            effects.append(Send(self.connections(), self._host_updated()))
        return effects

    def leave(
        self, conn: Handle, now_ms: int, request_id: m.RequestId | None = None
    ) -> list[Effect]:
        """Take `conn` out of the room at its own request (`leaveChatroom`)."""
        self._require_member(conn)
        reply = ev.left_chatroom(self.room_id, "left", request_id)
        return [Send((conn,), reply), *self._remove_conn(conn, "left", now_ms)]

    def disconnect(self, conn: Handle, reason: str, now_ms: int) -> list[Effect]:
        """Take a closed connection out (`reason` `disconnected` or `timeout`); no-op if absent."""
        if conn not in self._conn_aid:
            return []
        return self._remove_conn(conn, reason, now_ms)

    def kick(self, aid: str, now_ms: int, *, ban: bool = False) -> list[Effect]:
        """Kick every connection of `aid`: they get `leftChatroom kicked`, the rest `userLeft`.

        With `ban`, `aid` may not join again until unbanned; it is banned even
        when absent (then nothing else happens). Without, an absent `aid` is
        `notFound`.
        """
        if ban:
            self.bans = self.bans | {aid}
            if aid not in self.members:
                return []
        member = self._require_present(aid)
        event = ev.left_chatroom(self.room_id, "kicked")
        effects: list[Effect] = [Send(tuple(member.conns), event)]
        for conn in member.conns:
            del self._conn_aid[conn]
            effects.append(Detached(conn))
        del self.members[aid]
        self._all_conns = None
        effects.extend(self._after_aid_left(aid, "kicked", now_ms))
        return effects

    def unban(self, aid: str) -> None:
        """Let `aid` join again; raise `notFound` when it is not banned."""
        if aid not in self.bans:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"'{aid}' is not banned from this room")
        self.bans = self.bans - {aid}

    def delete(self, reason: str) -> list[Effect]:
        """Delete the room (`deleted` is set): every member gets `roomDeleted` and is detached."""
        conns = self.connections()
        effects: list[Effect] = []
        if conns:
            effects.append(Send(conns, ev.room_deleted(self.room_id, reason)))
        effects.extend(Detached(conn) for conn in conns)
        self.members.clear()
        self._conn_aid.clear()
        self._all_conns = None
        self.deleted = reason
        return effects

    # -- client messages -------------------------------------------------------

    def handle(self, conn: Handle, msg: m.RoomMessage, now_ms: int) -> list[Effect]:
        """Apply one validated room message from member `conn`; raise `ProtocolError` if refused.

        `joinChatroom` goes through `join`, which needs the connection's AID.
        """
        match msg:
            case m.SendMessage():
                return self._message(conn, msg, now_ms)
            case m.Typing():
                aid = self._require_member(conn)
                return [Send(self._others(aid), ev.typing(self.room_id, aid, msg.is_typing))]
            case m.Reaction():
                aid = self._require_member(conn)
                event = ev.reaction(self.room_id, msg.message_id, aid, msg.emoji, msg.remove)
                return [Send(self.connections(), event)]
            case m.Signal():
                return self._signal(conn, msg)
            case m.LeaveChatroom():
                return self.leave(conn, now_ms, msg.id)
            case m.UpdateRoomKey():
                aid = self._require_host(conn)
                opened = self.key_epoch + 1
                if msg.key_epoch is not None and msg.key_epoch != opened:
                    raise self._conflict(f"the next key epoch is {opened}")
                self.encrypted_room_key = msg.encrypted_room_key
                self.key_epoch = opened
                event = ev.room_key_updated(self.room_id, msg.encrypted_room_key, aid, opened)
                return [Send(self.connections(), event)]
            case m.TransferHost():
                self._require_host(conn)
                self._require_present(msg.to)
                self.host = msg.to
                return [Send(self.connections(), self._host_updated())]
            case m.Kick():
                aid = self._require_host(conn)
                if msg.aid == aid:
                    raise ProtocolError(
                        ErrorCode.BAD_REQUEST, "the host cannot kick itself; use leaveChatroom"
                    )
                self._require_present(msg.aid)
                return self.kick(msg.aid, now_ms, ban=msg.ban)
            case m.Unban():
                self._require_host(conn)
                self.unban(msg.aid)
                return [Send((conn,), ev.unbanned(self.room_id, msg.aid, msg.id))]
            case m.DeleteChatroom():
                self._require_host(conn)
                return self.delete("deleted")
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"{msg.TYPE} is not a room message")

    def _conflict(self, message: str) -> ProtocolError:
        return ProtocolError(ErrorCode.CONFLICT, message, key_epoch=self.key_epoch)

    def _signal(self, conn: Handle, msg: m.Signal) -> list[Effect]:
        aid = self._require_member(conn)
        entries = msg.entries
        if len(entries) > self.max_members:
            raise ProtocolError(
                ErrorCode.BAD_REQUEST, f"a signal batch holds at most {self.max_members} entries"
            )
        targets = [self._require_present(entry.to) for entry in entries]  # all or nothing
        return [
            Send(tuple(target.conns), ev.signal(self.room_id, aid, entry.payload))
            for target, entry in zip(targets, entries, strict=True)
        ]

    def _message(self, conn: Handle, msg: m.SendMessage, now_ms: int) -> list[Effect]:
        aid = self._require_member(conn)
        if msg.key_epoch is not None and msg.key_epoch != self.key_epoch:
            raise self._conflict(f"the room's key epoch is {self.key_epoch}")
        self.seq += 1
        if self.history.on:
            self.seq_reserved = self.seq  # stored with the message, in one transaction
        elif self.seq > self.seq_reserved:
            self.seq_reserved = self.seq - 1 + self.seq_block
        message = StoredMessage(
            self.room_id,
            self.seq,
            f"{self.message_id_prefix}{self.seq:x}",
            aid,
            msg.ciphertext,
            msg.iv,
            msg.client_msg_id,
            now_ms,
            msg.key_epoch,
        )
        send = Send(self.connections(), message.event())
        return [Append(message), send] if self.history.on else [send]

    def history_query(self, conn: Handle, msg: m.GetHistory) -> tuple[int, int]:
        """Return the `(before, limit)` of the page `msg` asks for; raise `notMember`."""
        self._require_member(conn)
        return (self.seq + 1 if msg.before is None else msg.before), msg.limit

    def history_page(self, msg: m.GetHistory, newest: list[StoredMessage]) -> Event:
        """Return the `history` reply from the newest `limit + 1` messages before `before`."""
        return history_page(self.room_id, self.epoch, msg, newest)
