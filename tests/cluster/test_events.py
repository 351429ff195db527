"""Room events through a real redis-server: one order, once only, never late (CLUSTER.md 1, 8)."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import coredis
import trio

from roomd.cluster.events import Late, Published, RoomEvents, room_key, stream_key

ROOM = "r1"
FAR = 2**50  # a deadline no test reaches


def client(port: int) -> coredis.Redis[bytes]:
    """Return a client of the test's redis-server (one per simulated node)."""
    return coredis.Redis(host="127.0.0.1", port=port)


@asynccontextmanager
async def loaded(port: int) -> AsyncIterator[tuple[coredis.Redis[bytes], RoomEvents]]:
    """Yield a client of the test's redis-server and its RoomEvents, the library loaded."""
    async with client(port) as redis:
        events = RoomEvents(redis)
        await events.load()
        yield redis, events


async def redis_ms(redis: coredis.Redis[bytes]) -> int:
    """Return Redis's own clock in Unix milliseconds."""
    now = await redis.time()
    return int(now.timestamp() * 1000)


async def test_racing_senders_on_three_nodes_get_one_contiguous_seq_order(
    redis_port: int,
) -> None:
    """Three nodes sending at once: seqs 1..300 once each, the stream in seq order."""
    with trio.fail_after(30):
        nodes = [client(redis_port) for _ in range(3)]
        async with nodes[0], nodes[1], nodes[2]:
            await RoomEvents(nodes[0]).load()
            got: dict[int, bytes] = {}
            ops = itertools.count()

            async def send(node: coredis.Redis[bytes], name: str) -> None:
                events = RoomEvents(node)
                for k in range(100):
                    payload = f"{name}-{k}".encode()
                    published = await events.publish(
                        ROOM,
                        f"op{next(ops)}",
                        deadline_ms=FAR,
                        history_size=1000,
                        kind="message",
                        payload=payload,
                    )
                    assert isinstance(published, Published)
                    got[published.seq] = payload

            async with trio.open_nursery() as nursery:
                for name, node in zip("abc", nodes, strict=True):
                    nursery.start_soon(send, node, name)
            assert sorted(got) == list(range(1, 301))
            entries = await nodes[1].xrange(stream_key(ROOM))
            assert [entry.identifier for entry in entries] == [
                f"{s}-0".encode() for s in range(1, 301)
            ]
            assert [entry.field_values[b"p"] for entry in entries] == [got[s] for s in sorted(got)]


async def test_an_operation_asked_twice_is_applied_once(redis_port: int) -> None:
    """A node that lost Redis's reply asks again with the same op id: same answer, one append."""
    with trio.fail_after(10):
        async with loaded(redis_port) as (redis, events):
            first, again = [
                await events.publish(
                    ROOM, "op-1", deadline_ms=FAR, history_size=10, kind="message", payload=b"x"
                )
                for _ in range(2)
            ]
            assert first == again == Published(event=1, seq=1)
            assert await redis.xlen(stream_key(ROOM)) == 1
            assert await redis.hget(room_key(ROOM), "event") == b"1"


async def test_an_operation_past_its_deadline_on_redis_s_clock_is_not_applied(
    redis_port: int,
) -> None:
    """An operation its node already answered `unavailable` never applies later."""
    with trio.fail_after(10):
        async with loaded(redis_port) as (redis, events):
            gone = await redis_ms(redis) - 1_000
            late = await events.publish(
                ROOM, "op-1", deadline_ms=gone, history_size=10, kind="message", payload=b"x"
            )
            assert late == Late()
            assert await redis.xlen(stream_key(ROOM)) == 0
            assert await redis.exists([room_key(ROOM)]) == 0
            on_time = await events.publish(
                ROOM, "op-2", deadline_ms=FAR, history_size=10, kind="message", payload=b"y"
            )
            assert on_time == Published(event=1, seq=1)


