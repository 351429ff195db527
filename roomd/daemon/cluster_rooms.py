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
        └── expiry   : asks Redis, now and then, to delete rooms empty for room_ttl

Order: calls go out in the order they were made, one pipeline at a time, so
a connection's messages keep their order; each room's events are applied in
event-number order (SharedRoom). A join subscribes to the room's channel
before it asks Redis, so its node sees every event after the join.

When Redis does not answer within `cluster_timeout`, the operation is
answered `error unavailable` with `retryAfter`; its deadline (the same
timeout, checked by Redis on its own clock) keeps it from applying later.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import attrs
import coredis
import coredis.exceptions
import trio
from coredis.response.types import StreamEntry

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.functions import EXPIRE, LIBRARY
from roomd.cluster.shared_room import Gap, SharedRoom
from roomd.config import Config
from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.connection import CreateRoom, JoinRoom
from roomd.core.event import Event
from roomd.core.room import Attached, Detached, Effect, Send, room_tag
from roomd.core.stats import Stats
from roomd.daemon.outbox import fan_out
from roomd.daemon.session import Session
from roomd.errors import CloseCode, ErrorCode, ProtocolError

log = logging.getLogger("roomd.cluster")

# How often rooms this node has no member in are unsubscribed (CLUSTER.md: within 1 s).
REAP_EVERY = 0.5
# Most rooms one expiry call deletes.
EXPIRE_BATCH = 100
# What a client is told to wait before trying again after `unavailable`.
RETRY_AFTER = 1.0

Done = Callable[[ops.Reply], None]


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
    _op_ids: itertools.count[int] = attrs.field(factory=itertools.count)

    # -- running ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the functions, subscribe, and serve calls and events until cancelled."""
        await self.redis.function_load(LIBRARY, replace=True)
        async with (
            ShardedPubSub(self.redis.connection_pool) as pubsub,
            trio.open_nursery() as tasks,
        ):
            self._pubsub = pubsub
            tasks.start_soon(self._send_calls)
            tasks.start_soon(self._listen, pubsub)
            tasks.start_soon(self._reap, pubsub)
            tasks.start_soon(self._expire)
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
        timeout = self.config.cluster_timeout
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._queue = self._queue, []
            replies: list[ops.Reply] = []
            try:
                with trio.fail_after(timeout):
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for call, _ in batch:
                            pipe.fcall(call.function, keys=call.keys, args=list(call.args))
                    replies = [ops.read_reply(raw) for raw in pipe.results or ()]
            except (trio.TooSlowError, coredis.exceptions.RedisError, OSError) as exc:
                log.warning("cluster: %d calls failed: %s", len(batch), type(exc).__name__)
            for index, (_, done) in enumerate(batch):
                done(replies[index] if index < len(replies) else ops.Refused(unavailable()))

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

    async def _reap(self, pubsub: ShardedPubSub) -> None:
        while True:
            await trio.sleep(REAP_EVERY)
            for room_id in [r for r, room in self.rooms.items() if room.idle or room.deleted]:
                del self.rooms[room_id]
            for room_id in [r for r in self.subscribed if r not in self.rooms]:
                if room_id in self.rooms or room_id not in self.subscribed:
                    continue  # joined again while an earlier one was unsubscribed
                del self.subscribed[room_id]
                await pubsub.unsubscribe(ops.room_key(room_id))

    async def _expire(self) -> None:
        ttl_ms = round(self.config.room_ttl * 1000)
        every = min(5.0, self.config.room_ttl / 10)
        while True:
            await trio.sleep(every)
            try:
                with trio.fail_after(self.config.cluster_timeout):
                    expired = await self.redis.fcall(EXPIRE, keys=[], args=[ttl_ms, EXPIRE_BATCH])
            except (trio.TooSlowError, coredis.exceptions.RedisError, OSError):
                continue
            assert isinstance(expired, list)
            for room_id in expired:
                log.info("room %s deleted (expired)", room_tag(ops.text(room_id)))

    async def _subscribe(self, room_id: str) -> None:
        ready = self.subscribed.get(room_id)
        if ready is not None:
            await ready.wait()
            return
        assert self._pubsub is not None, "run() subscribes first"
        ready = self.subscribed[room_id] = trio.Event()
        try:
            with trio.fail_after(self.config.cluster_timeout):
                await self._pubsub.subscribe(ops.room_key(room_id))
        except BaseException:
            del self.subscribed[room_id]
            ready.set()
            raise
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
        if room is None:
            room = self.rooms[room_id] = SharedRoom(room_id, self.config.history_policy())
        conn_id = self.conn_id(session)
        room.expect_join(conn_id, session, action.aid, action.request_id, action.since)
        try:
            await self._subscribe(room_id)
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError):
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
        except (trio.TooSlowError, coredis.exceptions.RedisError, OSError):
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
