"""In-process harness: a roomd `Node` on fake listeners and a wsproto test client.

`running_server(config)` starts the real node (server task tree, and the API when
asked) on a `FakeListener`;
`Client` is a small WebSocket client (wsproto, the same sans-I/O library a real
client could use) over a trio memory stream, with full control over pongs so
tests can play a silent or slow peer. Everything is in-process, so tests run on
`MockClock(autojump_threshold=0)`; `running_api_server` adds the REST server API on a
real loopback socket, so its tests run on the real clock.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

import attrs
import cbor2
import orjson
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from roomd.config import Config
from roomd.core.admission import Admission
from roomd.core.stats import Stats
from roomd.core.token import mint_token
from roomd.daemon.registry import RoomRegistry
from roomd.daemon.server import Server, wall_clock_ms
from roomd.daemon.session import Session
from roomd.node import Bound, Node
from roomd.store import RoomStore
from roomd.store.memory import MemoryRoomStore

from .conftest import SECRET

API_KEY = "test-api-key-3c9e1f7a5b2d4086"

StreamPair = Callable[[], tuple[trio.abc.Stream, trio.abc.Stream]]


class FakeListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose `connect()` hands the server one end of an in-memory stream."""

    def __init__(self, pair: StreamPair = trio.testing.memory_stream_pair) -> None:
        self._pair = pair
        self._send, self._recv = trio.open_memory_channel[trio.abc.Stream](100)

    async def connect(self) -> trio.abc.Stream:
        """Return the client end of a new connection to the server."""
        client, server = self._pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._recv.receive()

    async def aclose(self) -> None:
        self._recv.close()
        await trio.lowlevel.checkpoint()


def make_config(**overrides: Any) -> Config:
    """Return a config for tests: defaults of PROTOCOL.md plus `overrides`."""
    overrides.setdefault("max_conns_per_ip", 0)
    overrides.setdefault("api", False)
    overrides.setdefault("store", "memory")
    return Config(**overrides)


def token(aid: str, ttl: float = 3600, secret: str = SECRET) -> str:
    """Return a valid token for `aid`."""
    return mint_token(secret, aid, now=time.time(), ttl=ttl)[0]


@attrs.define
class Harness:
    """A running node and the means to connect to it."""

    node: Node
    bound: Bound
    listener: FakeListener
    # Set when `Node.run` has returned (after `shutdown()`).
    stopped: trio.Event = attrs.field(factory=trio.Event)

    @property
    def api_url(self) -> str | None:
        """The server API's base URL (`http://HOST:PORT`) when it is served."""
        return self.bound.api_url

    @property
    def config(self) -> Config:
        """The node's settings."""
        return self.node.server.config

    @property
    def stats(self) -> Stats:
        """The node's counters."""
        return self.node.server.stats

    @property
    def registry(self) -> RoomRegistry:
        """The node's live rooms."""
        return self.bound.running.registry

    @property
    def sessions(self) -> set[Session]:
        """The node's open sessions."""
        return self.bound.running.sessions.open

    @property
    def admission(self) -> Admission:
        """The node's handshake admission (per-IP counts, draining)."""
        return self.bound.running.admission

    def shutdown(self) -> None:
        """Begin the node's graceful shutdown."""
        self.node.shutdown()

    async def connect(
        self,
        *,
        codec: str | None = "roomd.v1.json",
        path: str = "/v1",
        headers: list[tuple[bytes, bytes]] | None = None,
        pair: StreamPair | None = None,
    ) -> Client:
        """Open a client, complete the handshake and read `hello`."""
        if pair is not None:
            self.listener._pair = pair
        stream = await self.listener.connect()
        self.listener._pair = trio.testing.memory_stream_pair
        client = Client(stream, cbor=codec == "roomd.v1.cbor")
        status = await client.handshake(path, [codec] if codec else [], headers or [])
        if status == 101:
            client.hello = await client.recv()
            assert client.hello["type"] == "hello"
        return client

    async def login(self, aid: str, *, ttl: float = 3600, **kwargs: Any) -> Client:
        """Open a client and authenticate it as `aid` with a token valid for `ttl` seconds."""
        client = await self.connect(**kwargs)
        reply = await client.request({"type": "auth", "token": token(aid, ttl=ttl)})
        assert reply["type"] == "authOk", reply
        return client

    def session_of(self, aid: str) -> Session:
        """Return the server-side session of the one open connection authenticated as `aid`."""
        (session,) = [s for s in self.sessions if s.aid == aid]
        return session

    async def open_room(self, *aids: str, **kwargs: Any) -> tuple[str, list[Client]]:
        """Log in each AID; the first creates a room, the rest join it in order.

        Returns the room id and the clients, with every `userJoined` already read.
        """
        clients: list[Client] = []
        room_id = ""
        for aid in aids:
            client = await self.login(aid, **kwargs)
            if not clients:
                reply = await client.request({"type": "createChatroom"})
                room_id = reply["roomId"]
            else:
                reply = await client.request({"type": "joinChatroom", "roomId": room_id})
                for other in clients:
                    joined = await other.recv()
                    assert (joined["type"], joined["aid"]) == ("userJoined", aid), joined
            assert reply["type"] == "joinSuccess", reply
            clients.append(client)
        return room_id, clients


