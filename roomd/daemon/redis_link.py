"""One Redis of the cluster, as a node holds it: calls, the subscriber, liveness, upkeep.

    RedisLink.run
    └── link nursery
        ├── sender     : every call queued in one scheduler turn, as one pipeline
        ├── subscriber : the sharded subscription, connected again whenever it drops
        ├── liveness   : refreshes this node's key on this Redis (TTL heartbeat_timeout)
        ├── sweeper    : removes the members of nodes whose key expired here, once
        │                this node has been connected for heartbeat_timeout
        └── expiry     : asks this Redis, now and then, to delete rooms empty for room_ttl

Calls go out in the order they were made, one pipeline at a time, so a
connection's operations keep their order. A call Redis did not answer is
asked again with the same operation id until `cluster_timeout`: a reply that
was lost is learned, not repeated. What the events mean, and which rooms to
check after a reconnect, is the owner's (`ClusterRooms`): the link hands it
every channel message and every reconnect.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Awaitable, Callable

import attrs
import coredis
import coredis.exceptions
import trio

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.functions import EXPIRE, LIBRARY, SWEEP
from roomd.config import Config
from roomd.core.room import room_tag
from roomd.errors import ErrorCode, ProtocolError

log = logging.getLogger("roomd.cluster")

# Most rooms one expiry call deletes.
EXPIRE_BATCH = 100
# How soon a call Redis did not answer is asked again (with the same operation id).
RETRY_EVERY = 0.1
# What a client is told to wait before trying again after `unavailable`.
RETRY_AFTER = 1.0
# What a call to Redis raises when Redis is unreachable or too slow.
REDIS_FAILED = (trio.TooSlowError, coredis.exceptions.RedisError, OSError)
# The set of every node that ever refreshed its liveness key here (and was not swept).
NODES_KEY = "roomd:nodes"
# Set when the functions are loaded: gone, Redis has lost its data (and them).
LIBRARY_KEY = "roomd:library"

Done = Callable[[ops.Reply], None]
# (the link, the room id, the channel message's data)
OnMessage = Callable[["RedisLink", str, bytes], None]
# Called with the link and its new subscriber after the subscriber reconnected.
OnResume = Callable[["RedisLink", ShardedPubSub], Awaitable[None]]


def unavailable() -> ProtocolError:
    """Return the error for an operation the cluster's Redis did not answer in time."""
    return ProtocolError(
        ErrorCode.UNAVAILABLE, "the cluster's Redis is unreachable", retry_after=RETRY_AFTER
    )


def _library_missing(result: object) -> bool:
    return (
        isinstance(result, coredis.exceptions.ResponseError)
        and "function not found" in str(result).lower()
    )


def _reply(result: object) -> ops.Reply:
    if isinstance(result, Exception):  # a bug in a function: refuse, say so, go on
        log.error("cluster: a roomd function failed: %s", result)
        return ops.Refused(ProtocolError(ErrorCode.INTERNAL, "the cluster could not apply this"))
    return ops.read_reply(result)


