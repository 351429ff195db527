"""What one node knows of a room shared through Redis, and what each event means here.

Sans-I/O. Redis holds a shared room's state and decides every change
(functions.py); each node with members in the room receives its events, in
event-number order, and keeps only its own members: which of its connections
are in the room, as which AID. `SharedRoom.receive` turns one event into the
effects for those connections (roomd.core.room's `Send`, `Attached`,
`Detached`), so a member on any node receives what it would on one node.

Order: the node registers a join before it asks Redis (`expect_join`). The
join's own event may arrive before or after its reply; the joiner needs the
reply's snapshot for its `joinSuccess`, and must receive exactly the events
after its join. So events wait (`held`) until the reply is in: the room's
events are applied strictly in number order, and a gap in the numbers
(`Gap`) means events were lost (a dropped subscription), and the node must
close its members rather than let them miss one (CLUSTER.md guarantee 10).
A node anchors its position on its first join's event number: what came
before that is not its members' concern.
"""

from __future__ import annotations

from collections.abc import Hashable

import attrs

from roomd.cluster import ops
from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.history import HistoryPolicy, recovery
from roomd.core.room import Attached, Detached, Effect, Send

Handle = Hashable


@attrs.frozen
class Gap:
    """Events `after`+1 .. `got`-1 never arrived: the members here must be closed."""

    after: int
    got: int


@attrs.define(eq=False, slots=True)
class _Joining:
    handle: Handle
    aid: str
    request_id: m.RequestId | None
    since: m.Position | None
    snapshot: ops.Snapshot | None = None
    now_ms: int = 0


