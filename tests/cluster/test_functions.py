"""The `roomd` functions in a real redis-server: one order, once only, never late.

CLUSTER.md guarantees 1, 8 and 9, at the level of Redis.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import coredis
import trio

from roomd.cluster import ops
from roomd.cluster.channels import ShardedPubSub
from roomd.cluster.functions import LIBRARY
from roomd.core import message as m

ROOM = "r1"
FAR = 2**50  # a deadline no test reaches
op_ids = itertools.count()


def op(deadline_ms: int = FAR) -> tuple[int, str]:
    """Return a fresh (deadline, operation id)."""
    return (deadline_ms, f"op{next(op_ids)}")


def client(port: int) -> coredis.Redis[bytes]:
    """Return a client of the test's redis-server (one per simulated node)."""
    return coredis.Redis(host="127.0.0.1", port=port)


async def call(redis: coredis.Redis[bytes], made: ops.Call) -> ops.Reply:
    """Make `made` through `redis`; return what Redis answered."""
    return ops.read_reply(await redis.fcall(made.function, keys=made.keys, args=list(made.args)))


@asynccontextmanager
async def room_with(
    port: int, *conns: str, room_id: str = ROOM
) -> AsyncIterator[coredis.Redis[bytes]]:
    """Yield a client of a redis-server holding room `room_id` with `conns` (`node/n`) joined."""
    async with client(port) as redis:
        await redis.function_load(LIBRARY, replace=True)
        created = ops.create(
            room_id,
            op(),
            host="A",
            encrypted_room_key=None,
            epoch="E",
            prefix="p",
            max_rooms=0,
            max_rooms_per_aid=0,
            by_api=False,
        )
        assert isinstance(await call(redis, created), ops.Applied)
        for conn in conns:
            joined = ops.join(
                room_id,
                op(),
                conn=conn,
                aid=conn,
                public_key=None,
                max_members=100,
                since=None,
                recovery_limit=0,
            )
            assert isinstance(await call(redis, joined), ops.Applied)
        yield redis


def message(
    conn: str, text: bytes, op_id: tuple[int, str], size: int = 1000, room_id: str = ROOM
) -> ops.Call:
    """Return the call that sends `text` from member `conn`."""
    msg = m.SendMessage(room_id=room_id, ciphertext=text)
    return ops.act(msg, op_id, conn=conn, history_size=size, max_members=100)


async def redis_ms(redis: coredis.Redis[bytes]) -> int:
    """Return Redis's own clock in Unix milliseconds."""
    now = await redis.time()
    return int(now.timestamp() * 1000)


async def stream_seqs(redis: coredis.Redis[bytes], room_id: str = ROOM) -> list[int]:
    """Return the seqs the room's stream holds, in stream order."""
    entries = await redis.xrange(f"roomd:{{{room_id}}}:stream")
    return [int(ops.text(entry.identifier).split("-")[0]) for entry in entries]


async def test_racing_senders_on_three_nodes_get_one_contiguous_seq_order(
    redis_port: int,
) -> None:
    """Three nodes sending at once: seqs 1..300 once each, the stream in seq order."""
    with trio.fail_after(30):
        async with room_with(redis_port, "a/1", "b/1", "c/1"):
            nodes = [client(redis_port) for _ in range(3)]
            async with nodes[0], nodes[1], nodes[2]:
                got: dict[int, bytes] = {}

                async def send(node: coredis.Redis[bytes], conn: str) -> None:
                    for k in range(100):
                        text = f"{conn}-{k}".encode()
                        reply = await call(node, message(conn, text, op()))
                        assert isinstance(reply, ops.Applied)
                        got[reply.rest[0]] = text

                async with trio.open_nursery() as nursery:
                    for name, node in zip("abc", nodes, strict=True):
                        nursery.start_soon(send, node, f"{name}/1")
                assert sorted(got) == list(range(1, 301))
                assert await stream_seqs(nodes[1]) == list(range(1, 301))


