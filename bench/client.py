"""One load-generator client: a TCP stream, a wsproto `WSConnection`, a cheap reader.

wsproto does the opening handshake and builds every frame the client sends
(masked, as RFC 6455 requires of clients), so the client speaks WebSocket the
way any wsproto-based client would. Incoming frames are parsed here instead:
server frames are unmasked and roomd never fragments, so a frame is a 2-10 byte
header and a payload handed straight to orjson. wsproto's general receive path
(buffering, per-frame objects, incremental UTF-8 validation, events) costs
several times more per frame, and at hundreds of thousands of deliveries per
second it would make the generator, not the server, the thing measured. orjson
still rejects invalid UTF-8, and masked or reserved-bit frames count as
protocol errors.

Handshake bytes are split at the end of the HTTP response: wsproto gets the
headers only and the reader gets everything after, so no frame is ever parsed
twice or lost in wsproto's buffer.

Resource handling: `connect` returns a client whose reader must be started in
a nursery (`nursery.start_soon(client.run)`); `close` sends a close frame,
waits (bounded) for the server's, and closes the stream.
"""

from __future__ import annotations

import binascii
import contextlib
import itertools
import os
import random
import select
import time
from array import array
from collections import Counter
from typing import Any, ClassVar

import attrs
import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Pong, RejectConnection, Request

from bench.accounting import RoomView
from bench.payload import STAMP, STAMP_B64

SUBPROTOCOL = "roomd.v1.json"
CLOSE_WAIT = 2.0
REQUEST_TIMEOUT = 30.0


class HandshakeError(Exception):
    """The server refused or broke the WebSocket handshake."""


@attrs.define
class Target:
    """Where the server is: host, port, path (from `ws://host:port/path`)."""

    host: str
    port: int
    path: str = "/v1"

    @classmethod
    def from_url(cls, url: str) -> Target:
        """Parse `ws://HOST:PORT/PATH`; only plain ws is supported."""
        if not url.startswith("ws://"):
            raise ValueError(f"url {url!r} must start with ws:// (wss is not supported)")
        hostport, _, path = url[5:].partition("/")
        host, _, port = hostport.rpartition(":")
        return cls(host=host.strip("[]"), port=int(port), path="/" + path)


@attrs.define(eq=False)
class Sink:
    """What one generator process counts across all its clients."""

    views: list[RoomView] = attrs.field(factory=list)
    frames: int = 0
    new_messages: int = 0
    by_type: Counter[str] = attrs.field(factory=Counter)
    errors: Counter[str] = attrs.field(factory=Counter)
    closes: Counter[str] = attrs.field(factory=Counter)
    foreign: int = 0
    unexpected_room: int = 0
    protocol_errors: int = 0
    measuring: bool = False
    latencies_ns: array[int] = attrs.field(factory=lambda: array("q"))
    last_message_ns: int = 0


@attrs.define(eq=False)
class _Reply:
    done: trio.Event = attrs.field(factory=trio.Event)
    value: dict[str, Any] | None = None


_ids = itertools.count(1)


