"""Random room operations spread over three nodes, checked against one node's `Room`.

The system under test is real: the `roomd` functions in a real redis-server,
three nodes' `SharedRoom`s fed by their own sharded subscriptions. The model
is the core `Room` that a single roomd runs. After every operation, each
connection must have received exactly what it would on one node (CLUSTER.md:
nothing changes meaning in a cluster), `ts` aside (Redis's clock stamps it).
"""

from __future__ import annotations

import itertools
from contextlib import AsyncExitStack
from typing import Any

import attrs
import coredis
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.functions import LIBRARY
from roomd.cluster.shared_room import Gap, SharedRoom
from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.event import Event
from roomd.core.history import HistoryPolicy, StoredMessage
from roomd.core.room import Append, Room, Send
from roomd.errors import ProtocolError

FAR = 2**50
POLICY = HistoryPolicy(size=5, ttl_ms=0, recovery_limit=4)
MAX_MEMBERS = 3
NODES = ("n0", "n1", "n2")
# Connection i: (its node, its AID).
CONNS = (("n0", "A"), ("n1", "A"), ("n1", "B"), ("n2", "C"), ("n0", "D"), ("n2", "B"))
AIDS = ("A", "B", "C", "D")
EPOCH = "E0"
PREFIX = "px"
conn_ix = st.integers(0, len(CONNS) - 1)
aid = st.sampled_from(AIDS)
key_epoch = st.none() | st.integers(0, 2)

JOIN = st.tuples(st.just("join"), conn_ix, st.none() | st.integers(0, 8))
# Joins are drawn most often, so that rooms fill and members act on one another.
OPS = st.one_of(
    JOIN,
    JOIN,
    JOIN,
    JOIN,
    st.tuples(st.just("leave"), conn_ix),
    st.tuples(st.just("disconnect"), conn_ix),
    st.tuples(st.just("message"), conn_ix, key_epoch),
    st.tuples(st.just("typing"), conn_ix, st.booleans()),
    st.tuples(st.just("reaction"), conn_ix),
    st.tuples(st.just("signal"), conn_ix, st.lists(aid, min_size=1, max_size=4)),
    st.tuples(st.just("key"), conn_ix, key_epoch),
    st.tuples(st.just("transfer"), conn_ix, aid),
    st.tuples(st.just("kick"), conn_ix, aid, st.booleans()),
    st.tuples(st.just("unban"), conn_ix, aid),
    st.tuples(st.just("api_kick"), aid, st.booleans()),
    st.tuples(st.just("api_unban"), aid),
)
# A deletion ends a room: at most one, last.
ENDING = st.one_of(
    st.tuples(st.just("delete"), conn_ix), st.tuples(st.just("api_delete")), st.just(None)
)


def stripped(event: Event) -> Event:
    """`event` without its `ts` (the model's clock is not Redis's)."""
    return {k: v for k, v in event.items() if k != "ts"}


def room_message(op: tuple[Any, ...], room_id: str, request_id: int) -> m.RoomMessage:
    """Return the client message a connection's operation sends."""
    match op:
        case ("message", _, key_ep):
            return m.SendMessage(
                room_id=room_id, ciphertext=b"ct%d" % request_id, key_epoch=key_ep, id=request_id
            )
        case ("typing", _, flag):
            return m.Typing(room_id=room_id, is_typing=flag, id=request_id)
        case ("reaction", _):
            return m.Reaction(room_id=room_id, message_id="px1", emoji="+1", id=request_id)
        case ("signal", _, targets):
            entries = tuple(m.SignalTo(to, b"s" + to.encode()) for to in targets)
            return m.Signal(room_id=room_id, signals=entries, id=request_id)
        case ("key", _, key_ep):
            key = b"key%d" % request_id
            return m.UpdateRoomKey(
                room_id=room_id, encrypted_room_key=key, key_epoch=key_ep, id=request_id
            )
        case ("transfer", _, to):
            return m.TransferHost(room_id=room_id, to=to, id=request_id)
        case ("kick", _, target, ban):
            return m.Kick(room_id=room_id, aid=target, ban=ban, id=request_id)
        case ("unban", _, target):
            return m.Unban(room_id=room_id, aid=target, id=request_id)
        case ("delete", _):
            return m.DeleteChatroom(room_id=room_id, id=request_id)
        case ("leave", _):
            return m.LeaveChatroom(room_id=room_id, id=request_id)
    raise AssertionError(op)


