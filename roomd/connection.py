"""One client connection, from the WebSocket handshake to the close frame.

Each accepted connection is one task, its reader: bytes -> wsproto events ->
frames -> bucket -> decode -> dispatch. It also keeps the connection's timers
(`ConnectionDeadlines`): it waits for the socket no longer than the next
deadline, then sends a ping or closes with 4001 (auth timeout), 4002
(heartbeat timeout) or 4005 (token expired). Everything sent goes through the
connection's `Outbox` (outbox.py), which writes straight to the socket once per
scheduler turn and starts a writer task only while the socket refuses bytes.

DESIGN.md draws a writer and a heartbeat task per connection; an idle roomd
connection has only its reader.

Closing: whoever decides to close calls `Session.close(code)`, which stops
deliveries, stops the outbox and cancels the reader. The connection task then
lets the outbox finish what is queued (bounded by `close_timeout`), sends the
close frame, waits (bounded) for the peer's, and leaves every room.

Resource handling: the admission slot of the client IP is released, and every
room this connection was in gets a `Disconnect`, however the connection ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from roomd import PROTOCOL_NAME
from roomd import message as m
from roomd.admission import client_ip
from roomd.auth import verify_token
from roomd.bucket import LeakyBucket, Verdict
from roomd.codec import JSON, choose_codec, decode_frame
from roomd.deadline import ConnectionDeadlines
from roomd.errors import CloseCode, ErrorCode, ProtocolError
from roomd.outbox import Outbox
from roomd.rooms import Act, Command, Disconnect, Join, RoomHandle
from roomd.session import Session
from roomd.stats import Stats

if TYPE_CHECKING:
    from roomd.server import Server

log = logging.getLogger("roomd.connection")

RECEIVE_SIZE = 64 * 1024
REJECT_REASONS = {
    400: b"bad websocket handshake\n",
    403: b"origin not allowed\n",
    404: b"no such endpoint; use /v1\n",
    429: b"too many connections from this address\n",
    503: b"server is shutting down\n",
}


async def serve_connection(server: Server, stream: trio.abc.Stream, peer_ip: str) -> None:
    """Serve one client stream until it closes; never raises for the peer's misdeeds.

    Resource handling: `stream` is closed on return.
    """
    conn_id = server.next_conn_id()
    ws = WSConnection(ConnectionType.SERVER)
    try:
        request = None
        with trio.move_on_after(server.config.auth_timeout):
            request = await _read_handshake(stream, ws, server.stats)
        if request is None:
            return
        headers = [(name.lower(), value.decode("latin-1")) for name, value in request.extra_headers]
        forwarded = [value for name, value in headers if name == b"x-forwarded-for"]
        origin = next((value for name, value in headers if name == b"origin"), None)
        ip = client_ip(peer_ip, forwarded, server.config.trusted_proxies)
        status = server.admission.check(request.target, origin, ip)
        if status is not None:
            log.info("conn %d rejected: HTTP %d ip=%s", conn_id, status, ip)
            server.stats.handshakes_rejected[status] += 1
            await _reject(stream, ws, status)
            return
        try:
            codec = choose_codec(request.subprotocols)
            accept = AcceptConnection(subprotocol=codec.subprotocol if codec else None)
            await stream.send_all(ws.send(accept))
            log.info("conn %d open ip=%s codec=%s", conn_id, ip, (codec or JSON).subprotocol)
            # Keep only the frame-level connection: the HTTP handshake state (h11,
            # the request, its headers) would cost every idle connection memory.
            established = ws.handshake.connection
            assert established is not None
            del ws, request, headers
            await Connection(server, stream, established, conn_id).run(codec or JSON)
        finally:
            server.admission.release(ip)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        log.debug("conn %d: transport broke", conn_id)
    finally:
        await trio.aclose_forcefully(stream)


def _try_decode(payload: str | bytes) -> object:
    try:
        return decode_frame(payload)
    except ProtocolError:
        return None


def _is_auth(fields: object) -> bool:
    return isinstance(fields, Mapping) and fields.get("type") == "auth"


async def _read_handshake(
    stream: trio.abc.Stream, ws: WSConnection, stats: Stats
) -> Request | None:
    """Return the upgrade request, or None after answering a bad one (counted) or at EOF."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        try:
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, Request):
                    return event
        except RemoteProtocolError as exc:
            stats.handshakes_rejected[400] += 1
            await _reject(stream, ws, exc.event_hint)
            return None