@attrs.define(eq=False)
class Client:
    """A connected, handshaken client; `run` is its reader."""

    stream: trio.SocketStream
    ws: WSConnection
    sink: Sink
    index: int
    rest: bytes = b""
    views: dict[str, RoomView] = attrs.field(factory=dict)
    last_message_id: dict[str, str] = attrs.field(factory=dict)
    echoed: int = 0
    echo_wakeup: trio.Event | None = None
    closing: bool = False
    closed: trio.Event = attrs.field(factory=trio.Event)
    close_code: int | None = None
    _pending: dict[int, _Reply] = attrs.field(factory=dict)
    # Frames the socket did not take yet, written by one task; None when there are none.
    _backlog: list[bytes] | None = None
    _drained: trio.Event = attrs.field(factory=trio.Event)
    _fragments: list[bytes] = attrs.field(factory=list)

    # -- sending ---------------------------------------------------------------

    def encode(self, message: dict[str, Any]) -> bytes:
        """Return `message` as one masked JSON text frame."""
        return masked_text_frame(orjson.dumps(message))

    async def send_bytes(self, data: bytes) -> None:
        """Write already-framed bytes (one or many frames) after everything sent before them.

        Returns once the socket took them all (the sender's backpressure).
        """
        self.send_soon(data)
        while self._backlog is not None:
            await self._drained.wait()

    def send_soon(self, data: bytes) -> None:
        """Queue `data` behind everything sent before it; write it now if the socket takes it.

        What the kernel does not take at once goes out from one writer task, so
        frames never overtake each other. A generator that wrote every frame
        through a task and the stream's `send_all` spent more CPU than the server
        it measures. Raises `BrokenResourceError` when the socket is broken.
        """
        if self._backlog is not None:
            self._backlog.append(data)
            return
        fd = self.stream.socket.fileno()
        if fd < 0:
            raise trio.ClosedResourceError("the client's socket is closed")
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent < len(data):
            self._backlog = [data[sent:]]
            self._drained = trio.Event()
            trio.lowlevel.spawn_system_task(self._write_backlog)

    async def _write_backlog(self) -> None:
        try:
            while self._backlog:
                chunk = b"".join(self._backlog)
                self._backlog.clear()
                await self.stream.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the reset shows as EOF on the next read
        finally:
            self._backlog = None
            self._drained.set()

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        await self.send_bytes(self.encode(message))

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send `message` with a fresh `id` and return the direct reply to it.

        Raises `ConnectionError` if the connection closes first.
        """
        request_id = next(_ids)
        reply = self._pending[request_id] = _Reply()
        await self.send({**message, "id": request_id})
        with trio.fail_after(REQUEST_TIMEOUT):
            await reply.done.wait()
        if reply.value is None:
            raise ConnectionError(f"client {self.index}: closed ({self.close_code}) before reply")
        return reply.value

    async def close(self, code: int = 1000) -> None:
        """Close the WebSocket (bounded wait for the server's close frame) and the stream."""
        if not self.closing and not self.closed.is_set():
            self.closing = True
            with trio.move_on_after(CLOSE_WAIT):
                try:
                    await self.send_bytes(self.ws.send(CloseConnection(code=code)))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                else:
                    await self.closed.wait()
        self.closing = True
        await self.stream.aclose()

    # -- receiving -------------------------------------------------------------

    async def run(self) -> None:
        """Read and account frames until the connection closes.

        On a TCP socket the process's `Reactor` does the reading (one wake-up for
        every client with bytes waiting) and this task only waits for the end.
        """
        data = self.rest
        self.rest = b""
        try:
            if data:
                replies = self._feed(data, time.time_ns())
                if replies:
                    await self.send_bytes(replies)
            if self.closed.is_set():
                return
            if isinstance(self.stream, trio.SocketStream):
                reactor = Reactor.current()
                reactor.add(self)
                try:
                    await self.closed.wait()
                finally:
                    reactor.remove(self)
                return
            while True:
                data = await self.stream.receive_some(262144)
                if not data:
                    self.ended(reset=False)
                    return
                replies = self._feed(data, time.time_ns())
                if replies:
                    await self.send_bytes(replies)
                if self.closed.is_set():
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.ended(reset=True)
        finally:
            self.closed.set()
            for reply in self._pending.values():
                reply.done.set()

    def ended(self, *, reset: bool) -> None:
        """Record that the server ended the stream (EOF, or a reset) without our close."""
        if not self.closing:
            self.sink.closes["reset" if reset else "eof"] += 1
        self.closed.set()
        for reply in self._pending.values():
            reply.done.set()

    def _feed(self, data: bytes, now_ns: int) -> bytes:
        """Parse every complete frame in `rest + data`; return bytes to send back."""
        if self.rest:
            data = self.rest + data
        size = len(data)
        pos = 0
        out = b""
        while size - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1]
            head = 2
            if length & 0x80:  # servers must not mask
                self.sink.protocol_errors += 1
            length &= 0x7F
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > size:
                break
            payload = data[pos + head : end]
            pos = end
            opcode = b0 & 0x0F
            if b0 & 0x70:
                self.sink.protocol_errors += 1
            if opcode in (1, 2) and b0 & 0x80:
                self._on_message(payload, now_ns)
            elif opcode == 9:
                self.sink.by_type["ping"] += 1
                if not self.closing:  # wsproto sends no pong once our close is out
                    out += self.ws.send(Pong(payload=payload))
            elif opcode == 8:
                out += self._on_close(payload)
                break
            elif opcode in (0, 1, 2):
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments.clear()
                    self._on_message(whole, now_ns)
        self.rest = data[pos:] if pos < size else b""
        return out

    def _on_close(self, payload: bytes) -> bytes:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        self.close_code = code
        self.closed.set()
        if self.closing:
            return b""
        self.closing = True
        self.sink.closes[str(code)] += 1
        return self.ws.send(CloseConnection(code=code))

    def _on_message(self, payload: bytes, now_ns: int) -> None:
        sink = self.sink
        sink.frames += 1
        message = orjson.loads(payload)
        kind = message["type"]
        if kind == "newMessage":
            sink.new_messages += 1
            room = message["roomId"]
            try:
                sender, sender_seq, sent_ns = STAMP.unpack(
                    binascii.a2b_base64(message["ciphertext"][:STAMP_B64])
                )
            except (binascii.Error, ValueError):
                sink.foreign += 1
                return
            view = self.views.get(room)
            if view is None:
                sink.unexpected_room += 1
            else:
                view.receive(message["seq"], sender, sender_seq)
            if sink.measuring:
                sink.latencies_ns.append(now_ns - sent_ns)
                sink.last_message_ns = now_ns
            self.last_message_id[room] = message["messageId"]
            if sender == self.index:
                self.echoed += 1
                if self.echo_wakeup is not None:
                    self.echo_wakeup.set()
            return
        sink.by_type[kind] += 1
        if kind == "joinSuccess":
            view = RoomView.after_join(message["lastSeq"])
            self.views[message["roomId"]] = view
            sink.views.append(view)
        elif kind in ("leftChatroom", "roomDeleted"):
            left = self.views.pop(message["roomId"], None)
            if left is not None:
                left.settle(None)
        elif kind == "error":
            sink.errors[message["code"]] += 1
        request_id = message.get("id")
        if request_id is not None:
            reply = self._pending.pop(request_id, None)
            if reply is not None:
                reply.value = message
                reply.done.set()

    async def wait_echo(self, echoed: int) -> None:
        """Wait until this client has received its own `echoed`-th message back."""
        while self.echoed < echoed and not self.closed.is_set():
            self.echo_wakeup = trio.Event()
            await self.echo_wakeup.wait()
        self.echo_wakeup = None