@asynccontextmanager
async def running_server(
    *,
    api_key: str | None = None,
    store: RoomStore | None = None,
    wall_ms: Callable[[], int] = wall_clock_ms,
    stop: bool = False,
    **overrides: Any,
) -> AsyncIterator[Harness]:
    """Run a roomd node on a fake listener for the body of the `async with`.

    With `api_key` and `api=True` among the overrides it also serves the server API
    (hypercorn on real sockets: use the real clock), at `Harness.api_url`. With
    `stop`, the node is shut down gracefully at the end instead of cancelled.
    """
    config = make_config(**overrides)
    server = Server(
        config=config,
        token_secret=SECRET,
        store=MemoryRoomStore() if store is None else store,
        wall_ms=wall_ms,
    )
    node = Node(server, api_key)
    listener = FakeListener()
    stopped = trio.Event()

    async def serve(task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
        await node.run([listener], task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve)
        yield Harness(node, bound, listener, stopped)
        if stop:
            node.shutdown()
        else:
            nursery.cancel_scope.cancel()


def running_api_server(**overrides: Any) -> AbstractAsyncContextManager[Harness]:
    """Run a server that also serves the server API on a free loopback port, key `API_KEY`."""
    overrides = {"api": True, "api_host": "127.0.0.1", "api_port": 0, **overrides}
    return running_server(api_key=API_KEY, **overrides)


@attrs.define(eq=False)
class Client:
    """A WebSocket client over a trio stream: JSON or CBOR, pongs optional."""

    stream: trio.abc.Stream
    cbor: bool = False
    auto_pong: bool = True
    ws: WSConnection = attrs.field(factory=lambda: WSConnection(ConnectionType.CLIENT))
    pings: int = 0
    pongs: int = 0
    close_code: int | None = None
    subprotocol: str | None = None
    reject_status: int | None = None
    reject_body: bytes = b""
    # The server's `hello`, once the handshake is done.
    hello: dict[str, Any] = attrs.field(factory=dict)
    _inbox: list[dict[str, Any]] = attrs.field(factory=list)
    _parts: list[Any] = attrs.field(factory=list)

    async def handshake(
        self, path: str, subprotocols: list[str], headers: list[tuple[bytes, bytes]]
    ) -> int:
        """Send the upgrade request; return 101 or the HTTP status it was rejected with."""
        request = Request(
            host="localhost", target=path, subprotocols=subprotocols, extra_headers=headers
        )
        await self.stream.send_all(self.ws.send(request))
        while True:
            data = await self.stream.receive_some(65536)
            assert data, "server closed during the handshake"
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    return 101
                if isinstance(event, RejectConnection):
                    self.reject_status = event.status_code
                    if not event.has_body:
                        return event.status_code
                elif isinstance(event, RejectData):
                    self.reject_body += event.data
                    if event.body_finished:
                        assert self.reject_status is not None
                        return self.reject_status

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message in this client's codec."""
        if self.cbor:
            await self.send_raw(cbor2.dumps(message))
        else:
            await self.send_raw(orjson.dumps(message).decode())

    async def send_together(self, *messages: dict[str, Any]) -> None:
        """Send several messages in one write, so the server reads them in one chunk."""
        frames = [self.ws.send(TextMessage(data=orjson.dumps(m).decode())) for m in messages]
        await self.stream.send_all(b"".join(frames))

    async def send_raw(self, data: str | bytes) -> None:
        """Send one text (str) or binary (bytes) frame as it is."""
        message = TextMessage(data=data) if isinstance(data, str) else BytesMessage(data=data)
        await self.stream.send_all(self.ws.send(message))

    async def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """Send one masked frame built by hand, bypassing wsproto's checks (e.g. bad UTF-8)."""
        mask = os.urandom(4)
        size = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if size < 126:
            head += bytes([0x80 | size])
        elif size < 1 << 16:
            head += struct.pack("!BH", 0x80 | 126, size)
        else:
            head += struct.pack("!BQ", 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        await self.stream.send_all(head + mask + masked)

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send `message` and return the next message received."""
        await self.send(message)
        return await self.recv()

    async def recv(self) -> dict[str, Any]:
        """Return the next message; fail if the connection closes first."""
        while not self._inbox:
            if not await self._pump():
                raise AssertionError(f"connection closed ({self.close_code}) awaiting a message")
        return self._inbox.pop(0)

    async def recv_type(self, kind: str) -> dict[str, Any]:
        """Return the next message of type `kind`, skipping others."""
        while True:
            message = await self.recv()
            if message["type"] == kind:
                return message

    async def expect_close(self) -> int:
        """Read until the server closes; return the close code it sent."""
        while await self._pump():
            pass
        assert self.close_code is not None
        return self.close_code

    async def listen(self, seconds: float) -> list[dict[str, Any]]:
        """Read for `seconds`, answering pings; return what arrived. Fail if the server closes."""
        with trio.move_on_after(seconds):
            while await self._pump():
                pass
            raise AssertionError(f"connection closed ({self.close_code}) while listening")
        return self.pending()

    async def abort(self) -> None:
        """Drop the connection without a close frame, as a crashed client or a lost network."""
        await self.stream.aclose()

    def pending(self) -> list[dict[str, Any]]:
        """Return (and forget) the messages already received but not yet read."""
        messages, self._inbox = self._inbox, []
        return messages

    async def drain(self) -> list[dict[str, Any]]:
        """Return every message that arrives until the server goes quiet."""
        await trio.testing.wait_all_tasks_blocked()
        while True:
            with trio.move_on_after(0.001):
                if not await self._pump():
                    break
                continue
            break
        return self.pending()

    async def _pump(self) -> bool:
        """Receive one chunk and decode its events; False once the connection is closed."""
        if self.close_code is not None:
            return False
        data = await self.stream.receive_some(65536)
        if not data:
            self.close_code = self.close_code or 1006
            return False
        self.ws.receive_data(bytes(data))
        for event in self.ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    if isinstance(event, TextMessage):
                        self._inbox.append(orjson.loads("".join(parts)))
                    else:
                        self._inbox.append(cbor2.loads(b"".join(parts)))
            elif isinstance(event, Pong):
                self.pongs += 1
            elif isinstance(event, Ping):
                self.pings += 1
                if self.auto_pong:
                    await self.stream.send_all(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self.close_code = event.code
                with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self.stream.send_all(self.ws.send(event.response()))
                return False
        return True

    async def close(self, code: int = 1000) -> None:
        """Start a clean close from the client side and wait for the server's answer."""
        await self.stream.send_all(self.ws.send(CloseConnection(code=code)))
        while self.close_code is None:
            data = await self.stream.receive_some(65536)
            if not data:
                break
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, CloseConnection):
                    self.close_code = event.code