@attrs.define(eq=False)
class SharedRoom:
    """One node's members of one shared room, and its place in the room's events."""

    room_id: str
    history: HistoryPolicy
    # Connection id (`<node>/<n>`) -> the member connection, in join order.
    handles: dict[str, Handle] = attrs.field(factory=dict)
    conn_ids: dict[Handle, str] = attrs.field(factory=dict)
    aids: dict[Handle, str] = attrs.field(factory=dict)
    # Joins asked of Redis and not yet applied here, by connection id.
    joining: dict[str, _Joining] = attrs.field(factory=dict)
    # Members that asked to leave: the request id their `leftChatroom` answers.
    leaving: dict[Handle, m.RequestId | None] = attrs.field(factory=dict)
    # The last event applied here; None until the first join anchors it.
    position: int | None = None
    held: list[ops.RoomEvent] = attrs.field(factory=list)
    # The message id prefix and epoch, from the latest snapshot.
    prefix: str = ""
    epoch: str = ""
    # What this node last knew of the room's state: enough to restore the room
    # should Redis lose it (CLUSTER.md guarantee 8).
    host: str | None = None
    encrypted_room_key: bytes | None = None
    key_epoch: int = 0
    seq: int = 0
    deleted: bool = False

    @property
    def idle(self) -> bool:
        """True when this node has no member here and none joining: it may unsubscribe."""
        return not self.handles and not self.joining

    def members(self) -> list[Handle]:
        """Return this node's member connections, in join order."""
        return list(self.handles.values())

    def expect_join(
        self,
        conn_id: str,
        handle: Handle,
        aid: str,
        request_id: m.RequestId | None,
        since: m.Position | None,
    ) -> None:
        """Note a join of `handle` (as `conn_id`) about to be asked of Redis."""
        self.joining[conn_id] = _Joining(handle, aid, request_id, since)

    def join_refused(self, conn_id: str) -> None:
        """Forget a join Redis refused (or never took)."""
        self.joining.pop(conn_id, None)

    def expect_leave(self, handle: Handle, request_id: m.RequestId | None) -> None:
        """Note that member `handle` asked to leave (its `leftChatroom` carries `request_id`)."""
        self.leaving[handle] = request_id

    def join_applied(self, conn_id: str, snapshot: ops.Snapshot, now_ms: int) -> list[Effect | Gap]:
        """Take the reply to a join at wall time `now_ms`; return the effects now due.

        The join's own effects are among them once its event has come.
        """
        self.prefix, self.epoch = snapshot.prefix, snapshot.epoch
        self.host, self.encrypted_room_key = snapshot.host, snapshot.encrypted_room_key
        self.key_epoch, self.seq = snapshot.key_epoch, max(self.seq, snapshot.seq)
        handle = self.handles.get(conn_id)
        if handle is not None:  # a member joining again: no event, the same reply
            joining = self.joining.pop(conn_id)
            current = joining.since == m.Position(snapshot.epoch, snapshot.seq)
            reply = self._join_success(
                snapshot, None if joining.since is None else current, joining
            )
            return [Send((handle,), reply)]
        pending = self.joining.get(conn_id)
        if pending is None:
            return []
        joining = pending
        joining.snapshot = snapshot
        joining.now_ms = now_ms
        if self.position is None:
            self.position = snapshot.event - 1
            self.held = [event for event in self.held if event.event > self.position]
        return self._drain()

    def receive(self, event: ops.RoomEvent) -> list[Effect | Gap]:
        """Take the room's next event from the channel; return the effects now due."""
        if self.position is not None and event.event <= self.position:
            return []  # before this node's anchor
        self.held.append(event)
        if self.position is None:
            return []
        return self._drain()

    def _drain(self) -> list[Effect | Gap]:
        effects: list[Effect | Gap] = []
        while self.held and self.position is not None:
            event = self.held[0]
            if event.event != self.position + 1:
                effects.append(Gap(self.position, event.event))
                self.held.clear()
                return effects
            if isinstance(event, ops.Joined):
                joining = self.joining.get(event.conn)
                if joining is not None and joining.snapshot is None:
                    return effects  # its reply is still on the way
            del self.held[0]
            self.position = event.event
            effects.extend(self._apply(event))
        return effects

    def _apply(self, event: ops.RoomEvent) -> list[Effect]:
        room_id = self.room_id
        everyone = tuple(self.handles.values())
        match event:
            case ops.Joined():
                return self._joined(event)
            case ops.Left():
                return self._left(event)
            case ops.Said(_, seq, aid, ts, body):
                self.seq = seq
                message = ops.stored_message(room_id, self.prefix, f"{seq}-0", aid, ts, body)
                return [Send(everyone, message.event())]
            case ops.Typed(_, aid, is_typing):
                others = tuple(h for h in everyone if self.aids[h] != aid)
                return [Send(others, ev.typing(room_id, aid, is_typing))]
            case ops.Reacted(_, aid, message_id, emoji, remove):
                return [Send(everyone, ev.reaction(room_id, message_id, aid, emoji, remove))]
            case ops.Signalled(_, aid, entries):
                return [
                    Send(self._of(to), ev.signal(room_id, aid, payload)) for to, payload in entries
                ]
            case ops.KeyUpdated(_, aid, key_epoch, key):
                self.encrypted_room_key, self.key_epoch = key, key_epoch
                return [Send(everyone, ev.room_key_updated(room_id, key, aid, key_epoch))]
            case ops.HostMoved(_, aid):
                self.host = aid
                return [Send(everyone, ev.host_updated(room_id, aid))]
            case ops.Kicked():
                return self._kicked(event)
            case ops.Deleted(_, reason):
                self.deleted = True
                effects: list[Effect] = []
                if everyone:
                    effects.append(Send(everyone, ev.room_deleted(room_id, reason)))
                effects.extend(self._detach(handle) for handle in everyone)
                return effects
        raise AssertionError(f"no rule for {event!r}")

    def _of(self, aid: str) -> tuple[Handle, ...]:
        return tuple(h for h in self.handles.values() if self.aids[h] == aid)

    def _joined(self, event: ops.Joined) -> list[Effect]:
        effects: list[Effect] = []
        if event.new_aid and self.handles:
            joined = ev.user_joined(self.room_id, event.aid, event.public_key)
            effects.append(Send(tuple(self.handles.values()), joined))
        joining = self.joining.pop(event.conn, None)
        if joining is not None:
            snapshot = joining.snapshot
            assert snapshot is not None  # _drain waits for it
            handle = joining.handle
            self.handles[event.conn] = handle
            self.conn_ids[handle] = event.conn
            self.aids[handle] = joining.aid
            effects.append(Attached(handle))
            effects.extend(self._join_replies(snapshot, joining, joining.now_ms))
        if event.new_host:
            effects.append(
                Send(tuple(self.handles.values()), ev.host_updated(self.room_id, event.aid))
            )
        return effects

    def _join_replies(self, snapshot: ops.Snapshot, joining: _Joining, now_ms: int) -> list[Effect]:
        oldest = self.history.oldest_ts(now_ms)
        stored = [message for message in snapshot.replay if message.ts >= oldest]
        recovered, replay = recovery(
            self.history, joining.since, snapshot.epoch, snapshot.seq, stored
        )
        handle = joining.handle
        effects: list[Effect] = [Send((handle,), self._join_success(snapshot, recovered, joining))]
        effects.extend(Send((handle,), message.event()) for message in replay)
        return effects

    def _join_success(
        self, snapshot: ops.Snapshot, recovery: bool | None, joining: _Joining
    ) -> ev.Event:
        return ev.join_success(
            self.room_id,
            joining.aid,
            snapshot.host,
            snapshot.encrypted_room_key,
            [ev.member(aid, public_key) for aid, public_key in snapshot.members],
            snapshot.seq,
            snapshot.epoch,
            snapshot.key_epoch,
            recovery,
            joining.request_id,
        )

    def _detach(self, handle: Handle) -> Detached:
        conn_id = self.conn_ids.pop(handle)
        del self.handles[conn_id]
        del self.aids[handle]
        self.leaving.pop(handle, None)
        return Detached(handle)

    def _left(self, event: ops.Left) -> list[Effect]:
        effects: list[Effect] = []
        handle = self.handles.get(event.conn)
        if handle is not None:
            if handle in self.leaving:
                request_id = self.leaving[handle]
                effects.append(Send((handle,), ev.left_chatroom(self.room_id, "left", request_id)))
            effects.append(self._detach(handle))
        everyone = tuple(self.handles.values())
        if event.new_host is not None:
            self.host = event.new_host
        if event.gone and everyone:
            effects.append(Send(everyone, ev.user_left(self.room_id, event.aid, event.reason)))
        if event.new_host is not None and everyone:
            effects.append(Send(everyone, ev.host_updated(self.room_id, event.new_host)))
        return effects

    def _kicked(self, event: ops.Kicked) -> list[Effect]:
        kicked = tuple(self.handles[c] for c in event.conns if c in self.handles)
        effects: list[Effect] = []
        if kicked:
            effects.append(Send(kicked, ev.left_chatroom(self.room_id, "kicked")))
        effects.extend(self._detach(handle) for handle in kicked)
        everyone = tuple(self.handles.values())
        if event.new_host is not None:
            self.host = event.new_host
        if everyone:
            effects.append(Send(everyone, ev.user_left(self.room_id, event.aid, "kicked")))
            if event.new_host is not None:
                effects.append(Send(everyone, ev.host_updated(self.room_id, event.new_host)))
        return effects
