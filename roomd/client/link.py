"""The SDK's link to roomd: one connection after another, and what awaits each answer.

A `Link` keeps a client connected: it connects, authenticates, rejoins every
room with `since`, reads, and when the connection drops it reconnects with
backoff. Every frame goes out through it, paced inside roomd's rate limit, and
every frame roomd sends comes back through it: a direct reply settles its
request, an event goes to the one stream of the client (`events`) after the
`ClientSession` has dropped what the application saw already. It runs on
asyncio and on trio alike (anyio). `Client` is the API on top of it.

Resource handling: `run` is the link's one long-lived task; each connection's
reader runs in a task group inside it, and the WebSocket is closed, shielded,
whenever a connection ends.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs
import cbor2

from roomd.client.errors import AuthenticationFailed, CloseCode, ConnectionLost, RequestError
from roomd.client.events import (
    AuthOk,
    Disconnected,
    ErrorEvent,
    Event,
    Hello,
    MalformedEvent,
    NewMessage,
    Reconnected,
    RoomLost,
    Stopped,
    parse_event,
)
from roomd.client.pacer import Pacer
from roomd.client.session import ClientSession, Frame
from roomd.client.waiter import Backoff, Match, Pending, Waiter
from roomd.client.websocket import ConnectionClosed, HandshakeRefused, WebSocket

logger = logging.getLogger("roomd.client")

TokenSource = str | Callable[[], Awaitable[str]]

REQUEST_TIMEOUT = 30.0


@attrs.define(eq=False)
class Link:
    """The connection of one client to roomd, kept up across drops."""

    url: str
    # The token, the frames awaiting an answer (blobs) and the unechoed messages stay
    # out of the repr: a traceback that shows locals must not print them.
    _token: TokenSource = attrs.field(repr=False)
    _ssl_context: ssl.SSLContext | None
    _backoff: Backoff
    _events_send: anyio.abc.ObjectSendStream[Event] = attrs.field(repr=False)
    events: anyio.abc.ObjectReceiveStream[Event] = attrs.field(repr=False)
    session: ClientSession = attrs.field(factory=ClientSession, repr=False)
    hello: Hello | None = None
    _websocket: WebSocket | None = attrs.field(default=None, repr=False)
    _ready: anyio.Event = attrs.field(factory=anyio.Event)
    _stopped: BaseException | None = None
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), repr=False)
    _pending: Pending = attrs.field(factory=Pending, repr=False)
    _pacer: Pacer = attrs.field(factory=lambda: Pacer.from_limits(10.0, 30.0))
    _pacing: anyio.Lock = attrs.field(factory=anyio.Lock)
    _replayed: anyio.Event = attrs.field(factory=anyio.Event)
    _started: bool = False
    # Counts connections: a retry after `retryAfter` that spans a reconnect is the rejoin's.
    _generation: int = 0

    # -- sending -----------------------------------------------------------------------

    async def request(
        self, frame: Frame, match: Match | None, *, public_key: bytes | None = None
    ) -> Event:
        """Send `frame` and return its direct reply, or the first event `match` accepts.

        Raises `RequestError` when roomd refuses it, `ConnectionLost` when the
        connection drops first, `TimeoutError` after `REQUEST_TIMEOUT` s.
        """
        await self._wait_ready()
        waiter = Waiter(match)
        matchers = self._pending.matchers
        if match is not None:
            matchers.append(waiter)
        try:
            request_id = await self._send_frame(frame, waiter, public_key=public_key)
            try:
                result = await self._settle(waiter, frame)
            finally:
                self._pending.reply_waiter(request_id)
        finally:
            if waiter in matchers:
                matchers.remove(waiter)
        return result

    async def fire(self, frame: Frame) -> None:
        """Send `frame` without waiting: a refusal comes on the stream, naming it."""
        await self._wait_ready()
        await self._send_frame(frame, None)

    async def send_message(self, frame: Frame) -> NewMessage:
        """Send the `message` frame and return its echo once roomd has ordered it.

        If the connection drops before the echo, the rejoin sends it again
        unless the room's replay holds it.
        """
        client_msg_id = frame["clientMsgId"]
        waiter = Waiter(None)
        self._pending.echoes[client_msg_id] = waiter
        try:
            await self._wait_ready()
            self.session.sent_message(frame)
            # Still unechoed if this fails: the rejoin after the reconnect sends it again.
            with contextlib.suppress(ConnectionLost):
                await self._send_frame(frame, waiter)
            result = await self._settle(waiter, frame)
        finally:
            self._pending.echoes.pop(client_msg_id, None)
            self.session.forget_message(frame["roomId"], client_msg_id)
        assert isinstance(result, NewMessage)
        return result

    async def _settle(self, waiter: Waiter, frame: Frame) -> Event:
        """Wait for `waiter`; honour `retryAfter` (rate limit, cluster unavailable) by resending."""
        while True:
            with anyio.fail_after(REQUEST_TIMEOUT):
                await waiter.done.wait()
            result = waiter.result
            if isinstance(result, ErrorEvent) and result.retryable:
                # Re-arm first: a rejoin may resend a message and its echo settle it meanwhile.
                waiter.rearm()
                generation = self._generation
                retry_after = result.retry_after or 1.0
                self._pacer.hold(anyio.current_time(), retry_after)
                await anyio.sleep(retry_after)
                if waiter.done.is_set():
                    continue
                await self._wait_ready()
                is_message = waiter in self._pending.echoes.values()
                # A message whose connection went meanwhile was resent by the rejoin.
                if not is_message or self._generation == generation:
                    await self._send_frame(frame, waiter)
                continue
            if isinstance(result, ErrorEvent):
                raise RequestError(result)
            if isinstance(result, BaseException):
                raise result
            assert result is not None
            return result

    async def _send_frame(
        self, frame: Frame, waiter: Waiter | None, *, public_key: bytes | None = None
    ) -> int:
        request_id = next(self._ids)
        if waiter is not None:
            waiter.public_key = public_key
            self._pending.expect_reply(request_id, waiter)
        websocket = self._websocket
        if websocket is None:
            raise ConnectionLost("not connected")
        try:
            await self._paced_send(websocket, {**frame, "id": request_id}, fired=waiter is None)
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection lost: {exc}") from None
        return request_id

    async def _paced_send(self, websocket: WebSocket, frame: Frame, *, fired: bool = False) -> None:
        # One sender at a time: concurrent callers must queue behind the bucket, not
        # each see it empty, and their frames go out in the order they were paced.
        async with self._pacing:
            # Asked again after each wait: a `retryAfter` may have held the pacer meanwhile.
            delay = self._pacer.delay(anyio.current_time())
            while delay > 0:
                await anyio.sleep(delay)
                delay = self._pacer.delay(anyio.current_time())
            self._pacer.take(anyio.current_time())
            if fired:
                # Remembered once paced, so the newest remembered are the newest sent, and
                # before sending: the reader may take roomd's answer before this resumes.
                self._pending.remember_fired(frame)
            await websocket.send(cbor2.dumps(frame))

    async def _wait_ready(self) -> None:
        if self._stopped is not None:
            raise self._stopped
        with anyio.fail_after(REQUEST_TIMEOUT):
            while not self._ready.is_set():
                await self._ready.wait()
        if self._stopped is not None:
            raise self._stopped

    # -- the connection loop -----------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Stay connected until cancelled: connect, authenticate, rejoin, read; repeat.

        Reports started once the first connection is authenticated and rejoined.
        When reconnecting cannot help (roomd closed with 1000, a fixed token
        expired or was refused), the stream gets `Stopped` and then ends.
        """
        failures = 0
        while True:
            try:
                await self._connect_once(failures, None if self._started else task_status)
            except AuthenticationFailed as exc:
                if not self._started:
                    raise
                await self._finish(str(exc))
                return
            except (OSError, ConnectionClosed, HandshakeRefused, TimeoutError) as exc:
                if not self._started:
                    raise
                code = exc.code if isinstance(exc, ConnectionClosed) else None
                was_connected = self._ready.is_set()
                self._drop(exc)
                if was_connected:
                    # Announced once per outage, not once per failed attempt.
                    failures = 0
                    await self._events_send.send(Disconnected(code, str(exc)))
                if code == CloseCode.NORMAL or (
                    code == CloseCode.TOKEN_EXPIRED and isinstance(self._token, str)
                ):
                    await self._finish(f"closed by roomd ({code})")
                    return
            failures += 1
            await anyio.sleep(self._backoff.delay(failures))

    def stop(self, exc: BaseException) -> None:
        """Fail everything awaiting roomd, and every later request, with `exc`."""
        self._stopped = exc
        self._drop(exc)
        self._pending.stopped(exc)
        self._ready.set()
        self._replayed.set()

    async def _finish(self, reason: str) -> None:
        self.stop(ConnectionLost(reason))
        await self._events_send.send(Stopped(reason))
        await self._events_send.aclose()

    def _drop(self, exc: BaseException) -> None:
        self._websocket = None
        if self._ready.is_set():
            self._ready = anyio.Event()
        self._pending.connection_lost(ConnectionLost(f"connection lost: {exc}"))

    async def _connect_once(
        self, failures: int, task_status: anyio.abc.TaskStatus[None] | None
    ) -> None:
        """Run one connection until it ends; always raises what ended it."""
        websocket = await WebSocket.open(self.url, ssl_context=self._ssl_context)
        self._generation += 1
        ended: list[Exception] = []
        try:
            await self._authenticate(websocket)
            async with anyio.create_task_group() as connection:
                self._websocket = websocket
                connection.start_soon(self._read, websocket, ended, connection.cancel_scope)
                try:
                    if self._started:
                        await self._events_send.send(Reconnected(failures))
                    await self._rejoin()
                except (ConnectionClosed, ConnectionLost, TimeoutError) as exc:
                    ended.append(exc)
                    connection.cancel_scope.cancel()
                else:
                    self._ready.set()
                    if task_status is not None:
                        self._started = True
                        task_status.started()
        finally:
            self._websocket = None
            with anyio.CancelScope(shield=True):
                await websocket.aclose()
        reason = ended[0] if ended else ConnectionClosed(None, "connection ended")
        raise (
            reason
            if not isinstance(reason, ConnectionLost)
            else ConnectionClosed(None, str(reason))
        )

    async def _authenticate(self, websocket: WebSocket) -> None:
        with anyio.fail_after(REQUEST_TIMEOUT):
            hello = _read_event(await websocket.receive())
            if not isinstance(hello, Hello):
                raise ConnectionClosed(None, f"expected hello, got {hello!r}")
            self.hello = hello
            limits = hello.limits
            self._pacer = Pacer.from_limits(float(limits["rate"]), float(limits["burst"]))
            token = self._token if isinstance(self._token, str) else await self._token()
            await self._paced_send(websocket, {"type": "auth", "token": token})
            reply = _read_event(await websocket.receive())
        if isinstance(reply, ErrorEvent):
            # `run` stops the client (or `connect` raises this, on the first connection).
            raise AuthenticationFailed(f"roomd refused the token: {reply.message}")
        if not isinstance(reply, AuthOk):
            raise ConnectionClosed(None, f"expected authOk, got {reply!r}")
        self.session.aid = reply.aid

    async def _rejoin(self) -> None:
        """Rejoin every room with `since`, and wait until each replay is complete."""
        waiters = []
        self._replayed = anyio.Event()
        for frame in self.session.rejoin_frames():
            waiter = Waiter(None)
            request_id = await self._send_frame(frame, waiter)
            waiters.append((frame["roomId"], request_id, waiter))
        with anyio.fail_after(REQUEST_TIMEOUT):
            for room_id, request_id, waiter in waiters:
                await waiter.done.wait()
                self._pending.reply_waiter(request_id)
                if isinstance(waiter.result, ErrorEvent):
                    self.session.rejoin_failed(room_id)
                    await self._events_send.send(RoomLost(room_id, waiter.result))
            if not self.session.replaying():
                self._replayed.set()
            await self._replayed.wait()

    async def _read(
        self, websocket: WebSocket, ended: list[Exception], scope: anyio.CancelScope
    ) -> None:
        """Dispatch every frame of `websocket` until it closes or falls silent."""
        hello = self.hello
        liveness = 2 * (hello.heartbeat_interval if hello else 25.0) + 5.0
        try:
            while True:
                with anyio.fail_after(liveness):
                    data = await websocket.receive()
                await self._dispatch(data)
        except (ConnectionClosed, TimeoutError) as exc:
            ended.append(exc)
            scope.cancel()

    async def _dispatch(self, data: bytes | str) -> None:
        try:
            frame: Any = cbor2.loads(_as_bytes(data))
            event = parse_event(frame)
        except (MalformedEvent, cbor2.CBORDecodeError, ValueError) as exc:
            logger.warning("ignoring a frame roomd sent that this SDK cannot read: %s", exc)
            return
        request_id = frame.get("id") if isinstance(frame, dict) else None
        if not isinstance(request_id, int):
            request_id = None
        if isinstance(event, ErrorEvent):
            fired = self._pending.fired_frame(request_id)
            if fired is not None:
                event = self._fired_refused(event, fired)
        waiter = self._pending.reply_waiter(request_id)
        if waiter is not None and isinstance(event, ErrorEvent):
            waiter.resolve(event)
            return
        public_key = waiter.public_key if waiter is not None else None
        received = self.session.receive(event, public_key)
        for passed in received.events:
            await self._events_send.send(passed)
            self._pending.passed_on(passed, self.session.aid)
        if waiter is not None:
            waiter.resolve(event)
        for room_id in received.ready:
            for unechoed in self.session.unechoed(room_id):
                echo = self._pending.echoes.get(unechoed["clientMsgId"])
                if echo is not None and self._websocket is not None:
                    # A connection that breaks meanwhile is the reader's to notice;
                    # the message stays unechoed and the next rejoin sends it.
                    with contextlib.suppress(ConnectionLost):
                        await self._send_frame(unechoed, echo)
        if received.ready and not self.session.replaying():
            self._replayed.set()

    def _fired_refused(self, error: ErrorEvent, frame: Frame) -> ErrorEvent:
        """Return `error` naming the frame it refused; a `retryAfter` holds every send."""
        if error.retryable:
            self._pacer.hold(anyio.current_time(), error.retry_after or 1.0)
        return attrs.evolve(error, request=frame)


def _read_event(data: bytes | str) -> Event:
    """Return the event of a frame read during the handshake; an unreadable one ends it."""
    try:
        return parse_event(cbor2.loads(_as_bytes(data)))
    except (MalformedEvent, cbor2.CBORDecodeError, ValueError) as exc:
        raise ConnectionClosed(None, f"roomd sent a frame this SDK cannot read: {exc}") from None


def _as_bytes(data: bytes | str) -> bytes:
    if isinstance(data, str):
        raise ValueError("a text frame on a CBOR connection")
    return data
