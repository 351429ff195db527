"""The roomd server: listeners, the nursery tree and graceful shutdown.

    Server.run
    └── server nursery
        ├── event bus pump: bus events -> room inboxes
        ├── REST server API: hypercorn on trio, Starlette app (unless --no-api)
        └── rooms nursery: one room loop per live room (RoomRegistry)
            └── connections nursery
                ├── trio.serve_listeners: accepts TCP (or TLS) streams
                └── one task per connection: handshake, then reader + writer

`shutdown()` starts the drain: new handshakes get 503, every open connection is
closed with 1001, and once they are gone (or `close_timeout` passed) the whole
tree is cancelled.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from roomd.admission import Admission
from roomd.api import build_app
from roomd.auth import load_api_key, load_token_secret
from roomd.bus import BusEvent, DeleteRoom, EventBus, KickMember, LocalEventBus
from roomd.config import Config
from roomd.connection import serve_connection
from roomd.errors import CloseCode
from roomd.outbox import Flusher
from roomd.room import Room
from roomd.rooms import Evict, Remove, RoomRegistry
from roomd.session import Session
from roomd.stats import Stats
from roomd.store import MemoryRoomStore, RoomStore, SqliteRoomStore

# How long a DELETE through the API waits for the room to be gone before answering.
API_WAIT = 5.0

log = logging.getLogger("roomd.server")


def make_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return a server TLS context for the PEM `cert` chain and its `key`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def _peer_ip(stream: trio.abc.Stream) -> str:
    """Return the peer address of a TCP (or TLS over TCP) stream.

    In-process streams (tests over memory streams) count as loopback.
    """
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
    if isinstance(transport, trio.SocketStream):
        return str(transport.socket.getpeername()[0])
    return "127.0.0.1"


def _bound_port(listener: trio.abc.Listener[trio.abc.Stream]) -> int:
    if isinstance(listener, trio.SSLListener):
        listener = listener.transport_listener
    if isinstance(listener, trio.SocketListener):
        return int(listener.socket.getsockname()[1])
    return 0


def _drop_hypercorn_eof_race(record: logging.LogRecord) -> bool:
    """Keep every API log record but hypercorn 0.18's harmless send_eof race.

    Its trio TCPServer closes a connection with `send_eof` outside its send lock;
    a client that hangs up right after a response makes that raise
    BusyResourceError, logged as "Error in ASGI Framework" though the response
    was delivered. Nothing else is filtered.
    """
    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, trio.BusyResourceError)


@attrs.frozen
class Bound:
    """Where a started server listens: the WebSocket port, and the API's URL if served."""

    port: int
    api_url: str | None


