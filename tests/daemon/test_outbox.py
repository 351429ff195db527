"""The write path: frames are built right and reach the socket whole, in order, batched."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.daemon.outbox import Flusher, Outbox, build_frame
from roomd.errors import CloseCode

Pair = tuple[trio.SocketStream, trio.SocketStream]


class Recorder:
    """Counts the closes the outbox asks of its session, by cause."""

    def __init__(self) -> None:
        self.overflows = 0
        self.broken = 0

    def close(self, code: CloseCode) -> None:
        if code == CloseCode.SLOW_CONSUMER:
            self.overflows += 1
        elif code == CloseCode.ABNORMAL:
            self.broken += 1


@asynccontextmanager
async def _running(stream: trio.abc.Stream, limit: int) -> AsyncIterator[tuple[Outbox, Recorder]]:
    """Run a flusher and an outbox for `stream` in a nursery for the body of the block."""
    rec = Recorder()
    async with trio.open_nursery() as nursery:
        flusher = Flusher()
        await nursery.start(flusher.run)
        outbox = Outbox.for_stream(stream, flusher, nursery, limit=limit, on_close=rec.close)
        yield outbox, rec
        nursery.cancel_scope.cancel()


async def _read_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(1 << 20)
        assert chunk, "stream ended early"
        data += chunk
    return bytes(data)


@pytest.fixture
async def sockets() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """A connected pair of real (Unix) socket streams, closed afterwards."""
    left, right = trio.socket.socketpair()
    async with trio.SocketStream(left) as server_end, trio.SocketStream(right) as client_end:
        yield server_end, client_end


async def test_frames_put_in_one_turn_reach_the_socket_in_order(sockets: Pair) -> None:
    """Everything put during a turn arrives, in order, through the direct socket write."""
    with trio.fail_after(5):
        server_end, client_end = sockets
        async with _running(server_end, 100) as (outbox, rec):
            assert outbox.fd >= 0
            frames = [b"frame-%03d|" % n for n in range(50)]
            for frame in frames:
                outbox.put(frame)
            await outbox.wait_idle()
            assert await _read_exactly(client_end, sum(map(len, frames))) == b"".join(frames)
            assert (outbox.queued, rec.overflows, rec.broken) == (0, 0, 0)


async def test_what_the_kernel_refuses_goes_through_a_writer_without_loss(sockets: Pair) -> None:
    """A socket whose buffer fills gets the rest from a writer task, byte for byte, in order."""
    with trio.fail_after(10):
        server_end, client_end = sockets
        server_end.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        async with _running(server_end, 10_000) as (outbox, rec):
            frames = [bytes([n % 251]) * 1000 for n in range(2000)]  # ~2 MB, far over SNDBUF
            for frame in frames[:1000]:
                outbox.put(frame)
            await trio.testing.wait_all_tasks_blocked()
            assert outbox.backlog is not None, "the kernel took it all: the test proves nothing"
            for frame in frames[1000:]:  # these join the backlog behind the first half
                outbox.put(frame)
            received = await _read_exactly(client_end, 2_000_000)
            await outbox.wait_idle()
            assert received == b"".join(frames)
            assert (outbox.queued, outbox.backlog, rec.overflows) == (0, None, 0)


async def test_streams_without_a_socket_are_written_by_a_writer_task() -> None:
    """A memory (or TLS) stream gets its frames too, batched into one send per turn."""
    with trio.fail_after(5):
        server_end, client_end = trio.testing.memory_stream_pair()
        async with _running(server_end, 100) as (outbox, _rec):
            assert outbox.fd == -1
            for n in range(10):
                outbox.put(b"%d;" % n)
            await outbox.wait_idle()
            assert await _read_exactly(client_end, 20) == b"".join(b"%d;" % n for n in range(10))


async def test_a_reader_that_never_reads_overflows_instead_of_growing() -> None:
    """Past `limit` unwritten frames the outbox reports an overflow once and takes no more."""
    with trio.fail_after(5):
        server_end, _client_end = trio.testing.lockstep_stream_pair()
        async with _running(server_end, 8) as (outbox, rec):
            for n in range(20):
                outbox.put(b"x%d" % n)
                await trio.testing.wait_all_tasks_blocked()
            assert rec.overflows == 1
            assert not outbox.accepting
            assert outbox.queued == 9  # the frame that overflowed is counted, none after it


async def test_stop_without_drain_drops_what_is_not_yet_written(sockets: Pair) -> None:
    """A close for cause drops queued frames: the peer gets nothing more."""
    with trio.fail_after(5):
        server_end, client_end = sockets
        async with _running(server_end, 100) as (outbox, _rec):
            outbox.put(b"first")
            await outbox.wait_idle()
            outbox.put(b"dropped")
            outbox.stop(drain=False)
            outbox.put(b"refused")
            await outbox.wait_idle()
            await server_end.aclose()
            assert await client_end.receive_some(100) == b"first"
            assert await client_end.receive_some(100) == b""


async def test_a_peer_that_is_gone_marks_the_outbox_broken(sockets: Pair) -> None:
    """Writing to a reset connection reports `on_broken` and leaves the stream alone."""
    with trio.fail_after(5):
        server_end, client_end = sockets
        await client_end.aclose()
        async with _running(server_end, 100) as (outbox, rec):
            for _ in range(3):  # the first write may still succeed; a later one fails
                outbox.put(b"x" * 100_000)
                await trio.testing.wait_all_tasks_blocked()
            assert rec.broken >= 1
            assert outbox.torn


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
@pytest.mark.parametrize("text", [True, False])
def test_frame_round_trips_through_a_client_parser(size: int, text: bool) -> None:
    """Every payload length class (7, 16 and 64 bit) parses back to the same payload."""
    payload = b"a" * size
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(build_frame(payload, text=text))
    frames = list(client.received_frames())
    assert len(frames) == 1
    frame = frames[0]
    assert frame.opcode is (Opcode.TEXT if text else Opcode.BINARY)
    assert frame.message_finished
    data = frame.payload.encode() if text else bytes(frame.payload)
    assert data == payload
