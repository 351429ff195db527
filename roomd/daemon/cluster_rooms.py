"""Rooms shared through Redis: this node's side of the cluster (CLUSTER.md).

With `--cluster`, no room lives in this process. Redis holds every room and
decides every change in one atomic function call (roomd/cluster/functions.py);
this node sends its connections' room operations there and delivers the
rooms' events to its own members:

    ClusterRooms.run
    └── cluster nursery
        ├── sender   : every queued call of one scheduler turn, as one pipeline
        ├── listener : the sharded subscription; each room event to its SharedRoom
        ├── reaper   : unsubscribes from rooms this node no longer has members in
        ├── expiry   : asks Redis, now and then, to delete rooms empty for room_ttl
        ├── liveness : refreshes this node's key (TTL heartbeat_timeout); cut off
        │              from Redis for heartbeat_timeout, it closes its clients 1012
        └── sweeper  : takes the connections of nodes whose key expired out of
                       their rooms, once this node has been connected that long

Order: calls go out in the order they were made, one pipeline at a time, so
a connection's messages keep their order; each room's events are applied in
event-number order (SharedRoom). A join subscribes to the room's channel
before it asks Redis, so its node sees every event after the join.

Node failure (CLUSTER.md guarantee 7): Redis knows which node holds each
member connection (`<node>/<n>`). A node whose liveness key expired is dead:
the survivors remove its connections (`roomd_sweep`: `userLeft
disconnected`, host transfer), within 1.5 x heartbeat_timeout of its last
refresh. A node that starts sweeps what an earlier process of the same
`--node-id` left behind.

When Redis does not answer within `cluster_timeout`, the operation is
answered `error unavailable` with `retryAfter`; its deadline (the same
timeout, checked by Redis on its own clock) keeps it from applying later.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable

import attrs
import coredis
import coredis.exceptions
import trio
from coredis.response.types import StreamEntry

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.functions import EXPIRE, LIBRARY, SWEEP
from roomd.cluster.shared_room import Gap, SharedRoom
from roomd.config import Config
from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.connection import CreateRoom, JoinRoom
from roomd.core.event import Event
from roomd.core.room import Attached, Detached, Effect, Send, room_tag
from roomd.core.stats import Stats
from roomd.daemon.outbox import fan_out
from roomd.daemon.registry import new_epoch
from roomd.daemon.session import Session, Sessions
from roomd.errors import CloseCode, ErrorCode, ProtocolError

log = logging.getLogger("roomd.cluster")

# How often rooms this node has no member in are unsubscribed (CLUSTER.md: within 1 s).
REAP_EVERY = 0.5
# Most rooms one expiry call deletes.
EXPIRE_BATCH = 100
# After a reconnect, how long a room's events that went on meanwhile may take to arrive.
CATCH_UP = 1.0
# How soon a call Redis did not answer is asked again (with the same operation id).
RETRY_EVERY = 0.1
# What a client is told to wait before trying again after `unavailable`.
RETRY_AFTER = 1.0

Done = Callable[[ops.Reply], None]
# What a call to Redis raises when Redis is unreachable or too slow.
REDIS_FAILED = (trio.TooSlowError, coredis.exceptions.RedisError, OSError)
# The set of every node that ever refreshed its liveness key (and was not swept).
NODES_KEY = "roomd:nodes"
# Set when the functions are loaded: gone, Redis has lost its data (and them).
LIBRARY_KEY = "roomd:library"


def _library_missing(result: object) -> bool:
    return (
        isinstance(result, coredis.exceptions.ResponseError)
        and "function not found" in str(result).lower()
    )


def unavailable() -> ProtocolError:
    """Return the error for an operation the cluster's Redis did not answer in time."""
    return ProtocolError(
        ErrorCode.UNAVAILABLE, "the cluster's Redis is unreachable", retry_after=RETRY_AFTER
    )