async def _reject(stream: trio.abc.Stream, ws: WSConnection, status: int | Any) -> None:
    if isinstance(status, RejectConnection):
        status = status.status_code
    body = REJECT_REASONS.get(status, b"rejected\n")
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    reply = ws.send(RejectConnection(status_code=status, headers=headers, has_body=True))
    reply += ws.send(RejectData(data=body))
    with trio.move_on_after(2):
        await stream.send_all(reply)


@attrs.define(eq=False)
class Connection:
    """The reader and the close of one accepted WebSocket connection."""

    server: Server
    stream: trio.abc.Stream
    ws: WsConnection
    conn_id: int
    peer_close: CloseConnection | None = None
    _parts: list[Any] = attrs.field(factory=list)
    _size: int = 0

    async def run(self, codec: Any) -> None:
        """Serve the accepted connection until it closes, then leave every room."""
        server = self.server
        config = server.config
        outbox = Outbox.for_stream(
            self.stream,
            server.flusher,
            limit=config.send_queue,
            on_overflow=lambda: session.overflowed(),
            on_broken=lambda: session.close(CloseCode.ABNORMAL),
        )
        session = Session(self.conn_id, codec, outbox, trio.CancelScope())
        server.sessions.add(session)
        if server.admission.draining:  # accepted just as the drain began
            session.close(CloseCode.GOING_AWAY)
        try:
            outbox.nursery = server.connections_nursery
            session.send(self._hello())
            with session.reader_scope:
                await self._read(session)
            session.close(self._close_code_after_read())
            with trio.move_on_after(config.close_timeout):
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
            server.session_ended(session)
            reason = (
                "timeout" if session.close_code == CloseCode.HEARTBEAT_TIMEOUT else "disconnected"
            )
            await self._leave_rooms(session, reason)
            log.info("conn %d closed code=%s", self.conn_id, session.close_code)

    def _hello(self) -> dict[str, Any]:
        config = self.server.config
        return {
            "type": "hello",
            "protocol": PROTOCOL_NAME,
            "heartbeatInterval": config.heartbeat_interval,
            "authTimeout": config.auth_timeout,
            "limits": {
                "rate": config.rate,
                "burst": config.burst,
                "maxFrame": config.max_frame,
                "maxMembers": config.max_members,
                "maxRoomsPerConnection": config.max_rooms_per_conn,
            },
        }

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
        config = self.server.config
        if self.peer_close is not None:
            reply = self.peer_close.response()
        else:
            reply = CloseConnection(code=session.close_code or CloseCode.NORMAL)
        # A close that wsproto made up for bad input (1002, 1007) leaves it OPEN: we
        # speak first then and must wait for the peer's answer.
        answering_peer = self.ws.state is ConnectionState.REMOTE_CLOSING
        with trio.move_on_after(config.close_timeout):
            await self.stream.send_all(self.ws.send(reply))
            if answering_peer:
                return  # the peer spoke first: the closing handshake is complete
            while True:  # we spoke first: read until the peer's close frame or EOF
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                self.ws.receive_data(bytes(data))
                for event in self.ws.events():
                    if isinstance(event, CloseConnection):
                        return

    async def _leave_rooms(self, session: Session, reason: str) -> None:
        """Tell every room this connection was in (or joining) that it is gone.

        Each room gets its own bounded wait, and only when its inbox is full, so
        one busy room cannot keep the others holding a dead member.
        """
        for room_id in session.member_of:
            handle = self.server.registry.get(room_id)
            if handle is None:
                continue
            command = Disconnect(session, reason)
            try:
                handle.inbox_send.send_nowait(command)
            except trio.WouldBlock:
                timeout = self.server.config.close_timeout
                with trio.CancelScope(shield=True), trio.move_on_after(timeout) as scope:
                    await handle.inbox_send.send(command)
                if scope.cancelled_caught:
                    log.warning(
                        "conn %d: room %s did not take the leave", self.conn_id, room_id[:6]
                    )
            except trio.BrokenResourceError:
                pass  # the room ended meanwhile

    # -- reader ----------------------------------------------------------------

    async def _read(self, session: Session) -> None:
        config = self.server.config
        deadlines = ConnectionDeadlines.start(
            trio.current_time(),
            auth_timeout=config.auth_timeout,
            heartbeat_interval=config.heartbeat_interval,
            heartbeat_timeout=config.heartbeat_timeout,
        )
        bucket = LeakyBucket(rate=config.rate, burst=config.burst, updated=trio.current_time())
        # On a plain TCP socket, wait for readability and read the descriptor directly:
        # the same system call as receive_some, without the three coroutine frames that
        # every idle connection would otherwise keep suspended.
        fd = self.stream.socket.fileno() if isinstance(self.stream, trio.SocketStream) else -1
        data: bytes | bytearray = b""
        while True:
            with trio.move_on_at(deadlines.next_wakeup()) as wakeup_scope:
                try:
                    if fd >= 0:
                        await trio.lowlevel.wait_readable(fd)
                        data = os.read(fd, RECEIVE_SIZE)
                    else:
                        data = await self.stream.receive_some(RECEIVE_SIZE)
                except BlockingIOError:
                    continue  # woken without data after all: wait again
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return  # reset by the peer: the same as EOF for us
            now = trio.current_time()
            if wakeup_scope.cancelled_caught:
                due = deadlines.due(now)
                if isinstance(due, CloseCode):
                    log.info("conn %d closing: %s", self.conn_id, due.name.lower())
                    session.close(due)
                    return
                if due:
                    session.deliver(self.ws.send(Ping(b"")))
                continue
            if not data:
                return
            deadlines.heard(now)
            self.ws.receive_data(bytes(data))
            for event in self.ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    self._parts.append(event.data)
                    # max_frame is bytes; wsproto hands text frames over decoded.
                    part = event.data
                    self._size += len(part.encode()) if isinstance(part, str) else len(part)
                    if self._size > config.max_frame:
                        session.close(CloseCode.MESSAGE_TOO_BIG)
                        return
                    if event.message_finished:
                        payload = self._take_payload()
                        await self._on_frame(session, payload, bucket, deadlines)
                elif isinstance(event, Ping):
                    session.deliver(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.peer_close = event
                    return

    def _close_code_after_read(self) -> int:
        """Return the code this connection closes with once the reader has stopped.

        A close roomd decided on was set already (the first code wins). Otherwise
        the peer closed cleanly (roomd answers 1000 on its side, whatever code the
        peer chose: a client cannot make roomd count a timeout or a slow consumer),
        or wsproto refused the input (1002, 1007), or the stream just ended.
        """
        if self.peer_close is None:
            return CloseCode.ABNORMAL
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            return CloseCode.NORMAL
        return self.peer_close.code

    def _take_payload(self) -> str | bytes:
        parts, self._parts, self._size = self._parts, [], 0
        if len(parts) == 1:
            part = parts[0]
            return part if isinstance(part, str) else bytes(part)
        if isinstance(parts[0], str):
            return "".join(parts)
        return b"".join(parts)

    async def _on_frame(
        self,
        session: Session,
        payload: str | bytes,
        bucket: LeakyBucket,
        deadlines: ConnectionDeadlines,
    ) -> None:
        """Process one complete client frame: rate, decode, validate, dispatch."""
        now = trio.current_time()
        verdict = bucket.offer(now)
        if verdict is not Verdict.ACCEPT:
            self.server.stats.rate_limited += 1
            if verdict is Verdict.REJECT:
                error = ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"rate limit of {self.server.config.rate:g} messages/s exceeded",
                    retry_after=bucket.retry_after(now),
                )
                # Decoded only for its `id` and `roomId`: this happens once per run of refusals.
                self._reply_error(session, error, *m.peek_context(_try_decode(payload)))
            elif verdict is Verdict.ABUSE:
                log.info("conn %d closing: rate-limit abuse", self.conn_id)
                session.close(CloseCode.RATE_LIMIT_ABUSE)
            return
        self.server.stats.frames_in += 1
        fields: object = None
        try:
            fields = decode_frame(payload)
            if session.aid is None and not _is_auth(fields):
                raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first: send auth")
            msg = m.parse_message(fields, text=isinstance(payload, str))
        except ProtocolError as exc:
            self._reply_error(session, exc, *m.peek_context(fields))
            return
        try:
            await self._dispatch(session, msg, deadlines)
        except ProtocolError as exc:
            self._reply_error(session, exc, msg.id, getattr(msg, "room_id", None))

    def _reply_error(
        self,
        session: Session,
        exc: ProtocolError,
        request_id: m.RequestId | None,
        room_id: str | None,
    ) -> None:
        event = exc.to_wire()
        if request_id is not None:
            event["id"] = request_id
        if room_id is not None:
            event["roomId"] = room_id
        log.debug("conn %d error %s", self.conn_id, exc.code)
        session.send(event)

    async def _dispatch(
        self, session: Session, msg: m.Message, deadlines: ConnectionDeadlines
    ) -> None:
        """Handle one valid message: auth here, room messages in their room's loop."""
        if isinstance(msg, m.Auth):
            self._auth(session, msg, deadlines)
            return
        aid = session.aid
        assert aid is not None, "_on_frame answers every other message before auth"
        registry = self.server.registry
        if isinstance(msg, m.CreateChatroom):
            self._check_room_quota(session)
            handle = await registry.create(host=aid, encrypted_room_key=msg.encrypted_room_key)
            if handle is None:  # 128 random bits collided: vanishingly rare, but answer it
                raise ProtocolError(ErrorCode.INTERNAL, "could not create a room; try again")
            await self._join(session, handle, Join(session, aid, msg.public_key, msg.id))
        elif isinstance(msg, m.JoinChatroom):
            found = registry.get(msg.room_id)
            if found is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no room '{msg.room_id}'")
            if msg.room_id not in session.member_of:
                self._check_room_quota(session)
            await self._join(session, found, Join(session, aid, msg.public_key, msg.id))
        elif isinstance(msg, m.RoomMessage):
            found = registry.get(msg.room_id)
            if found is None or msg.room_id not in session.member_of:
                raise ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room '{msg.room_id}'")
            await self._send_to_room(found, Act(session, msg))

    async def _join(self, session: Session, handle: RoomHandle, command: Join) -> None:
        session.join_pending(handle.room_id)
        try:
            await self._send_to_room(handle, command)
        except ProtocolError:
            session.join_settled(handle.room_id)
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no room '{handle.room_id}'") from None

    async def _send_to_room(self, handle: RoomHandle, command: Command) -> None:
        try:
            # Without a checkpoint when the inbox has room: the reader then hands a
            # whole chunk of frames to the room in one scheduler turn, and the room
            # and the writers handle them as one batch (one write per member).
            try:
                handle.inbox_send.send_nowait(command)
            except trio.WouldBlock:
                await handle.inbox_send.send(command)
        except trio.BrokenResourceError:
            raise ProtocolError(
                ErrorCode.NOT_MEMBER, f"not a member of room '{handle.room_id}'"
            ) from None

    def _check_room_quota(self, session: Session) -> None:
        limit = self.server.config.max_rooms_per_conn
        if len(session.member_of) >= limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS, f"this connection is already in {limit} rooms"
            )

    def _auth(self, session: Session, msg: m.Auth, deadlines: ConnectionDeadlines) -> None:
        wall = self.server.wall_ms() / 1000
        identity = verify_token(self.server.token_secret, msg.token, now=wall)
        if session.aid is not None and identity.aid != session.aid:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"this connection is already authenticated as '{session.aid}'"
            )
        token_deadline = trio.current_time() + (identity.expires_at - wall)
        if session.aid is None:
            log.info("conn %d auth aid=%s", self.conn_id, identity.aid)
            session.aid = identity.aid
        else:
            # A fresh token extends the session; an older one never shortens it.
            token_deadline = max(token_deadline, deadlines.token_deadline)
        deadlines.authenticated(token_deadline)
        reply: dict[str, Any] = {"type": "authOk", "aid": identity.aid}
        reply["expiresAt"] = identity.expires_at
        if msg.id is not None:
            reply["id"] = msg.id
        session.send(reply)
