"""The roomd server: listeners, the nursery tree and graceful shutdown.

    Server.run
    └── server nursery
        ├── rooms: one room loop per live room (RoomRegistry)
        └── connections nursery
            ├── trio.serve_listeners: accepts TCP (or TLS) streams
            └── one task per connection: handshake, then reader + writer

`shutdown()` starts the drain: new handshakes get 503, every open connection is
closed with 1001, and once they are gone (or `close_timeout` passed) the whole
tree is cancelled.
"""

from __future__ import annotations

import itertools
import logging
import ssl
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

from roomd.admission import Admission
from roomd.auth import load_token_secret
from roomd.config import Config
from roomd.connection import serve_connection
from roomd.errors import CloseCode
from roomd.rooms import RoomRegistry
from roomd.session import Session

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


@attrs.define(eq=False)
class Server:
    """Everything one roomd process shares between its connections and rooms."""

    config: Config
    token_secret: str
    admission: Admission
    registry: RoomRegistry = attrs.field(init=False)
    sessions: set[Session] = attrs.field(factory=set)
    counters: Counter[str] = attrs.field(factory=Counter)
    _conn_ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _stopping: trio.Event = attrs.field(factory=trio.Event)
    _drained: trio.Event = attrs.field(factory=trio.Event)

    @classmethod
    def from_config(cls, config: Config, token_secret: str | None = None) -> Server:
        """Return a server for `config`; the token secret defaults to the data dir's."""
        return cls(
            config=config,
            token_secret=token_secret or load_token_secret(config.data_dir),
            admission=Admission(config.max_conns_per_ip, config.allowed_origins),
        )

    def session_ended(self, session: Session) -> None:
        """Forget a closed session; the drain ends when the last one goes."""
        self.sessions.discard(session)
        if self.admission.draining and not self.sessions:
            self._drained.set()

    def next_conn_id(self) -> int:
        """Return a new connection id for log lines."""
        return next(self._conn_ids)

    def rejected(self, status: int) -> None:
        """Count a handshake rejected with HTTP `status`."""
        self.counters[f"rejected_{status}"] += 1

    def timed_out(self, code: CloseCode) -> None:
        """Count a connection closed by one of its timers."""
        self.counters[f"closed_{int(code)}"] += 1

    def rate_limited(self) -> None:
        """Count a frame refused by a leaky bucket."""
        self.counters["rate_limited"] += 1

    def shutdown(self) -> None:
        """Begin the graceful shutdown; `run` returns once it is done."""
        self._stopping.set()

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
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until `shutdown()`; report the bound TCP port (0 if none) via `task_status`.

        Resource handling: the listeners (opened from the config when not given)
        and every connection and room are closed before this returns.
        """
        if listeners is None:
            listeners = await self.open_listeners()
        async with trio.open_nursery() as server_nursery:
            self.registry = RoomRegistry(self.config, server_nursery)
            async with trio.open_nursery() as connections:
                connections.start_soon(
                    partial(
                        trio.serve_listeners,
                        self._serve_stream,
                        list(listeners),
                        handler_nursery=connections,
                    )
                )
                task_status.started(_bound_port(listeners[0]))
                await self._stopping.wait()
                await self._drain()
                connections.cancel_scope.cancel()
            server_nursery.cancel_scope.cancel()

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