class AnyRoom:
    """Every room id, as far as a connection can tell: Redis says which exist."""

    def __contains__(self, room_id: object) -> bool:
        return True


@attrs.define(eq=False)
class ClusterRooms:
    """This node's connections' rooms, shared with every node through one Redis."""

    config: Config
    redis: coredis.Redis[bytes]
    node_id: str
    stats: Stats
    wall_ms: Callable[[], int]
    # Rooms this node has members in (or joining), by id.
    rooms: dict[str, SharedRoom] = attrs.field(factory=dict)
    # Rooms subscribed (or being subscribed): set once Redis confirmed.
    subscribed: dict[str, trio.Event] = attrs.field(factory=dict)
    _queue: list[tuple[ops.Call, Done]] = attrs.field(factory=list)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _pubsub: ShardedPubSub | None = None
    _tasks: trio.Nursery | None = None
    # Redis's run_id: another one means Redis restarted (and may have lost rooms).
    _run_id: str = ""
    # Set while the subscriber's connection is up.
    _pubsub_ready: trio.Event = attrs.field(factory=trio.Event)
    _op_ids: itertools.count[int] = attrs.field(factory=itertools.count)
    # Every open connection of this node (closed 1012 when cut off from the cluster).
    sessions: Sessions | None = None
    # trio time of the last liveness refresh Redis took, and since when that has
    # gone on without a miss (the sweeper waits for heartbeat_timeout of it).
    _refreshed: float = -math.inf
    _connected_since: float = math.inf

    # -- running ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the functions, subscribe, and serve calls and events until cancelled."""
        await self._load_library()
        self._run_id = await self._redis_run_id()
        await self._sweep(self.node_id)  # what an earlier process of this node left
        await self._refresh()
        async with trio.open_nursery() as tasks:
            self._tasks = tasks
            await tasks.start(self._keep_subscribed)
            tasks.start_soon(self._send_calls)
            tasks.start_soon(self._reap)
            tasks.start_soon(self._expire)
            tasks.start_soon(self._keep_alive)
            tasks.start_soon(self._sweep_dead)
            task_status.started()

    def op(self) -> tuple[int, str]:
        """Return a fresh (deadline, operation id) for one call."""
        deadline = self.wall_ms() + round(self.config.cluster_timeout * 1000)
        return deadline, f"{self.node_id}-{next(self._op_ids)}"

    def conn_id(self, session: Session) -> str:
        """Return the id by which Redis knows `session`: `<node>/<n>`."""
        return f"{self.node_id}/{session.conn_id}"

    def submit(self, call: ops.Call, done: Done) -> None:
        """Queue `call`; `done` gets Redis's reply (or `unavailable`) in call order."""
        self._queue.append((call, done))
        self._wake.set()

    async def call(self, call: ops.Call) -> ops.Reply:
        """Make `call` and return its reply (queued and batched like every other)."""
        got: list[ops.Reply] = []
        answered = trio.Event()

        def done(reply: ops.Reply) -> None:
            got.append(reply)
            answered.set()

        self.submit(call, done)
        await answered.wait()
        return got[0]

    async def _send_calls(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue, []
            replies = await self._pipeline([call for call, _ in batch])
            for index, (_, done) in enumerate(batch):
                done(replies[index] if replies else ops.Refused(unavailable()))

    async def _pipeline(self, calls: list[ops.Call]) -> list[ops.Reply] | None:
        """Make `calls` in one round trip; None when Redis gave no answer in cluster_timeout.

        A failed attempt is repeated with the same operation ids, so a call Redis
        applied before its reply was lost is answered with that reply, and one it
        never got is applied once, or refused as late.
        """
        give_up = trio.current_time() + self.config.cluster_timeout
        while True:
            try:
                with trio.fail_at(give_up):
                    async with self.redis.pipeline(transaction=False, raise_on_error=False) as pipe:
                        for call in calls:
                            pipe.fcall(call.function, keys=call.keys, args=list(call.args))
                results = pipe.results or ()
                if not any(_library_missing(result) for result in results):
                    return [self._reply(result) for result in results]
                log.warning("cluster: Redis has lost its data: loading the functions again")
                with contextlib.suppress(*REDIS_FAILED):
                    await self._load_library()
            except REDIS_FAILED as exc:
                if trio.current_time() >= give_up:
                    log.warning("cluster: %d calls unanswered: %s", len(calls), type(exc).__name__)
                    return None
            await trio.sleep(RETRY_EVERY)

    async def _keep_subscribed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the subscriber connection, and connect it again whenever it drops.

        Meanwhile joins wait (up to cluster_timeout) and members stay; once it is
        back, every room is subscribed again and checked (`_resume`).
        """
        started = False
        while True:
            try:
                async with ShardedPubSub(self.redis.connection_pool, retry_policy=None) as pubsub:
                    if started:
                        await self._resume(pubsub)
                    self._pubsub = pubsub
                    self._pubsub_ready.set()
                    if not started:
                        task_status.started()
                        started = True
                    await self._listen(pubsub)
            except Exception as exc:  # the subscriber's connection failed, however it says so
                if not started:
                    raise  # never connected: the node cannot start
                log.warning("cluster: subscriber connection lost: %s", type(exc).__name__)
            if self._pubsub_ready.is_set():
                self._pubsub, self._pubsub_ready = None, trio.Event()
                self.subscribed.clear()
            await trio.sleep(RETRY_EVERY)

    async def _resume(self, pubsub: ShardedPubSub) -> None:
        """Subscribe again to every room after the subscriber was cut off, and check each.

        A room Redis lost is restored and one restored by another node is new to
        this node: either way its members here are closed 1012. A room whose
        events went on meanwhile must deliver them now; if they never come, they
        were lost with the connection, and its members here are closed 1012 too
        (CLUSTER.md guarantee 10): they rejoin and recover with `since`.
        """
        rooms = [room for room in self.rooms.values() if not room.deleted]
        for room in rooms:
            for joining in room.joining.values():  # its own event may be lost: start over
                assert isinstance(joining.handle, Session)
                joining.handle.close(CloseCode.SERVICE_RESTART)
        if not rooms:
            return
        with trio.fail_after(self.config.cluster_timeout):
            await pubsub.subscribe(*(ops.room_key(room.room_id) for room in rooms))
            async with self.redis.pipeline(transaction=False) as pipe:
                for room in rooms:
                    pipe.hmget(ops.room_key(room.room_id), ["epoch", "event"])
        run_id = await self._redis_run_id()
        restarted, self._run_id = run_id != self._run_id, run_id
        if restarted:
            await self._load_library()  # a Redis without persistence lost them
        behind: list[tuple[SharedRoom, int]] = []
        lost: list[SharedRoom] = []
        for room, (epoch, event) in zip(rooms, pipe.results or (), strict=True):
            ready = self.subscribed[room.room_id] = trio.Event()
            ready.set()
            if epoch is None and not restarted:
                # Deleted meanwhile: its members here missed the roomDeleted.
                self._perform(room, [Gap(room.position or 0, -1)])
            elif epoch is None or ops.text(epoch) != room.epoch:
                lost.append(room)
            elif room.position is not None and int(event) > room.position:
                behind.append((room, int(event)))
        await self._restore_lost_rooms(lost)
        if behind:
            assert self._tasks is not None
            self._tasks.start_soon(self._catch_up, behind)

    async def _redis_run_id(self) -> str:
        with trio.fail_after(self.config.cluster_timeout):
            info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    async def _catch_up(self, behind: list[tuple[SharedRoom, int]]) -> None:
        await trio.sleep(CATCH_UP)
        for room, event in behind:
            position = room.position
            if not room.deleted and position is not None and position < event:
                self._perform(room, [Gap(position, event + 1)])

    def _close_members(self, room: SharedRoom) -> None:
        for member in room.members():
            assert isinstance(member, Session)
            member.close(CloseCode.SERVICE_RESTART)
        room.deleted = True

    @staticmethod
    def _reply(result: object) -> ops.Reply:
        if isinstance(result, Exception):  # a bug in a function: refuse, say so, go on
            log.error("cluster: a roomd function failed: %s", result)
            error = ProtocolError(ErrorCode.INTERNAL, "the cluster could not apply this")
            return ops.Refused(error)
        return ops.read_reply(result)

    async def _listen(self, pubsub: ShardedPubSub) -> None:
        prefix, suffix = len("roomd:{"), -1
        while True:
            message = await pubsub.get_message()
            if message is None or message["type"] != "message":
                continue
            channel = ops.text(message["channel"])
            room = self.rooms.get(channel[prefix:suffix])
            if room is None:
                continue
            self.stats.cluster_events_in += 1
            data = message["data"]
            assert isinstance(data, bytes)
            self._perform(room, room.receive(ops.decode_event(data)))

    async def _reap(self) -> None:
        while True:
            await trio.sleep(REAP_EVERY)
            for room_id in [r for r, room in self.rooms.items() if room.idle or room.deleted]:
                del self.rooms[room_id]
            for room_id in [r for r in self.subscribed if r not in self.rooms]:
                pubsub = self._pubsub
                if room_id in self.rooms or room_id not in self.subscribed or pubsub is None:
                    continue  # joined again meanwhile, or the subscriber is reconnecting
                del self.subscribed[room_id]
                with contextlib.suppress(*REDIS_FAILED):
                    await pubsub.unsubscribe(ops.room_key(room_id))

    async def _expire(self) -> None:
        ttl_ms = round(self.config.room_ttl * 1000)
        every = min(5.0, self.config.room_ttl / 10)
        while True:
            await trio.sleep(every)
            try:
                with trio.fail_after(self.config.cluster_timeout):
                    expired = await self.redis.fcall(EXPIRE, keys=[], args=[ttl_ms, EXPIRE_BATCH])
            except REDIS_FAILED:
                continue
            assert isinstance(expired, list)
            for room_id in expired:
                log.info("room %s deleted (expired)", room_tag(ops.text(room_id)))

    async def _load_library(self) -> None:
        """Load the `roomd` functions (again: a Redis that restarted without data lost them)."""
        await self.redis.function_load(LIBRARY, replace=True)
        await self.redis.set(LIBRARY_KEY, b"1")

    async def _refresh(self) -> bool:
        """Refresh this node's liveness key; return whether Redis took it."""
        ttl_ms = round(self.config.heartbeat_timeout * 1000)
        try:
            with trio.fail_after(self.config.cluster_timeout):
                if not await self.redis.exists([LIBRARY_KEY]):
                    log.warning("cluster: Redis has lost its data: loading the functions again")
                    await self._load_library()
                await self.redis.set(ops.node_key(self.node_id), b"1", px=ttl_ms)
                await self.redis.sadd(NODES_KEY, [self.node_id])
        except REDIS_FAILED:
            self._connected_since = math.inf
            return False
        now = trio.current_time()
        self._connected_since = min(self._connected_since, now)
        self._refreshed = now
        return True

    async def _keep_alive(self) -> None:
        timeout = self.config.heartbeat_timeout
        fenced = False
        while True:
            await trio.sleep(timeout / 4)
            if await self._refresh():
                fenced = False
            elif not fenced and trio.current_time() - self._refreshed >= timeout:
                # The survivors may have removed this node's members by now.
                fenced = True
                log.warning("cluster: cut off from Redis for %.0f s: closing clients", timeout)
                self._close_everyone()

    async def _restore_lost_rooms(self, rooms: list[SharedRoom]) -> None:
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
                await self.redis.fcall(restore.function, keys=restore.keys, args=list(restore.args))
            log.warning("room %s: lost by Redis or restored elsewhere", room_tag(room.room_id))
            self._close_members(room)

    def _close_everyone(self) -> None:
        for session in list(self.sessions.open if self.sessions is not None else ()):
            session.close(CloseCode.SERVICE_RESTART)

    async def _sweep_dead(self) -> None:
        timeout = self.config.heartbeat_timeout
        while True:
            await trio.sleep(timeout / 2)
            if trio.current_time() - self._connected_since < timeout:
                continue  # after an outage, give the others time to refresh first
            try:
                with trio.fail_after(self.config.cluster_timeout):
                    known = await self.redis.smembers(NODES_KEY)
                    for raw in known:
                        node = ops.text(raw)
                        if node != self.node_id and not await self.redis.exists(
                            [ops.node_key(node)]
                        ):
                            log.warning("cluster: node %s is gone: removing its members", node)
                            await self._sweep(node)
                            await self.redis.srem(NODES_KEY, [node])
            except REDIS_FAILED:
                continue

    async def _sweep(self, node: str) -> None:
        """Take every connection `node` holds out of its rooms (`userLeft disconnected`)."""
        with trio.fail_after(self.config.cluster_timeout):
            rooms = await self.redis.smembers(ops.node_rooms_key(node))
            for room_id in rooms:
                await self.redis.fcall(SWEEP, keys=[ops.room_key(ops.text(room_id))], args=[node])

    async def _subscribe(self, room_id: str) -> None:
        """Return once this node is subscribed to `room_id`'s channel; raises if it cannot be."""
        with trio.fail_after(self.config.cluster_timeout):
            ready = self.subscribed.get(room_id)
            if ready is not None:
                await ready.wait()
                return
            ready = self.subscribed[room_id] = trio.Event()
            try:
                await self._pubsub_ready.wait()  # the subscriber may be reconnecting
                assert self._pubsub is not None
                await self._pubsub.subscribe(ops.room_key(room_id))
            except BaseException:
                if self.subscribed.get(room_id) is ready:
                    del self.subscribed[room_id]
                raise
            finally:
                ready.set()

    # -- what connections ask ----------------------------------------------------

    async def create(self, action: CreateRoom, room_id: str, epoch: str, prefix: str) -> bool:
        """Create room `room_id` for `action`'s creator; False when the id is taken.

        Raises `ProtocolError` (a room quota, or `unavailable`).
        """
        config = self.config
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
            await self._subscribe(room_id)
        except REDIS_FAILED:
            room.join_refused(conn_id)
            session.connection.join_settled(room_id)
            session.send(ev.error(unavailable(), action.request_id, room_id))
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
        entries: list[Event] = []
        more = False
        if policy.on:
            top = "+" if msg.before is None else f"{msg.before - 1}-0"
            raw: tuple[StreamEntry, ...] = ()
            if msg.before is None or msg.before > 1:
                with trio.fail_after(self.config.cluster_timeout):
                    raw = await self.redis.xrevrange(
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
            stored = [message for message in reversed(stored) if message.ts >= oldest]
            more = len(stored) > msg.limit
            page = stored[1:] if more else stored
            entries = [message.page_entry() for message in page]
        return ev.history(room_id, epoch, entries, more, msg.id)

    # -- effects -----------------------------------------------------------------

    def _perform(self, room: SharedRoom, effects: list[Effect | Gap]) -> None:
        room_id = room.room_id
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
                case Gap(after, got):
                    log.warning(
                        "room %s: events %d..%d lost; closing its members here",
                        room_tag(room_id),
                        after + 1,
                        got - 1,
                    )
                    for member in room.members():
                        assert isinstance(member, Session)
                        member.close(CloseCode.SERVICE_RESTART)
                    room.deleted = True


def _ignore(reply: ops.Reply) -> None:
    return None