@attrs.define(eq=False)
class RedisLink:
    """This node's connection to one Redis of the cluster."""

    config: Config
    redis: coredis.Redis[bytes]
    node_id: str
    on_message: OnMessage
    on_resume: OnResume
    # Rooms subscribed (or being subscribed) here: set once Redis confirmed.
    subscribed: dict[str, trio.Event] = attrs.field(factory=dict)
    # Redis's run_id: another one means Redis restarted (and may have lost rooms).
    run_id: str = ""
    _queue: list[tuple[ops.Call, Done]] = attrs.field(factory=list)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _pubsub: ShardedPubSub | None = None
    # Set while the subscriber's connection is up.
    _pubsub_ready: trio.Event = attrs.field(factory=trio.Event)
    # trio time of the last liveness refresh Redis took, and since when refreshes
    # have gone on without a miss (the sweeper waits for heartbeat_timeout of it).
    _refreshed: float = -math.inf
    _connected_since: float = math.inf

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the functions, connect the subscriber, and serve until cancelled."""
        await self.load_library()
        self.run_id = await self.redis_run_id()
        await self._sweep(self.node_id)  # what an earlier process of this node left
        await self._refresh()
        async with trio.open_nursery() as tasks:
            await tasks.start(self._keep_subscribed)
            tasks.start_soon(self._send_calls)
            tasks.start_soon(self._keep_alive)
            tasks.start_soon(self._sweep_dead)
            tasks.start_soon(self._expire)
            task_status.started()

    @property
    def cut_off(self) -> bool:
        """True when this node has not refreshed its liveness here for heartbeat_timeout."""
        return trio.current_time() - self._refreshed >= self.config.heartbeat_timeout

    # -- calls -----------------------------------------------------------------

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
                    return [_reply(result) for result in results]
                log.warning("cluster: Redis has lost its data: loading the functions again")
                with contextlib.suppress(*REDIS_FAILED):
                    await self.load_library()
            except REDIS_FAILED as exc:
                if trio.current_time() >= give_up:
                    log.warning("cluster: %d calls unanswered: %s", len(calls), type(exc).__name__)
                    return None
            await trio.sleep(RETRY_EVERY)

    async def load_library(self) -> None:
        """Load the `roomd` functions (again: a Redis that restarted without data lost them)."""
        await self.redis.function_load(LIBRARY, replace=True)
        await self.redis.set(LIBRARY_KEY, b"1")

    async def redis_run_id(self) -> str:
        """Return this Redis's run_id (it changes when Redis restarts)."""
        with trio.fail_after(self.config.cluster_timeout):
            info = await self.redis.info("server")
        return str(info.get("run_id", ""))

    # -- the subscriber ----------------------------------------------------------

    async def _keep_subscribed(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Hold the subscriber connection, and connect it again whenever it drops.

        Meanwhile joins wait (up to cluster_timeout) and members stay; once it is
        back, the owner subscribes its rooms again and checks them (`on_resume`).
        """
        started = False
        while True:
            try:
                async with ShardedPubSub(
                    self.redis.connection_pool, retry_policy=None, on_message=self._channel_message
                ) as pubsub:
                    if started:
                        await self.on_resume(self, pubsub)
                    self._pubsub = pubsub
                    self._pubsub_ready.set()
                    if not started:
                        task_status.started()
                        started = True
                    await self._listen(pubsub)
            except Exception as exc:  # the subscriber's connection failed, however it says so
                if not started:
                    raise  # never connected: the node cannot start
                # Once per outage, not once per attempt.
                report = log.warning if self._pubsub_ready.is_set() else log.debug
                report("cluster: subscriber connection lost: %s", type(exc).__name__)
            if self._pubsub_ready.is_set():
                self._pubsub, self._pubsub_ready = None, trio.Event()
                self.subscribed.clear()
            await trio.sleep(RETRY_EVERY)

    async def _listen(self, pubsub: ShardedPubSub) -> None:
        while True:  # what is left: (un)subscription confirmations, read lest they pile up
            await pubsub.get_message()

    def _channel_message(self, channel: bytes, data: bytes) -> None:
        self.on_message(self, ops.text(channel)[len("roomd:{") : -1], data)

    async def subscribe(self, room_id: str) -> None:
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

    async def unsubscribe(self, room_id: str) -> None:
        """Stop receiving `room_id`'s events (nothing to do while the subscriber is down)."""
        self.subscribed.pop(room_id, None)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(*REDIS_FAILED):
                await pubsub.unsubscribe(ops.room_key(room_id))

    # -- liveness, the sweep of dead nodes, expiry -----------------------------------

    async def _refresh(self) -> bool:
        """Refresh this node's liveness key; return whether Redis took it."""
        ttl_ms = round(self.config.heartbeat_timeout * 1000)
        try:
            with trio.fail_after(self.config.cluster_timeout):
                if not await self.redis.exists([LIBRARY_KEY]):
                    log.warning("cluster: Redis has lost its data: loading the functions again")
                    await self.load_library()
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
        while True:
            await trio.sleep(self.config.heartbeat_timeout / 4)
            await self._refresh()

    async def _sweep_dead(self) -> None:
        timeout = self.config.heartbeat_timeout
        while True:
            await trio.sleep(timeout / 2)
            if trio.current_time() - self._connected_since < timeout:
                continue  # after an outage, give the others time to refresh first
            try:
                with trio.fail_after(self.config.cluster_timeout):
                    for raw in await self.redis.smembers(NODES_KEY):
                        node = ops.text(raw)
                        if node == self.node_id or await self.redis.exists([ops.node_key(node)]):
                            continue
                        log.warning("cluster: node %s is gone: removing its members", node)
                        await self._sweep(node)
                        await self.redis.srem(NODES_KEY, [node])
            except REDIS_FAILED:
                continue

    async def _sweep(self, node: str) -> None:
        """Take every connection `node` holds here out of its rooms (`userLeft disconnected`)."""
        with trio.fail_after(self.config.cluster_timeout):
            rooms = await self.redis.smembers(ops.node_rooms_key(node))
            for room_id in rooms:
                await self.redis.fcall(SWEEP, keys=[ops.room_key(ops.text(room_id))], args=[node])

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