async def test_an_operation_asked_twice_is_applied_once(redis_port: int) -> None:
    """A node that lost Redis's reply asks again with the same op id: same answer, one append."""
    with trio.fail_after(10):
        async with room_with(redis_port, "a/1") as redis:
            same = op()
            first, again = [await call(redis, message("a/1", b"x", same)) for _ in range(2)]
            assert first == again == ops.Applied(event=2, rest=(1,))
            assert await stream_seqs(redis) == [1]


async def test_an_operation_past_its_deadline_on_redis_s_clock_is_not_applied(
    redis_port: int,
) -> None:
    """An operation its node already answered `unavailable` never applies later."""
    with trio.fail_after(10):
        async with room_with(redis_port, "a/1") as redis:
            gone = await redis_ms(redis) - 1_000
            assert await call(redis, message("a/1", b"x", op(gone))) == ops.Late()
            assert await stream_seqs(redis) == []
            assert await call(redis, message("a/1", b"y", op())) == ops.Applied(2, (1,))


async def test_every_event_is_numbered_and_only_messages_get_a_seq_and_history(
    redis_port: int,
) -> None:
    """Typing takes an event number (gap detection), not a seq or a stream entry."""
    with trio.fail_after(10):
        async with room_with(redis_port, "a/1") as redis:
            typing = m.Typing(room_id=ROOM, is_typing=True)
            replies = [
                await call(redis, message("a/1", b"x", op())),
                await call(
                    redis, ops.act(typing, op(), conn="a/1", history_size=10, max_members=9)
                ),
                await call(redis, message("a/1", b"y", op())),
            ]
            assert replies == [ops.Applied(2, (1,)), ops.Applied(3), ops.Applied(4, (2,))]
            assert await stream_seqs(redis) == [1, 2]


async def test_the_stream_keeps_the_newest_history_size_messages(redis_port: int) -> None:
    """With history_size 5, eight messages leave seqs 4..8 in the stream; with 0, none."""
    with trio.fail_after(10):
        async with (
            room_with(redis_port, "a/1") as redis,
            room_with(redis_port, "a/1", room_id="r2"),
        ):
            for _ in range(8):
                await call(redis, message("a/1", b"m", op(), size=5))
                await call(redis, message("a/1", b"m", op(), size=0, room_id="r2"))
            assert await stream_seqs(redis) == [4, 5, 6, 7, 8]
            assert await stream_seqs(redis, "r2") == []
            assert await redis.hget(ops.room_key("r2"), "seq") == b"8"


async def test_subscribers_of_the_room_s_channel_get_every_event_in_number_order(
    redis_port: int,
) -> None:
    """A sharded subscriber of the room gets each event once, in number order, no other room's."""
    received, inbox = trio.open_memory_channel[tuple[bytes, bytes]](10)
    with trio.fail_after(10):
        async with (
            room_with(redis_port, "a/1") as redis,
            room_with(redis_port, "a/1", room_id="r2"),
            ShardedPubSub(
                redis.connection_pool, on_message=lambda *got: received.send_nowait(got)
            ) as pubsub,
        ):
            await pubsub.subscribe(ops.room_key(ROOM))
            assert await redis.pubsub_shardnumsub(ops.room_key(ROOM), ops.room_key("r2")) == {
                ops.room_key(ROOM).encode(): 1,
                ops.room_key("r2").encode(): 0,
            }
            again = op()
            await call(redis, message("a/1", b"one", again))
            await call(redis, message("a/1", b"one", again))  # asked again: not published again
            await call(redis, message("a/1", b"other", op(), room_id="r2"))
            await call(redis, message("a/1", b"two", op()))
            got = [ops.decode_event((await inbox.receive())[1]) for _ in range(2)]
            assert [(e.event, e.seq, e.body) for e in got if isinstance(e, ops.Said)] == [
                (2, 1, ops.pack([b"one", None, None, None])),
                (3, 2, ops.pack([b"two", None, None, None])),
            ]