@attrs.define
class Model:
    """One node's core `Room`, with its history, and what each connection received."""

    room: Room
    history: list[StoredMessage] = attrs.field(factory=list)
    received: dict[int, list[Event]] = attrs.field(factory=dict)
    api: list[str] = attrs.field(factory=list)

    def run(self, op: tuple[Any, ...], request_id: int) -> None:
        room = self.room
        try:
            match op:
                case ("join", c, since_seq):
                    since = None if since_seq is None else m.Position(EPOCH, since_seq)
                    missed = 0 if room.aid_of(c) is not None else room.missed(since)
                    assert since is not None or not missed
                    after = [s for s in self.history if since and s.seq > since.seq][:missed]
                    effects = room.join(
                        c, CONNS[c][1], b"pk" + CONNS[c][1].encode(), 0, request_id, since, after
                    )
                case ("disconnect", c):
                    effects = room.disconnect(c, "disconnected", 0)
                case ("api_kick", target, ban):
                    effects = room.kick(target, 0, ban=ban)
                    self.api.append("ok")
                case ("api_unban", target):
                    room.unban(target)
                    effects = []
                    self.api.append("ok")
                case ("api_delete",):
                    effects = room.delete("deleted")
                    self.api.append("ok")
                case _:
                    msg = room_message(op, room.room_id, request_id)
                    effects = room.handle(op[1], msg, 0)
        except ProtocolError as exc:
            if op[0].startswith("api_"):
                self.api.append(str(exc.code))
            else:
                self.received.setdefault(op[1], []).append(ev.error(exc, request_id, room.room_id))
            return
        for effect in effects:
            if isinstance(effect, Send):
                for c in effect.to:
                    assert isinstance(c, int)
                    self.received.setdefault(c, []).append(stripped(effect.event))
            elif isinstance(effect, Append):
                self.history = [*self.history, effect.message][-POLICY.size :]


@attrs.define
class Node:
    """A simulated node: its Redis client, its subscription and its `SharedRoom`."""

    name: str
    redis: coredis.Redis[bytes]
    room: SharedRoom
    cluster: Cluster
    seen: int = 0
    arrived: trio.Event = attrs.field(factory=trio.Event)

    def deliver(self, channel: bytes, data: bytes) -> None:
        """Take one event of the room's channel, as a node's subscriber does."""
        event = ops.decode_event(data)
        self.seen = event.event
        self.cluster.take(self.room.receive(event))
        self.arrived.set()
        self.arrived = trio.Event()


@attrs.define
class Cluster:
    """Three nodes on one redis-server, and what each connection received."""

    room_id: str
    nodes: dict[str, Node] = attrs.field(factory=dict)
    received: dict[int, list[Event]] = attrs.field(factory=dict)
    api: list[str] = attrs.field(factory=list)
    op_ids: itertools.count[int] = attrs.field(factory=itertools.count)

    def op(self) -> tuple[int, str]:
        return (FAR, f"{self.room_id}-{next(self.op_ids)}")

    def take(self, effects: list[Any]) -> None:
        for effect in effects:
            assert not isinstance(effect, Gap), effect
            if isinstance(effect, Send):
                for c in effect.to:
                    assert isinstance(c, int)
                    self.received.setdefault(c, []).append(stripped(effect.event))

    async def call(self, node: Node, call: ops.Call) -> ops.Reply:
        return await fcall(node.redis, call)

    async def settle(self, event: int) -> None:
        with trio.fail_after(5):
            for node in self.nodes.values():
                while node.seen < event:
                    await node.arrived.wait()

    async def run(self, op: tuple[Any, ...], request_id: int) -> None:
        room_id = self.room_id
        if op[0].startswith("api_"):
            node = self.nodes["n0"]
            match op:
                case ("api_kick", target, ban):
                    call = ops.kick(room_id, self.op(), conn="", aid=target, ban=ban)
                case ("api_unban", target):
                    call = ops.unban(room_id, self.op(), conn="", aid=target)
                case _:
                    call = ops.delete(room_id, self.op(), conn="", reason="deleted")
            reply = await self.call(node, call)
            self.api.append(str(reply.error.code) if isinstance(reply, ops.Refused) else "ok")
            if isinstance(reply, ops.Applied):
                await self.settle(reply.event)
            return
        c = op[1]
        node_name, conn_aid = CONNS[c]
        node = self.nodes[node_name]
        conn_id = f"{node_name}/{c}"
        msg: m.RoomMessage | None = None
        match op:
            case ("join", _, since_seq):
                since = None if since_seq is None else m.Position(EPOCH, since_seq)
                node.room.expect_join(conn_id, c, conn_aid, request_id, since)
                pk = b"pk" + conn_aid.encode()
                call = ops.join(
                    room_id,
                    self.op(),
                    conn=conn_id,
                    aid=conn_aid,
                    public_key=pk,
                    max_members=MAX_MEMBERS,
                    since=since,
                    recovery_limit=POLICY.recovery_limit,
                )
            case ("disconnect", _):
                call = ops.leave(
                    room_id, self.op(), conn=conn_id, reason="disconnected", asked=False
                )
            case ("leave", _):
                msg = room_message(op, room_id, request_id)
                node.room.expect_leave(c, request_id)
                call = ops.leave(room_id, self.op(), conn=conn_id, reason="left", asked=True)
            case _:
                msg = room_message(op, room_id, request_id)
                call = ops.act(
                    msg, self.op(), conn=conn_id, history_size=POLICY.size, max_members=MAX_MEMBERS
                )
        reply = await self.call(node, call)
        if isinstance(reply, ops.Refused):
            if op[0] == "join":
                node.room.join_refused(conn_id)
            node.room.leaving.pop(c, None)
            self.received.setdefault(c, []).append(ev.error(reply.error, request_id, room_id))
            return
        assert isinstance(reply, ops.Applied)
        if op[0] == "join":
            snapshot = ops.read_snapshot(room_id, reply)
            self.take(node.room.join_applied(conn_id, snapshot, 0))
        elif isinstance(msg, m.Unban):
            self.received.setdefault(c, []).append(ev.unbanned(room_id, msg.aid, request_id))
        await self.settle(reply.event)