def wall_clock_ms() -> int:
    """Return the wall-clock time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


@attrs.define(eq=False)
class Server:
    """Everything one roomd process shares between its connections and rooms."""

    config: Config
    token_secret: str
    admission: Admission
    store: RoomStore = attrs.field(factory=MemoryRoomStore)
    bus: EventBus = attrs.field(factory=LocalEventBus)
    api_key: str | None = None
    # Wall-clock time (ts, createdAt, token checks); tests tie it to the mock clock.
    wall_ms: Callable[[], int] = wall_clock_ms
    stats: Stats = attrs.field(factory=Stats)
    flusher: Flusher = attrs.field(factory=Flusher)
    # Where connection tasks, and the writers of their outboxes, run.
    connections_nursery: trio.Nursery | None = None
    registry: RoomRegistry = attrs.field(init=False)
    sessions: set[Session] = attrs.field(factory=set)
    _conn_ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _stopping: trio.Event = attrs.field(factory=trio.Event)
    # Set once the WebSocket drain is over: the API answers /healthz 503 until then.
    _drain_done: trio.Event = attrs.field(factory=trio.Event)
    _drained: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    def from_config(cls, config: Config) -> Server:
        """Return a server for `config`: secrets and store from the data dir and environment."""
        store: RoomStore
        if config.store == "sqlite":
            store = SqliteRoomStore.in_data_dir(config.data_dir)
        else:
            store = MemoryRoomStore()
        return cls(
            config=config,
            token_secret=load_token_secret(config.data_dir),
            admission=Admission(config.max_conns_per_ip, config.allowed_origins),
            store=store,
            api_key=load_api_key(config.data_dir) if config.api else None,
        )

    def session_ended(self, session: Session) -> None:
        """Forget a closed session; the drain ends when the last one goes."""
        self.sessions.discard(session)
        self.stats.closes[session.close_code or CloseCode.ABNORMAL] += 1
        if self.admission.draining and not self.sessions:
            self._drained.set()

    def next_conn_id(self) -> int:
        """Return a new connection id for log lines."""
        return next(self._conn_ids)

    def shutdown(self) -> None:
        """Begin the graceful shutdown; `run` returns once it is done."""
        self._stopping.set()

    # -- what the server API does ----------------------------------------------

    async def create_room(
        self, *, room_id: str | None, host: str | None, encrypted_room_key: bytes | None
    ) -> Room | None:
        """Create an empty room; None when `room_id` is taken."""
        handle = await self.registry.create(
            room_id=room_id, host=host, encrypted_room_key=encrypted_room_key
        )
        return None if handle is None else handle.room

    async def delete_room(self, room_id: str) -> None:
        """Delete a room through the bus and wait (bounded) until it is gone here."""
        handle = self.registry.get(room_id)
        await self.bus.publish(DeleteRoom(room_id))
        if handle is not None:
            with trio.move_on_after(API_WAIT):
                await handle.ended.wait()

    async def kick(self, room_id: str, aid: str) -> None:
        """Remove every connection of `aid` from a room, through the bus."""
        await self.bus.publish(KickMember(room_id, aid))

    async def _deliver(self, event: BusEvent) -> None:
        """Hand an event from the bus to the live room it names (if it lives here)."""
        handle = self.registry.get(event.room_id)
        if handle is None:
            return
        command = Remove(event.reason) if isinstance(event, DeleteRoom) else Evict(event.aid)
        with contextlib.suppress(trio.BrokenResourceError):
            await handle.inbox_send.send(command)

    async def open_listeners(self) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Open the TCP listeners of the config, wrapped in TLS when it names a certificate."""
        config = self.config
        tcp = await trio.open_tcp_listeners(config.port, host=config.host)
        if config.tls_cert is None or config.tls_key is None:
            return list(tcp)
        context = make_ssl_context(config.tls_cert, config.tls_key)
        return [trio.SSLListener(lst, context, https_compatible=False) for lst in tcp]

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
        *,
        task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()`; report where it listens through `task_status`.

        Stored rooms are restored (and expired ones deleted) before the first
        connection is accepted. The API is served when `config.api` is set and
        the server has an API key.

        Resource handling: the listeners (opened from the config when not given),
        every connection and room, and the store are closed before this returns.
        """
        if listeners is None:
            listeners = await self.open_listeners()
        try:
            async with trio.open_nursery() as server_nursery:
                await self._serve(server_nursery, listeners, task_status)
                server_nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.store.aclose()

    async def _serve(
        self,
        server_nursery: trio.Nursery,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        task_status: trio.TaskStatus[Bound],
    ) -> None:
        async with trio.open_nursery() as rooms:
            self.registry = RoomRegistry(self.config, rooms, self.store, self.stats, self.wall_ms)
            restored, expired = await self.registry.restore()
            if restored or expired:
                log.info("rooms restored: %d, expired while down: %d", restored, expired)
            await server_nursery.start(self.flusher.run)
            await server_nursery.start(self.bus.run, self._deliver)
            api_url = None
            if self.config.api and self.api_key is not None:
                app = build_app(self, self.api_key)
                serve_api = partial(
                    hypercorn_serve,
                    app,  # type: ignore[arg-type]  # Starlette is ASGI; the stubs disagree
                    self._api_config(),
                    shutdown_trigger=self._drain_done.wait,
                )
                api_url = (await server_nursery.start(serve_api))[0]
            async with trio.open_nursery() as connections:
                self.connections_nursery = connections
                connections.start_soon(
                    partial(
                        trio.serve_listeners,
                        self._serve_stream,
                        list(listeners),
                        handler_nursery=connections,
                    )
                )
                task_status.started(Bound(_bound_port(listeners[0]), api_url))
                await self._stopping.wait()
                await self._drain()
                self._drain_done.set()
                connections.cancel_scope.cancel()
            # Connections are gone (their rooms told); now stop the rooms, which save
            # their last seq on the way out.
            rooms.cancel_scope.cancel()

    def _api_config(self) -> HypercornConfig:
        api_config = HypercornConfig()
        api_config.bind = [f"{self.config.api_host}:{self.config.api_port}"]
        api_config.graceful_timeout = 1.0
        api_config.accesslog = None
        api_log = logging.getLogger("roomd.api")
        api_log.addFilter(_drop_hypercorn_eof_race)
        api_config.errorlog = api_log
        return api_config

    async def _serve_stream(self, stream: trio.abc.Stream) -> None:
        await serve_connection(self, stream, _peer_ip(stream))

    async def _drain(self) -> None:
        self.admission.draining = True
        log.info("shutting down: closing %d connections", len(self.sessions))
        for session in list(self.sessions):
            session.close(CloseCode.GOING_AWAY)
        if not self.sessions:
            return
        with trio.move_on_after(self.config.close_timeout + 1):
            await self._drained.wait()
