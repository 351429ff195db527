"""One connection as the rest of roomd sees it, and the set of open ones.

A `Session` is created when a handshake is accepted and lives until the
connection's task ends. It pairs the connection's rules (`connection`, the core
`Connection`) with how to reach it: its codec and its outbox, which never
blocks (a full outbound queue closes the session with 4003 rather than making
a room wait). Who touches what: the connection's reader feeds `state`; the room
loops call `connection.join_arrived`, `.attached` and `.detached` and put
frames into `outbox`; whoever closes first sets the close code (`close`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import attrs
import trio

from roomd.core.codec import Codec
from roomd.core.connection import Connection
from roomd.core.event import Event
from roomd.core.room import Attached, Detached, Effect, Send
from roomd.core.stats import Stats
from roomd.daemon.outbox import Flusher, Outbox, fan_out, frame_of
from roomd.errors import CloseCode

log = logging.getLogger("roomd.session")

# Codes roomd closes with for cause: worth a log line of their own.
_FOR_CAUSE = frozenset(
    {
        CloseCode.MESSAGE_TOO_BIG,
        CloseCode.INTERNAL_ERROR,
        CloseCode.AUTH_TIMEOUT,
        CloseCode.HEARTBEAT_TIMEOUT,
        CloseCode.SLOW_CONSUMER,
        CloseCode.RATE_LIMIT_ABUSE,
        CloseCode.TOKEN_EXPIRED,
    }
)


@attrs.define(eq=False, slots=True)
class Session:
    """The state of one accepted connection that other tasks may touch."""

    conn_id: int
    connection: Connection
    codec: Codec
    outbox: Outbox
    # The scope of the connection's reader: `close` cancels it.
    reader_scope: trio.CancelScope

    @classmethod
    def open(
        cls,
        conn_id: int,
        connection: Connection,
        codec: Codec,
        stream: trio.abc.Stream,
        *,
        flusher: Flusher,
        nursery: trio.Nursery,
        send_queue: int,
    ) -> Session:
        """Return the session of an accepted `stream`, with its outbox."""

        def on_close(code: CloseCode) -> None:
            session.close(code)

        outbox = Outbox.for_stream(stream, flusher, nursery, limit=send_queue, on_close=on_close)
        session = cls(conn_id, connection, codec, outbox, trio.CancelScope())
        return session

    @property
    def aid(self) -> str | None:
        """The AID this connection authenticated as, or None before auth."""
        return self.connection.aid

    @property
    def close_code(self) -> int | None:
        """The code this connection closes with, once it is closing."""
        return self.connection.close_code

    def send(self, event: Event) -> None:
        """Encode `event` for this session alone and queue it; never blocks."""
        self.outbox.put(frame_of(self.codec, event))

    def close(self, code: int) -> None:
        """Start closing with `code` (the first code wins); never blocks.

        After this, nothing more is queued; the outbox finishes (or drops) what
        it holds, the connection task sends the close frame and leaves every room.
        """
        if not self.connection.close(code):
            return
        if code in _FOR_CAUSE:
            log.info("conn %d closing: %s", self.conn_id, CloseCode(code).name.lower())
        self.outbox.stop(drain=Connection.flushes_queue(code))
        self.reader_scope.cancel()


@attrs.define(eq=False)
class Sessions:
    """The open sessions of a server: counted when they end, closed together on shutdown."""

    stats: Stats
    open: set[Session] = attrs.field(factory=set)
    closing_all: bool = False
    _all_ended: trio.Event = attrs.field(factory=trio.Event)

    def add(self, session: Session) -> None:
        """Count `session` as open; one accepted during `close_all` is closed at once."""
        self.open.add(session)
        if self.closing_all:
            session.close(CloseCode.GOING_AWAY)

    def ended(self, session: Session) -> None:
        """Forget a session whose connection task is over, counting its close code."""
        self.open.discard(session)
        self.stats.closes[session.close_code or CloseCode.ABNORMAL] += 1
        if self.closing_all and not self.open:
            self._all_ended.set()

    async def close_all(self) -> None:
        """Close every session with 1001 and return once all have ended.

        Sessions accepted meanwhile are closed too (see `add`).
        """
        self.closing_all = True
        for session in list(self.open):
            session.close(CloseCode.GOING_AWAY)
        if not self.open:
            await trio.lowlevel.checkpoint()
            return
        await self._all_ended.wait()


def perform(room_id: str, effects: Iterable[Effect], stats: Stats) -> None:
    """Carry out a room's effects on this process's sessions, in order.

    `Send` goes to each addressed session's outbox (encoded once per codec);
    `Attached` / `Detached` tell the session's connection it is in or out of
    the room. The room's handles are `Session`s.
    """
    for effect in effects:
        match effect:
            case Send(to, event):
                fan_out(to, event)  # type: ignore[arg-type]  # the room's handles are Sessions
                stats.deliveries_out += len(to)
            case Attached(session):
                assert isinstance(session, Session)
                session.connection.attached(room_id)
            case Detached(session):
                assert isinstance(session, Session)
                session.connection.detached(room_id)
