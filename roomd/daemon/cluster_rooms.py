"""Rooms shared through Redis: this node's side of the cluster (CLUSTER.md).

With `--cluster`, no room lives in this process. Redis holds every room and
decides every change in one atomic function call (roomd/cluster/functions.py);
this node sends its connections' room operations there and delivers the
rooms' events to its own members (`SharedRoom`, in event-number order):

    ClusterRooms.run
    └── cluster nursery
        ├── one RedisLink per Redis of --cluster (redis_link.py: calls,
        │   subscriber, liveness, the sweep of dead nodes, expiry)
        ├── reaper : unsubscribes from rooms this node no longer has members in
        └── fence  : cut off from a Redis for heartbeat_timeout, closes every
                     client 1012 (the survivors may have removed them)

Rooms are spread over the Redis instances by a stable hash of their id (CRC-32,
the same on every node given the same list in the same order). A join
subscribes to the room's channel before it asks Redis, so its node sees every
event after the join.

Node failure (CLUSTER.md guarantee 7): Redis knows which node holds each
member connection (`<node>/<n>`). A node whose liveness key expired is dead:
the survivors remove its connections (`roomd_sweep`: `userLeft
disconnected`, host transfer), within 1.5 x heartbeat_timeout of its last
refresh. A node that starts sweeps what an earlier process of the same
`--node-id` left behind.

When Redis does not answer within `cluster_timeout`, the operation is
answered `error unavailable` with `retryAfter`; its deadline (the same
timeout, checked by Redis on its own clock) keeps it from applying later.
After the subscriber reconnects, each of its rooms is checked (`_resume`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import zlib
from collections.abc import Callable

import attrs
import coredis
import trio
from coredis.response.types import StreamEntry

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.shared_room import Gap, SharedRoom
from roomd.config import Config
from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.connection import CreateRoom, JoinRoom
from roomd.core.event import Event
from roomd.core.history import StoredMessage, history_page
from roomd.core.room import Effect, room_tag
from roomd.core.stats import Stats
from roomd.daemon.redis_link import REDIS_FAILED, RedisLink, unavailable
from roomd.daemon.registry import new_epoch
from roomd.daemon.session import Session, Sessions, perform
from roomd.errors import CloseCode, ErrorCode, ProtocolError

log = logging.getLogger("roomd.cluster")

# How often rooms this node has no member in are unsubscribed (CLUSTER.md: within 1 s).
REAP_EVERY = 0.5
# After a reconnect, how long a room's events that went on meanwhile may take to arrive.
CATCH_UP = 1.0


class AnyRoom:
    """Every room id, as far as a connection can tell: Redis says which exist."""

    def __contains__(self, room_id: object) -> bool:
        return True


ANY_ROOM = AnyRoom()


def spread(room_id: str, count: int) -> int:
    """Return the index of the Redis that holds `room_id`, of `count` (the same on every node)."""
    return zlib.crc32(room_id.encode()) % count


@attrs.define(eq=False)
class ClusterRooms:
    """This node's connections' rooms, shared with every node through the cluster's Redis."""

    config: Config
    redis: list[coredis.Redis[bytes]]
    node_id: str
    stats: Stats
    wall_ms: Callable[[], int]
    # Every open connection of this node (closed 1012 when cut off from the cluster).
    sessions: Sessions | None = None
    links: list[RedisLink] = attrs.field(init=False)
    # Rooms this node has members in (or joining), by id.
    rooms: dict[str, SharedRoom] = attrs.field(factory=dict)
    _tasks: trio.Nursery | None = None
    _op_ids: itertools.count[int] = attrs.field(factory=itertools.count)

    @links.default
    def _links(self) -> list[RedisLink]:
        return [
            RedisLink(self.config, redis, self.node_id, self._receive, self._resume)
            for redis in self.redis
        ]

    # -- running ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to every Redis, then serve calls and events until cancelled."""
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            for link in self.links:
                await tasks.start(link.run)
            tasks.start_soon(self._reap)
            tasks.start_soon(self._fence)
            task_status.started()

    def link_of(self, room_id: str) -> RedisLink:
        """Return the link to the Redis that holds `room_id`."""
        return self.links[spread(room_id, len(self.links))]

    @property
    def room_ids(self) -> AnyRoom:
        """The rooms a connection may name: any (Redis says which exist)."""
        return ANY_ROOM

    @property
    def subscription_count(self) -> int:
        """How many rooms this node is subscribed to, over every Redis."""
        return sum(len(link.subscribed) for link in self.links)

    def op(self) -> tuple[int, str]:
        """Return a fresh (deadline, operation id) for one call."""
        deadline = self.wall_ms() + round(self.config.cluster_timeout * 1000)
        return deadline, f"{self.node_id}-{next(self._op_ids)}"

    def conn_id(self, session: Session) -> str:
        """Return the id by which Redis knows `session`: `<node>/<n>`."""
        return f"{self.node_id}/{session.conn_id}"

    async def call(self, call: ops.Call) -> ops.Reply:
        """Make `call` on its room's Redis and return the reply."""
        return await self.link_of(call.room_id).call(call)

    def submit(self, call: ops.Call, done: Callable[[ops.Reply], None]) -> None:
        """Queue `call` on its room's Redis; `done` gets the reply, in call order."""
        self.link_of(call.room_id).submit(call, done)

    def _receive(self, link: RedisLink, room_id: str, data: bytes) -> None:
        room = self.rooms.get(room_id)
        if room is None:
            return
        self.stats.cluster_events_in += 1
        self._perform(room, room.receive(ops.decode_event(data)))

    async def _reap(self) -> None:
        while True:
            await trio.sleep(REAP_EVERY)
            for room_id in [r for r, room in self.rooms.items() if room.idle or room.deleted]:
                del self.rooms[room_id]
            for link in self.links:
                for room_id in [r for r in link.subscribed if r not in self.rooms]:
                    if room_id in self.rooms or room_id not in link.subscribed:
                        continue  # joined again while an earlier one was unsubscribed
                    await link.unsubscribe(room_id)

    async def _fence(self) -> None:
        fenced = False
        while True:
            await trio.sleep(self.config.heartbeat_timeout / 4)
            cut_off = any(link.cut_off for link in self.links)
            if cut_off and not fenced:
                # The survivors may have removed this node's members by now.
                log.warning(
                    "cluster: cut off from Redis for %.0f s: closing clients",
                    self.config.heartbeat_timeout,
                )
                for session in list(self.sessions.open if self.sessions is not None else ()):
                    session.close(CloseCode.SERVICE_RESTART)
            fenced = cut_off

    async def _resume(self, link: RedisLink, pubsub: ShardedPubSub) -> None:
        """Subscribe again to every room of `link` after its subscriber was cut off; check each.

        A room Redis lost is restored and one restored by another node is new to
        this node: either way its members here are closed 1012. A room whose
        events went on meanwhile must deliver them now; if they never come, they
        were lost with the connection, and its members here are closed 1012 too
        (CLUSTER.md guarantee 10): they rejoin and recover with `since`.
        """
        rooms = [
            room
            for room in self.rooms.values()
            if not room.deleted and self.link_of(room.room_id) is link
        ]
        for room in rooms:
            for joining in room.joining.values():  # its own event may be lost: start over
                assert isinstance(joining.handle, Session)
                joining.handle.close(CloseCode.SERVICE_RESTART)
        if not rooms:
            return
        with trio.fail_after(self.config.cluster_timeout):
            await pubsub.subscribe(*(ops.room_key(room.room_id) for room in rooms))
            async with link.redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hmget(ops.room_key(room.room_id), ["epoch", "event"])
        run_id = await link.redis_run_id()
        restarted, link.run_id = run_id != link.run_id, run_id
        if restarted:
            await link.load_library()  # a Redis without persistence lost them
        behind: list[tuple[SharedRoom, int]] = []
        lost: list[SharedRoom] = []
        for room, (epoch, event) in zip(rooms, pipe.results or (), strict=True):
            ready = link.subscribed[room.room_id] = trio.Event()
            ready.set()
            if epoch is None and not restarted:
                # Deleted meanwhile: its members here missed the roomDeleted.
                log.warning("room %s: deleted while unsubscribed", room_tag(room.room_id))
                self._close_members(room)
            elif epoch is None or ops.text(epoch) != room.epoch:
                lost.append(room)
            elif room.position is not None and int(event) > room.position:
                behind.append((room, int(event)))
        await self._restore_lost_rooms(link, lost)
        if behind:
            assert self._tasks is not None
            self._tasks.start_soon(self._catch_up, behind)

    async def _catch_up(self, behind: list[tuple[SharedRoom, int]]) -> None:
        await trio.sleep(CATCH_UP)
        for room, event in behind:
            position = room.position
            if not room.deleted and position is not None and position < event:
                self._perform(room, [Gap(position, event + 1)])

    async def _restore_lost_rooms(self, link: RedisLink, rooms: list[SharedRoom]) -> None:
        """Close this node's members of `rooms`, which are lost here, restoring the missing.

        A room Redis no longer holds comes back empty, with a new epoch and a
        seq above every seq this node delivered (the first node to restore it
        creates it, the others only raise its seq), so its members, who rejoin,
        see `recovered: false` across the loss and never a repeated seq.
        """
        for room in rooms:
            restore = ops.restore(
                room.room_id,
                host=room.host,
                encrypted_room_key=room.encrypted_room_key,
                key_epoch=room.key_epoch,
                epoch=new_epoch(),
                prefix=room.prefix,
                seq=room.seq,
            )
            with contextlib.suppress(*REDIS_FAILED), trio.fail_after(self.config.cluster_timeout):
                await link.redis.fcall(restore.function, keys=restore.keys, args=list(restore.args))
            log.warning("room %s: lost by Redis or restored elsewhere", room_tag(room.room_id))
            self._close_members(room)

    def _close_members(self, room: SharedRoom) -> None:
        for member in room.members():
            assert isinstance(member, Session)
            member.close(CloseCode.SERVICE_RESTART)
        room.deleted = True

    # -- what connections ask ----------------------------------------------------

    async def counted_elsewhere(self, room_id: str, host: str | None) -> tuple[int, int]:
        """Return the rooms, and those `host` hosts, on every Redis but `room_id`'s.

        Each Redis counts its own rooms; a creation adds the others' counts, read
        just before (not atomically: two creations at once on two Redis
        instances may both fit where only one should).
        """
        rooms = hosted = 0
        for link in self.links:
            if link is self.link_of(room_id):
                continue
            with trio.fail_after(self.config.cluster_timeout):
                rooms += await link.redis.zcard("roomd:rooms")
                if host is not None:
                    hosted += int(await link.redis.hget("roomd:hosted", host) or 0)
        return rooms, hosted

    async def create(self, action: CreateRoom, room_id: str, epoch: str, prefix: str) -> bool:
        """Create room `room_id` for `action`'s creator; False when the id is taken.

        Raises `ProtocolError` (a room quota, or `unavailable`).
        """
        config = self.config
        try:
            elsewhere = await self.counted_elsewhere(room_id, action.aid)
        except REDIS_FAILED:
            raise unavailable() from None
        reply = await self.call(
            ops.create(
                room_id,
                self.op(),
                host=action.aid,
                encrypted_room_key=action.encrypted_room_key,
                epoch=epoch,
                prefix=prefix,
                max_rooms=config.max_rooms,
                max_rooms_per_aid=config.max_rooms_per_aid,
                by_api=False,
                elsewhere=elsewhere,
            )
        )
        if isinstance(reply, ops.Refused):
            raise reply.error
        if isinstance(reply, ops.Late):
            raise unavailable()
        if isinstance(reply, ops.Exists):
            return False
        log.info("room %s created", room_tag(room_id))
        return True

    async def join(self, session: Session, action: JoinRoom) -> None:
        """Ask Redis to add `session` to the room; the reply or the room's events answer it."""
        room_id = action.room_id
        room = self.rooms.get(room_id)
        if room is None or room.deleted:  # a deleted (or lost) one starts afresh
            room = self.rooms[room_id] = SharedRoom(room_id, self.config.history_policy())
        conn_id = self.conn_id(session)
        room.expect_join(conn_id, session, action.aid, action.request_id, action.since)
        try:
            await self.link_of(room_id).subscribe(room_id)
        except REDIS_FAILED:
            room.join_refused(conn_id)
            session.connection.join_settled(room_id)
            session.send(ev.error(unavailable(), action.request_id, room_id))
            return
        if session.connection.close_code is not None:
            # Closed while subscribing: its leave is already queued, ahead of this join.
            room.join_refused(conn_id)
            session.connection.join_settled(room_id)
            return
        call = ops.join(
            room_id,
            self.op(),
            conn=conn_id,
            aid=action.aid,
            public_key=action.public_key,
            max_members=self.config.max_members,
            since=action.since,
            recovery_limit=self.config.recovery_limit,
        )

        def done(reply: ops.Reply) -> None:
            session.connection.join_settled(room_id)
            if isinstance(reply, ops.Applied):
                snapshot = ops.read_snapshot(room_id, reply)
                self._perform(room, room.join_applied(conn_id, snapshot, self.wall_ms()))
                return
            room.join_refused(conn_id)
            error = reply.error if isinstance(reply, ops.Refused) else unavailable()
            session.send(ev.error(error, action.request_id, room_id))

        self.submit(call, done)

    async def act(self, session: Session, msg: m.RoomMessage) -> None:
        """Send member `session`'s room message `msg` (not a join) to Redis."""
        room = self.rooms.get(msg.room_id)
        if isinstance(msg, m.GetHistory):
            await self._history(session, msg, room)
            return
        if isinstance(msg, m.LeaveChatroom):
            if room is not None:
                room.expect_leave(session, msg.id)
            call = ops.leave(
                msg.room_id, self.op(), conn=self.conn_id(session), reason="left", asked=True
            )
        else:
            call = ops.act(
                msg,
                self.op(),
                conn=self.conn_id(session),
                history_size=self.config.history_size,
                max_members=self.config.max_members,
            )

        def done(reply: ops.Reply) -> None:
            if isinstance(reply, ops.Applied):
                if isinstance(msg, m.Unban):
                    session.send(ev.unbanned(msg.room_id, msg.aid, msg.id))
                return
            if room is not None:
                room.leaving.pop(session, None)
            error = reply.error if isinstance(reply, ops.Refused) else unavailable()
            session.send(ev.error(error, msg.id, msg.room_id))

        self.submit(call, done)

    def leave_all(self, session: Session) -> None:
        """Take closed `session` out of every room it was in or joining."""
        connection = session.connection
        for room_id in connection.member_of:
            call = ops.leave(
                room_id,
                self.op(),
                conn=self.conn_id(session),
                reason=connection.leave_reason,
                asked=False,
            )
            self.submit(call, _ignore)

    async def _history(self, session: Session, msg: m.GetHistory, room: SharedRoom | None) -> None:
        if room is None or session not in room.aids:
            error = ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room '{msg.room_id}'")
            session.send(ev.error(error, msg.id, msg.room_id))
            return
        try:
            page = await self.history_page(msg.room_id, room.epoch, room.prefix, msg)
        except REDIS_FAILED:
            session.send(ev.error(unavailable(), msg.id, msg.room_id))
            return
        session.send(page)

    async def history_page(self, room_id: str, epoch: str, prefix: str, msg: m.GetHistory) -> Event:
        """Return the `history` reply to `msg`, read from the room's stream."""
        policy = self.config.history_policy()
        newest: list[StoredMessage] = []
        if policy.on:
            top = "+" if msg.before is None else f"{msg.before - 1}-0"
            raw: tuple[StreamEntry, ...] = ()
            if msg.before is None or msg.before > 1:
                with trio.fail_after(self.config.cluster_timeout):
                    raw = await self.link_of(room_id).redis.xrevrange(
                        ops.stream_key(room_id), top, "-", count=msg.limit + 1
                    )
            oldest = policy.oldest_ts(self.wall_ms())
            stored = [
                ops.stored_message(
                    room_id,
                    prefix,
                    entry.identifier,
                    entry.field_values[b"a"],
                    entry.field_values[b"t"],
                    entry.field_values[b"b"],
                )
                for entry in raw
            ]
            newest = [message for message in reversed(stored) if message.ts >= oldest]
        return history_page(room_id, epoch, msg, newest)

    # -- effects -----------------------------------------------------------------

    def _perform(self, room: SharedRoom, effects: list[Effect | Gap]) -> None:
        # A gap, if any, ends the list (SharedRoom stops there).
        gap = effects[-1] if effects and isinstance(effects[-1], Gap) else None
        perform(room.room_id, [e for e in effects if not isinstance(e, Gap)], self.stats)
        if gap is not None:
            log.warning(
                "room %s: events %d..%d lost; closing its members here",
                room_tag(room.room_id),
                gap.after + 1,
                gap.got - 1,
            )
            self._close_members(room)


def _ignore(reply: ops.Reply) -> None:
    return None