_mask_keys = random.Random()


def masked_text_frame(payload: bytes) -> bytes:
    """Return one FIN text frame carrying `payload`, masked as a client must (RFC 6455 5.3).

    The masking key comes from a non-cryptographic generator: the load generator
    only needs frames a server accepts.
    """
    size = len(payload)
    if size < 126:
        header = bytes((0x81, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((0x81, 0xFE)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 0xFF)) + size.to_bytes(8, "big")
    key = _mask_keys.randbytes(4)
    stream = (key * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return header + key + masked.to_bytes(size, "little")


class Reactor:
    """Reads every client socket of this process from one task.

    A task per client would cost a scheduler wake-up per client per message; at
    20,000 deliveries/s that delay lands in the latencies being measured. The
    reactor waits on one epoll descriptor holding all client sockets, then reads
    and feeds every ready client in one pass. Pongs and close replies go out
    with `send_soon`: at once when the socket takes them.
    """

    _instances: ClassVar[dict[object, Reactor]] = {}

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._clients: dict[int, Client] = {}

    @classmethod
    def current(cls) -> Reactor:
        """Return this trio run's reactor, starting it on first use."""
        token = trio.lowlevel.current_trio_token()
        reactor = cls._instances.get(token)
        if reactor is None:
            reactor = cls._instances[token] = cls()
            trio.lowlevel.spawn_system_task(reactor._run, name="bench reactor")
        return reactor

    def add(self, client: Client) -> None:
        """Read `client`'s socket from now on."""
        fd = client.stream.socket.fileno()
        self._clients[fd] = client
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, client: Client) -> None:
        """Stop reading `client`'s socket (before it is closed)."""
        fd = client.stream.socket.fileno()
        if self._clients.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    async def _run(self) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                # Keep reading while sockets are ready: the server writes member after
                # member, so more become ready while we read the first ones.
                ready = self._epoll.poll(0)
                while ready:
                    now = time.time_ns()
                    for fd, _ in ready:
                        client = self._clients.get(fd)
                        if client is not None:
                            self._read(fd, client, now)
                    ready = self._epoll.poll(0)
        except trio.Cancelled:
            raise
        finally:
            self._epoll.close()

    def _read(self, fd: int, client: Client, now: int) -> None:
        try:
            data = os.read(fd, 262144)
        except BlockingIOError:
            return
        except OSError:
            self.remove(client)
            client.ended(reset=True)
            return
        if not data:
            self.remove(client)
            client.ended(reset=False)
            return
        replies = client._feed(data, now)
        if replies:
            # A reset shows as EOF on the next read.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                client.send_soon(replies)
        if client.closed.is_set():
            self.remove(client)


async def connect(target: Target, sink: Sink, index: int) -> Client:
    """Open a TCP stream to `target` and complete the WebSocket handshake.

    The server's `hello` is left for the reader. Raises `HandshakeError` when
    the server answers anything but 101 (e.g. 429, 503) or hangs up.
    """
    stream = await trio.open_tcp_stream(target.host, target.port)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        request = Request(
            host=f"{target.host}:{target.port}", target=target.path, subprotocols=[SUBPROTOCOL]
        )
        await stream.send_all(ws.send(request))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            if not data:
                raise HandshakeError("server closed during the handshake")
            buffer += data
        head, _, rest = buffer.partition(b"\r\n\r\n")
        ws.receive_data(head + b"\r\n\r\n")
        for event in ws.events():
            if isinstance(event, AcceptConnection):
                return Client(stream=stream, ws=ws, sink=sink, index=index, rest=rest)
            if isinstance(event, RejectConnection):
                raise HandshakeError(f"handshake rejected with HTTP {event.status_code}")
        raise HandshakeError("no handshake response")
    except BaseException:
        await stream.aclose()
        raise
