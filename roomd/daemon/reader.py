"""One client connection in the trio shell, from the upgrade to the close frame.

Each accepted connection is one task, its reader: bytes -> wsproto events ->
the core `Connection` (roomd.core.connection), which decides everything, and
its actions carried out here: replies into the outbox, commands into room
inboxes, pongs, closes. The reader waits only for bytes, under no deadline of
its own: the server's one `Timekeeper` (timekeeper.py) pings the connection
and closes it when a deadline (auth, heartbeat, token expiry) passes, which
cancels the reader. So an idle connection is one task, suspended in one
system-level wait. Everything sent goes through the connection's `Outbox`
(outbox.py).

Closing: whoever decides to close calls `Session.close(code)`, which stops
deliveries, stops the outbox and cancels the reader. The connection task then
lets the outbox finish what is queued (bounded by `close_timeout`), sends the
close frame, waits (bounded) for the peer's, and leaves every room.

Resource handling: the admission slot of the client IP is released, and every
room this connection was in gets a `Disconnect`, however the connection ends.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio
import wsproto.connection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from roomd.core.admission import Admission, Rejection
from roomd.core.codec import Codec
from roomd.core.connection import (
    Action,
    Authenticated,
    Close,
    Connection,
    ConnectionLimits,
    CreateRoom,
    JoinRoom,
    Reply,
    SendPong,
    ToRoom,
)
from roomd.core.frames import OP_BINARY, OP_PING, ClientFrames
from roomd.core.refusal import RefusalLog
from roomd.core.room import room_tag
from roomd.core.stats import Stats
from roomd.daemon.handshake import RECEIVE_SIZE, log_refusal, refuse_at_first_bytes, upgrade
from roomd.daemon.outbox import Flusher, socket_fd
from roomd.daemon.registry import RoomRegistry, new_epoch, new_room_id
from roomd.daemon.room_loop import Act, Command, Disconnect, Join
from roomd.daemon.session import Session, Sessions
from roomd.daemon.timekeeper import Timekeeper
from roomd.errors import CloseCode, ProtocolError

if TYPE_CHECKING:  # the cluster's modules load only with --cluster (roomd/daemon/server.py)
    from roomd.daemon.cluster_rooms import ClusterRooms

log = logging.getLogger("roomd.reader")

# How many WebSocket events of one read the reader handles before it lets others run.
YIELD_EVERY = 1024


@attrs.frozen(kw_only=True)
class ConnectionContext:
    """Exactly what a connection task uses of the server that accepted it."""

    limits: ConnectionLimits
    token_secret: str
    # Wall-clock Unix milliseconds (token times).
    wall_ms: Callable[[], int]
    # How long a client has for its upgrade request.
    handshake_timeout: float
    # How long closing may wait: for the outbox to drain, for the peer's close frame.
    close_timeout: float
    send_queue: int
    admission: Admission
    # When refused handshakes are worth a log line.
    refusals: RefusalLog
    stats: Stats
    flusher: Flusher
    # Where connection tasks and their outboxes' writers run.
    nursery: trio.Nursery
    registry: RoomRegistry
    sessions: Sessions
    # Keeps every connection's timers: pings and closing deadlines.
    timekeeper: Timekeeper
    conn_ids: itertools.count[int]
    # With --cluster: the rooms shared through Redis (then `registry` holds none).
    cluster: ClusterRooms | None = None


async def serve_connection(context: ConnectionContext, stream: trio.abc.Stream, peer: str) -> None:
    """Serve one client stream until it closes; never raises for the peer's misdeeds.

    Resource handling: `stream` is closed on return, and the connection's
    admission slot (held from accept) released.
    """
    conn_id = next(context.conn_ids)
    admission = context.admission
    try:
        slot = admission.accept(peer)
        if isinstance(slot, Rejection):
            context.stats.handshakes_rejected[slot] += 1
            log.debug("conn %d refused at accept: HTTP %d ip=%s", conn_id, slot.status, peer)
            log_refusal(context.refusals, slot, peer)
            await refuse_at_first_bytes(stream, slot, context.handshake_timeout)
            return
        try:
            upgraded = await upgrade(
                stream,
                conn_id,
                peer,
                slot,
                handshake_timeout=context.handshake_timeout,
                admission=admission,
                stats=context.stats,
                refusals=context.refusals,
            )
            if upgraded is not None:
                reader = Reader(context, stream, upgraded.ws, conn_id)
                await reader.run(upgraded.codec, upgraded.pipelined)
        finally:
            admission.release(slot)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("conn %d: transport broke", conn_id)
    finally:
        await trio.aclose_forcefully(stream)


@attrs.define(eq=False)
class Reader:
    """The reader and the close of one accepted WebSocket connection."""

    context: ConnectionContext
    stream: trio.abc.Stream
    ws: wsproto.connection.Connection
    conn_id: int
    peer_close: CloseConnection | None = None
    # The fast path for common frames, until the first unusual one (then wsproto's).
    _frames: ClientFrames = attrs.field(init=False)
    _parts: list[Any] = attrs.field(factory=list)

    @_frames.default
    def _fast_frames(self) -> ClientFrames:
        return ClientFrames(self.context.limits.max_frame)

    async def run(self, codec: Codec, pipelined: bytes = b"") -> None:
        """Serve the accepted connection until it closes, then leave every room.

        `pipelined` holds bytes the client sent behind its upgrade request: they
        are read first, as if they had arrived after the handshake.
        """
        context = self.context
        connection = Connection.start(
            context.limits, context.token_secret, context.stats, trio.current_time()
        )
        session = Session.open(
            self.conn_id,
            connection,
            codec,
            self.stream,
            flusher=context.flusher,
            nursery=context.nursery,
            send_queue=context.send_queue,
        )
        outbox = session.outbox
        context.sessions.add(session)
        context.timekeeper.watch(session)
        try:
            session.send(context.limits.hello())
            with session.reader_scope:
                await self._read(session, pipelined)
            answering_peer = self.ws.state is ConnectionState.REMOTE_CLOSING
            peer_code = None if self.peer_close is None else self.peer_close.code
            session.close(
                connection.close_code_after_read(peer_code, peer_spoke_first=answering_peer)
            )
            with trio.move_on_after(context.close_timeout):
                await outbox.wait_idle()
            if not outbox.is_idle:
                outbox.abort()  # a writer still stuck on a full socket
            await self._close_handshake(session)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            session.close(CloseCode.ABNORMAL)  # the transport went away while closing
        except Exception:
            # A bug, not the peer's doing: log it loudly, tell the client 1011, carry on
            # serving everyone else.
            log.exception("conn %d internal error", self.conn_id)
            session.close(CloseCode.INTERNAL_ERROR)
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._close_handshake(session)
        finally:
            outbox.abort()
            context.sessions.ended(session)
            context.timekeeper.forget(session)
            await self._leave_rooms(session)
            log.info("conn %d closed code=%s", self.conn_id, session.close_code)

    # -- close -----------------------------------------------------------------

    async def _close_handshake(self, session: Session) -> None:
        """Send the close frame (when the stream is whole and idle) and await the peer's."""
        outbox = session.outbox
        if session.close_code == CloseCode.ABNORMAL or outbox.torn or not outbox.is_idle:
            return
        if self.ws.state not in (
            ConnectionState.OPEN,
            ConnectionState.REMOTE_CLOSING,
        ):
            return
        if self.peer_close is not None:
            reply = self.peer_close.response()
        else:
            reply = CloseConnection(code=session.close_code or CloseCode.NORMAL)
        # A close that wsproto made up for bad input (1002, 1007) leaves it OPEN: we
        # speak first then and must wait for the peer's answer.
        answering_peer = self.ws.state is ConnectionState.REMOTE_CLOSING
        with trio.move_on_after(self.context.close_timeout):
            await self.stream.send_all(self.ws.send(reply))
            if answering_peer:
                return  # the peer spoke first: the closing handshake is complete
            if not self._frames.done:  # wsproto reads on from a frame's first byte
                self.ws.receive_data(self._frames.rest())
            while True:  # we spoke first: read until the peer's close frame or EOF
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                self.ws.receive_data(bytes(data))
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        return

    async def _leave_rooms(self, session: Session) -> None:
        """Tell every room this connection was in (or joining) that it is gone.

        Each room gets its own bounded wait, and only when its inbox is full, so
        one busy room cannot keep the others holding a dead member.
        """
        if self.context.cluster is not None:
            self.context.cluster.leave_all(session)
            return
        reason = session.connection.leave_reason
        for room_id in session.connection.member_of:
            handle = self.context.registry.live.get(room_id)
            if handle is None:
                continue  # deleted meanwhile (a member's room is never dormant)
            command = Disconnect(session, reason)
            try:
                handle.inbox_send.send_nowait(command)
            except trio.WouldBlock:
                timeout = self.context.close_timeout
                with trio.CancelScope(shield=True), trio.move_on_after(timeout) as scope:
                    await handle.inbox_send.send(command)
                if scope.cancelled_caught:
                    log.warning(
                        "conn %d: room %s did not take the leave", self.conn_id, room_tag(room_id)
                    )
            except trio.BrokenResourceError:
                pass  # the room ended meanwhile

    # -- reader ----------------------------------------------------------------

    async def _read(self, session: Session, pipelined: bytes) -> None:
        if pipelined and not await self._take_in(session, pipelined):
            return
        # On a plain TCP socket, wait for readability and read the descriptor directly:
        # the same system call as receive_some, without the three coroutine frames that
        # every idle connection would otherwise keep suspended.
        fd = socket_fd(self.stream)
        while True:
            try:
                if fd >= 0:
                    await trio.lowlevel.wait_readable(fd)
                    data: bytes | bytearray = os.read(fd, RECEIVE_SIZE)
                else:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
            except BlockingIOError:
                continue  # woken without data after all: wait again
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return  # reset by the peer: the same as EOF for us
            if not data or not await self._take_in(session, data):
                return

    async def _take_in(self, session: Session, data: bytes | bytearray) -> bool:
        """Process bytes read from the client; return False once reading must stop."""
        connection = session.connection
        now = trio.current_time()
        connection.heard(now)
        frames = self._frames
        if not frames.done:
            fed = frames.feed(bytes(data))
            for count, frame in enumerate(fed.frames, 1):
                if count % YIELD_EVERY == 0:
                    if not await self._yield(connection):
                        return False
                    now = trio.current_time()
                if frame.opcode <= OP_BINARY:
                    await self._receive_message(session, frame.payload)
                    now = trio.current_time()  # handing it to a room may have waited
                    continue
                assert isinstance(frame.payload, bytes)  # only text frames are decoded
                ping = frame.payload if frame.opcode == OP_PING else None
                if not await self._receive_control(session, ping, now):
                    return False
            if fed.too_big is not None:
                too_big = connection.frame_part(fed.too_big, finished=True)
                assert too_big is not None  # the fast path's limit is max_frame
                await self._carry_out(session, too_big)
                return False
            if fed.unusual is None:
                return connection.close_code is None
            data = fed.unusual  # wsproto's from here on
        self.ws.receive_data(bytes(data))
        for count, event in enumerate(self.ws.events(), 1):
            if count % YIELD_EVERY == 0 and not await self._yield(connection):
                return False
            if isinstance(event, TextMessage | BytesMessage):
                part = event.data
                self._parts.append(part)
                # max_frame is bytes; wsproto hands text frames over decoded.
                size = len(part.encode()) if isinstance(part, str) else len(part)
                too_big = connection.frame_part(size, finished=event.message_finished)
                if too_big is not None:
                    await self._carry_out(session, too_big)
                    return False
                if event.message_finished:
                    await self._receive_message(session, self._take_payload())
            elif isinstance(event, Ping | Pong):
                ping = bytes(event.payload) if isinstance(event, Ping) else None
                if not await self._receive_control(session, ping, trio.current_time()):
                    return False
            elif isinstance(event, CloseConnection):
                self.peer_close = event
                return False
        return connection.close_code is None

    @staticmethod
    async def _yield(connection: Connection) -> bool:
        # A read of tiny frames (a ping flood) must not keep the other tasks waiting;
        # real messages rarely come this many to a read.
        await trio.lowlevel.checkpoint()
        return connection.close_code is None

    async def _receive_message(self, session: Session, payload: str | bytes) -> None:
        # The clock read per frame: handing one to a room may have waited.
        context = self.context
        room_ids = context.registry if context.cluster is None else context.cluster.room_ids
        actions = session.connection.receive_frame(
            payload, trio.current_time(), context.wall_ms(), room_ids
        )
        for action in actions:
            await self._carry_out(session, action)

    async def _receive_control(self, session: Session, ping: bytes | None, now: float) -> bool:
        """Apply a client ping (its payload) or pong (None) at `now`; False: stop reading."""
        connection = session.connection
        control = connection.receive_control(now, ping=ping)
        if control is not None:
            await self._carry_out(session, control)
        return connection.close_code is None

    def _take_payload(self) -> str | bytes:
        parts, self._parts = self._parts, []
        if len(parts) == 1:
            part = parts[0]
            return part if isinstance(part, str) else bytes(part)
        if isinstance(parts[0], str):
            return "".join(parts)
        return b"".join(parts)

    async def _carry_out(self, session: Session, action: Action) -> None:
        """Do what the core `Connection` said, in the order it said it."""
        match action:
            case Reply(event):
                if event["type"] == "error":
                    log.debug("conn %d error %s", self.conn_id, event["code"])
                session.send(event)
            case ToRoom(_, msg):
                if self.context.cluster is not None:
                    await self.context.cluster.act(session, msg)
                    return
                await self._to_room(session, action, Act(session, msg))
            case JoinRoom(_, aid, public_key, request_id, since):
                if self.context.cluster is not None:
                    await self.context.cluster.join(session, action)
                    return
                join = Join(session, aid, public_key, request_id, since)
                await self._to_room(session, action, join)
            case CreateRoom():
                try:
                    created = await self._create(action)
                except ProtocolError as exc:
                    await self._carry_out(session, session.connection.room_refused(action, exc))
                    return
                await self._carry_out(session, session.connection.room_created(action, created))
            case Authenticated(aid, reply, renewed):
                self.context.timekeeper.reschedule(session)  # the token's expiry counts now
                if not renewed:
                    log.info("conn %d auth aid=%s", self.conn_id, aid)
                session.send(reply)
            case SendPong(payload):
                session.outbox.put(self.ws.send(Pong(payload)))
            case Close(code):
                session.close(code)

    async def _create(self, action: CreateRoom) -> str | None:
        """Create the room `action` asks for; return its id (None: the id was taken)."""
        cluster = self.context.cluster
        if cluster is not None:
            room_id = new_room_id()
            prefix = secrets.token_urlsafe(16)
            return room_id if await cluster.create(action, room_id, new_epoch(), prefix) else None
        room = await self.context.registry.create(
            host=action.aid, encrypted_room_key=action.encrypted_room_key
        )
        return None if room is None else room.room_id

    async def _to_room(self, session: Session, action: JoinRoom | ToRoom, command: Command) -> None:
        registry = self.context.registry
        while True:
            handle = registry.live.get(action.room_id)
            if handle is None:
                # Only a join finds its room dormant (a member's room is live).
                handle = await registry.wake(action.room_id)
                if handle is None:
                    break
            if isinstance(command, Act) and handle.loop.apply_now(command):
                return  # applied here: the room's loop was idle
            try:
                # Without a checkpoint when the inbox has room: the reader then hands a
                # whole chunk of frames to the room in one scheduler turn, and the room
                # and the writers handle them as one batch (one write per member).
                try:
                    handle.inbox_send.send_nowait(command)
                except trio.WouldBlock:
                    await handle.inbox_send.send(command)
                return
            except trio.BrokenResourceError:
                continue  # the loop ended meanwhile: deleted, or dormant and to be woken
        await self._carry_out(session, session.connection.room_gone(action))