rooms = itertools.count()


async def fcall(redis: coredis.Redis[bytes], call: ops.Call) -> ops.Reply:
    """Make `call` through `redis`; return what Redis answered."""
    return ops.read_reply(await redis.fcall(call.function, keys=call.keys, args=list(call.args)))


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(first=st.permutations(range(len(CONNS))), script=st.lists(OPS, max_size=50), ending=ENDING)
async def test_random_operations_over_three_nodes_match_one_node(
    redis_port: int,
    first: list[int],
    script: list[tuple[Any, ...]],
    ending: tuple[Any, ...] | None,
) -> None:
    """Every connection receives, on any node, what it would receive on one node.

    Every connection tries to join first, in a random order, so the room starts
    full and busy.
    """
    script = [("join", c, None) for c in first] + script + ([ending] if ending else [])
    room_id = f"room{next(rooms)}"
    model = Model(
        Room.new(
            room_id,
            host="A",
            encrypted_room_key=b"k0",
            now_ms=0,
            max_members=MAX_MEMBERS,
            message_id_prefix=PREFIX,
            epoch=EPOCH,
            history=POLICY,
        )
    )
    cluster = Cluster(room_id)
    with trio.fail_after(60):
        clients = [coredis.Redis(host="127.0.0.1", port=redis_port) for _ in NODES]
        async with AsyncExitStack() as stack:
            for redis in clients:
                await stack.enter_async_context(redis)
            nursery = await stack.enter_async_context(trio.open_nursery())
            await clients[0].function_load(LIBRARY, replace=True)
            create = ops.create(
                room_id,
                cluster.op(),
                host="A",
                encrypted_room_key=b"k0",
                epoch=EPOCH,
                prefix=PREFIX,
                max_rooms=0,
                max_rooms_per_aid=0,
                by_api=False,
            )
            assert isinstance(await fcall(clients[0], create), ops.Applied)
            for name, redis in zip(NODES, clients, strict=True):
                node = Node(name, redis, SharedRoom(room_id, POLICY), cluster)
                cluster.nodes[name] = node
                pubsub = ShardedPubSub(redis.connection_pool, on_message=node.deliver)
                await stack.enter_async_context(pubsub)
                await pubsub.subscribe(ops.room_key(room_id))
            for request_id, op in enumerate(script, 1):
                if model.room.deleted is not None:
                    break
                model.run(op, request_id)
                await cluster.run(op, request_id)
                assert cluster.received == model.received, (op, request_id)
                assert cluster.api == model.api, op
            nursery.cancel_scope.cancel()
