"""The WebSocket daemon: listeners, the nursery tree and graceful shutdown.

    Server.run
    └── server nursery
        ├── alive mark: "this server is running" into the store, every minute
        ├── expiry timer: deletes dormant rooms on time (one cancel scope for all)
        ├── store writer: each scheduler turn's room changes, one transaction
        ├── history sweep: messages older than history_ttl, every minute
        ├── timekeeper: every connection's pings and closing deadlines (one heap,
        │   one timer)
        ├── flusher: every dirty outbox -> its socket, once per scheduler turn
        ├── event bus pump: bus events -> room inboxes
        └── rooms nursery: one room loop per live room (RoomRegistry); an empty
            room is dormant, with no task
            └── connections nursery
                ├── trio.serve_listeners: accepts TCP (or TLS) streams
                ├── one task per connection (reader.py): handshake, then reader
                └── outbox writers, only while a socket refuses bytes

The server API is not in this tree: `roomd.node` runs it beside the server,
on the `RoomControl` that `run` reports once it listens.

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
from typing import TYPE_CHECKING

import attrs
import trio

from roomd.config import Config
from roomd.core.admission import Admission, IpCounts
from roomd.core.expiry import alive_mark_interval
from roomd.core.quota import RoomQuota
from roomd.core.refusal import RefusalLog
from roomd.core.stats import Stats
from roomd.daemon.bus import BusEvent, EventBus, Kick, LocalEventBus
from roomd.daemon.control import RoomControl
from roomd.daemon.outbox import Flusher
from roomd.daemon.reader import ConnectionContext, serve_connection
from roomd.daemon.registry import RoomRegistry
from roomd.daemon.session import Sessions
from roomd.daemon.timekeeper import Timekeeper
from roomd.daemon.writer import StoreWriter
from roomd.store import RoomStore

if TYPE_CHECKING:
    import coredis

    from roomd.daemon.cluster_control import ClusterControl
    from roomd.daemon.cluster_rooms import ClusterRooms

log = logging.getLogger("roomd.server")
# The listen backlog of a worker's socket (trio's own default for its listeners).
LISTEN_BACKLOG = 0xFFFF

# How often (seconds, at the most) messages older than history_ttl are deleted;
# reads never return them meanwhile.
HISTORY_SWEEP_EVERY = 60.0


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


def wall_clock_ms() -> int:
    """Return the wall-clock time in Unix milliseconds."""
    return time.time_ns() // 1_000_000


@attrs.frozen
class Running:
    """A server that listens: its port and the live parts others may read or steer."""

    port: int
    control: RoomControl | ClusterControl
    registry: RoomRegistry
    sessions: Sessions
    admission: Admission


@attrs.define(eq=False)
class Server:
    """One roomd WebSocket server: its settings, its store and bus, its counters."""

    config: Config
    token_secret: str
    store: RoomStore
    bus: EventBus = attrs.field(factory=LocalEventBus)
    # Wall-clock time (ts, createdAt, token checks); tests tie it to the mock clock.
    wall_ms: Callable[[], int] = wall_clock_ms
    stats: Stats = attrs.field(factory=Stats)
    # With --cluster: a client of each Redis of the cluster, and this node's name.
    redis: list[coredis.Redis[bytes]] = attrs.field(factory=list)
    node_id: str = ""
    # With --workers: the machine's per-IP count, shared by every worker.
    ip_counts: IpCounts | None = None
    # Set once the WebSocket drain is over (the server API stops then).
    drained: trio.Event = attrs.field(factory=trio.Event)
    _stopping: trio.Event = attrs.field(factory=trio.Event)

    def shutdown(self) -> None:
        """Begin the graceful shutdown; `run` returns once it is done."""
        self._stopping.set()

    async def open_listeners(self) -> list[trio.abc.Listener[trio.abc.Stream]]:
        """Open the TCP listeners of the config, wrapped in TLS when it names a certificate."""
        config = self.config
        if config.reuse_port:
            tcp = [await _reuse_port_listener(config.host, config.port)]
        else:
            tcp = list(await trio.open_tcp_listeners(config.port, host=config.host))
        if config.tls_cert is None or config.tls_key is None:
            return list(tcp)
        context = make_ssl_context(config.tls_cert, config.tls_key)
        return [trio.SSLListener(lst, context, https_compatible=False) for lst in tcp]

    async def run(
        self,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] | None = None,
        *,
        task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()`; report the `Running` server through `task_status`.

        Stored rooms are restored (and expired ones deleted) before the first
        connection is accepted.

        Resource handling: the listeners (opened from the config when not given),
        every connection and room are closed before this returns; the store is
        its opener's to close (rooms have saved their last `seq` into it).
        """
        if listeners is None:
            listeners = await self.open_listeners()
        async with contextlib.AsyncExitStack() as stack:
            for redis in self.redis:
                await stack.enter_async_context(redis)
            server_nursery = await stack.enter_async_context(trio.open_nursery())
            await self._serve(server_nursery, listeners, task_status)
            server_nursery.cancel_scope.cancel()

    async def _serve(
        self,
        server_nursery: trio.Nursery,
        listeners: Sequence[trio.abc.Listener[trio.abc.Stream]],
        task_status: trio.TaskStatus[Running],
    ) -> None:
        config = self.config
        admission = Admission(
            config.max_conns_per_ip,
            config.allowed_origins,
            config.trusted_proxies,
            config.max_connections,
            shared=self.ip_counts,
        )
        sessions = Sessions(self.stats)
        flusher = Flusher()
        timekeeper = Timekeeper()
        await server_nursery.start(timekeeper.run)
        # In the server nursery: it outlives the rooms, which write through it.
        writer = StoreWriter(self.store, config.history_size)
        await server_nursery.start(writer.run)
        async with trio.open_nursery() as rooms_nursery:
            quota = RoomQuota(config.max_rooms, config.max_rooms_per_aid)
            registry = RoomRegistry(
                config, rooms_nursery, self.store, writer, self.stats, self.wall_ms, quota
            )
            restored, expired = await registry.restore()
            if restored or expired:
                log.info("rooms restored: %d, expired while down: %d", restored, expired)
            await server_nursery.start(self._mark_alive)
            if config.history_size and config.history_ttl:
                await server_nursery.start(self._sweep_history)
            await server_nursery.start(registry.run_expiry)
            await server_nursery.start(flusher.run)
            await server_nursery.start(self.bus.run, partial(_to_room, registry))
            cluster: ClusterRooms | None = None
            if self.redis:
                # Imported here: coredis and the cluster's modules (about 500 modules,
                # 30,000 objects the garbage collector would scan) load only with --cluster.
                from roomd.daemon.cluster_rooms import ClusterRooms

                cluster = ClusterRooms(
                    config, self.redis, self.node_id, self.stats, self.wall_ms, sessions=sessions
                )
                await server_nursery.start(cluster.run)
            async with trio.open_nursery() as connections:
                context = ConnectionContext(
                    limits=config.connection_limits(),
                    token_secret=self.token_secret,
                    wall_ms=self.wall_ms,
                    handshake_timeout=config.handshake_timeout,
                    close_timeout=config.close_timeout,
                    send_queue=config.send_queue,
                    admission=admission,
                    refusals=RefusalLog(),
                    stats=self.stats,
                    flusher=flusher,
                    nursery=connections,
                    registry=registry,
                    sessions=sessions,
                    timekeeper=timekeeper,
                    conn_ids=itertools.count(1),
                    cluster=cluster,
                )

                async def serve_stream(stream: trio.abc.Stream) -> None:
                    await serve_connection(context, stream, _peer_ip(stream))

                connections.start_soon(
                    partial(
                        trio.serve_listeners,
                        serve_stream,
                        list(listeners),
                        handler_nursery=connections,
                    )
                )
                control: RoomControl | ClusterControl = RoomControl(
                    registry, self.bus, admission, sessions
                )
                if cluster is not None:
                    from roomd.daemon.cluster_control import ClusterControl

                    control = ClusterControl(cluster, admission, sessions)
                task_status.started(
                    Running(_bound_port(listeners[0]), control, registry, sessions, admission)
                )
                await self._stopping.wait()
                admission.draining = True
                log.info("shutting down: closing %d connections", len(sessions.open))
                with trio.move_on_after(config.close_timeout + 1):
                    await sessions.close_all()
                self.drained.set()
                connections.cancel_scope.cancel()
            # Connections are gone (their rooms told); now stop the rooms, which save
            # their last seq on the way out.
            rooms_nursery.cancel_scope.cancel()

    async def _sweep_history(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Forget, now and then, the messages older than `history_ttl`."""
        policy = self.config.history_policy()
        interval = min(HISTORY_SWEEP_EVERY, self.config.history_ttl / 10)
        task_status.started()
        while True:
            await trio.sleep(interval)
            swept = await self.store.sweep_history(policy.oldest_ts(self.wall_ms()))
            if swept:
                log.debug("history: %d messages aged out", swept)

    async def _mark_alive(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Record in the store, now and then periodically, that this server is running."""
        interval = alive_mark_interval(self.config.room_ttl)
        await self.store.mark_alive(self.wall_ms())
        task_status.started()
        while True:
            await trio.sleep(interval)
            await self.store.mark_alive(self.wall_ms())


async def _reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    """Return a listener on `host:port` that other processes may bind too (SO_REUSEPORT)."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
        await sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def _to_room(registry: RoomRegistry, event: BusEvent) -> None:
    """Hand an event from the bus to the room it names (if it is a room here)."""
    while True:
        if isinstance(event, Kick) and not event.ban:
            handle = registry.live.get(event.room_id)  # a dormant room has no one to kick
        else:
            handle = await registry.wake(event.room_id)
        if handle is None:
            return
        try:
            await handle.inbox_send.send(event)
            return
        except trio.BrokenResourceError:
            continue  # the loop ended meanwhile: deleted, or dormant and to be woken