async def test_every_event_is_numbered_and_only_messages_get_a_seq_and_history(
    redis_port: int,
) -> None:
    """Typing and reactions take an event number (gap detection), not a seq or a stream entry."""
    with trio.fail_after(10):
        async with loaded(redis_port) as (redis, events):
            replies = [
                await events.publish(
                    ROOM, f"op-{i}", deadline_ms=FAR, history_size=10, kind=kind, payload=b"p"
                )
                for i, kind in enumerate(("typing", "message", "reaction", "message"))
            ]
            assert replies == [
                Published(1, 0),
                Published(2, 1),
                Published(3, 0),
                Published(4, 2),
            ]
            entries = await redis.xrange(stream_key(ROOM))
            assert [entry.identifier for entry in entries] == [b"1-0", b"2-0"]


async def test_the_stream_keeps_the_newest_history_size_messages(redis_port: int) -> None:
    """With history_size 5, eight messages leave seqs 4..8 in the stream; with 0, none."""
    with trio.fail_after(10):
        async with loaded(redis_port) as (redis, events):
            for seq in range(1, 9):
                await events.publish(
                    ROOM, f"op-{seq}", deadline_ms=FAR, history_size=5, kind="message", payload=b"m"
                )
                await events.publish(
                    "r2", f"op-{seq}", deadline_ms=FAR, history_size=0, kind="message", payload=b"m"
                )
            entries = await redis.xrange(stream_key(ROOM))
            assert [entry.identifier for entry in entries] == [
                f"{s}-0".encode() for s in range(4, 9)
            ]
            assert await redis.xlen(stream_key("r2")) == 0
            assert await redis.hget(room_key("r2"), "seq") == b"8"


@attrs.define
class RawSubscriber:
    """A sharded pub/sub subscriber speaking RESP over a plain socket, as a node's would."""

    stream: trio.SocketStream
    buffer: bytearray = attrs.field(factory=bytearray)

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self.buffer += await self.stream.receive_some(4096)
        line, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return line

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size + 2:
            self.buffer += await self.stream.receive_some(4096)
        data = bytes(self.buffer[:size])
        del self.buffer[: size + 2]
        return data

    async def reply(self) -> list[bytes | int]:
        """Read one array reply (a push): its bulk strings and integers."""
        header = await self._line()
        assert header.startswith(b"*"), header
        items: list[bytes | int] = []
        for _ in range(int(header[1:])):
            line = await self._line()
            if line.startswith(b"$"):
                items.append(await self._exactly(int(line[1:])))
            else:
                items.append(int(line[1:]))
        return items


async def test_subscribers_of_the_room_s_channel_get_every_event_in_number_order(
    redis_port: int,
) -> None:
    """SSUBSCRIBE on the room's channel: each event once, as `<event> <seq> <kind> <payload>`."""
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", redis_port)
        async with stream, loaded(redis_port) as (_, events):
            subscriber = RawSubscriber(stream)
            channel = room_key(ROOM).encode()
            await stream.send_all(b"SSUBSCRIBE " + channel + b"\r\n")
            assert await subscriber.reply() == [b"ssubscribe", channel, 1]
            kinds = ("message", "typing", "message")
            for i, kind in enumerate(kinds):
                await events.publish(
                    ROOM, f"op-{i}", deadline_ms=FAR, history_size=10, kind=kind, payload=b"p q"
                )
            await events.publish(
                ROOM, "op-0", deadline_ms=FAR, history_size=10, kind="message", payload=b"p q"
            )  # asked again: not published again
            await events.publish(
                "r2", "op-9", deadline_ms=FAR, history_size=10, kind="message", payload=b"other"
            )
            await events.publish(  # what comes next shows nothing came in between
                ROOM, "op-3", deadline_ms=FAR, history_size=10, kind="typing", payload=b"end"
            )
            got = [await subscriber.reply() for _ in range(4)]
            assert got == [
                [b"smessage", channel, b"1 1 message p q"],
                [b"smessage", channel, b"2 0 typing p q"],
                [b"smessage", channel, b"3 2 message p q"],
                [b"smessage", channel, b"4 0 typing end"],
            ]
