"""The SDK's connection to roomd: requests, the event stream, reconnection with recovery.

`connect` opens a `Client` inside `async with` and keeps it connected: when the
connection drops it reconnects with backoff, authenticates again, rejoins every
room with `since` and resends the messages roomd never ordered, so the event
stream shows every message once and in order, or a `Gap` when roomd could not
replay what was missed. It runs on asyncio and on trio alike (anyio).

Resource handling: the client owns one task group (the connection loop and its
reader); leaving `async with` closes the connection with 1000 and cancels them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio
import anyio.abc
import attrs
import cbor2

from roomd.client.errors import (
    AuthenticationFailed,
    CloseCode,
    ConnectionLost,
    RequestError,
    unwrapped_errors,
)
from roomd.client.events import (
    AuthOk,
    Disconnected,
    ErrorEvent,
    Event,
    Hello,
    History,
    HostUpdated,
    Joined,
    LeftRoom,
    MalformedEvent,
    NewMessage,
    Reconnected,
    RoomDeleted,
    RoomKeyUpdated,
    RoomLost,
    Stopped,
    Unbanned,
    UserLeft,
    parse_event,
)
from roomd.client.pacer import Pacer
from roomd.client.session import ClientSession, Frame
from roomd.client.waiter import Backoff, Match, Waiter
from roomd.client.websocket import ConnectionClosed, HandshakeRefused, WebSocket

logger = logging.getLogger("roomd.client")

_T = TypeVar("_T")
TokenSource = str | Callable[[], Awaitable[str]]

REQUEST_TIMEOUT = 30.0
EVENT_BUFFER = 10_000
# Frames sent without waiting for a reply, remembered by id so that an error answering
# one can name it; roomd answers within a round trip, so the newest few suffice.
FIRED_REMEMBERED = 64


@attrs.define(eq=False)
class Client:
    """A connected roomd client. Make one with `connect`; never construct it directly."""

    url: str
    _token: TokenSource
    _ssl_context: ssl.SSLContext | None
    _backoff: Backoff
    _events_send: anyio.abc.ObjectSendStream[Event]
    _events_recv: anyio.abc.ObjectReceiveStream[Event]
    session: ClientSession = attrs.field(factory=ClientSession)
    hello: Hello | None = None
    _websocket: WebSocket | None = None
    _ready: anyio.Event = attrs.field(factory=anyio.Event)
    _stopped: BaseException | None = None
    _ids: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _by_id: dict[int, Waiter] = attrs.field(factory=dict)
    _matchers: list[Waiter] = attrs.field(factory=list)
    _fired: dict[int, Frame] = attrs.field(factory=dict)
    _echo_waiters: dict[str, Waiter] = attrs.field(factory=dict)
    _pacer: Pacer = attrs.field(factory=lambda: Pacer.from_limits(10.0, 30.0))
    _pacing: anyio.Lock = attrs.field(factory=anyio.Lock)
    _replayed: anyio.Event = attrs.field(factory=anyio.Event)
    _started: bool = False
    # Counts connections: a retry after `retryAfter` that spans a reconnect is the rejoin's.
    _generation: int = 0

    @property
    def aid(self) -> str:
        """The AID this client authenticated as."""
        assert self.session.aid is not None
        return self.session.aid

    # -- the event stream ------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        return self.events()

    def events(self) -> AsyncIterator[Event]:
        """Return the stream of every event in the order roomd sent it, plus the SDK's own.

        One stream per client: every reader takes from it. Read it steadily: when
        its buffer fills, reading from roomd stops, and roomd closes a
        connection that falls too far behind (the client then reconnects and
        recovers).
        """
        return self._events_recv

    async def next_event(self, match: Match | None = None) -> Event:
        """Return the next event of the stream for which `match` is true (others are skipped).

        Bound it with `anyio.fail_after`.
        """
        async for event in self._events_recv:
            if match is None or match(event):
                return event
        raise ConnectionLost("the client is closed")

    # -- requests --------------------------------------------------------------------

    async def create_room(
        self, *, public_key: bytes | None = None, encrypted_room_key: bytes | None = None
    ) -> Joined:
        """Create a room and join it as its host; return its `joinSuccess`."""
        frame: Frame = {"type": "createChatroom"}
        if public_key is not None:
            frame["publicKey"] = public_key
        if encrypted_room_key is not None:
            frame["encryptedRoomKey"] = encrypted_room_key
        return await self._expect(Joined, frame, public_key=public_key)

    async def join(self, room_id: str, *, public_key: bytes | None = None) -> Joined:
        """Join `room_id` (rejoined with `since` after every reconnect); return `joinSuccess`."""
        frame: Frame = {"type": "joinChatroom", "roomId": room_id}
        if public_key is not None:
            frame["publicKey"] = public_key
        return await self._expect(Joined, frame, public_key=public_key)

    async def leave(self, room_id: str) -> LeftRoom:
        """Leave `room_id`; it is no longer rejoined."""
        return await self._expect(LeftRoom, {"type": "leaveChatroom", "roomId": room_id})

    async def send_message(
        self,
        room_id: str,
        ciphertext: bytes,
        *,
        iv: bytes | None = None,
        key_epoch: int | None = None,
        client_msg_id: str | None = None,
    ) -> NewMessage:
        """Send a message and return its `newMessage` once roomd has ordered it.

        The message survives reconnects: if the connection drops before roomd
        echoes it and the room's replay does not hold it, it is sent again.
        Raises `RequestError` when roomd refuses it (`conflict` on a stale
        `key_epoch`, `notMember`, ...).
        """
        client_msg_id = client_msg_id or secrets.token_urlsafe(12)
        frame: Frame = {
            "type": "message",
            "roomId": room_id,
            "ciphertext": ciphertext,
            "clientMsgId": client_msg_id,
        }
        if iv is not None:
            frame["iv"] = iv
        if key_epoch is not None:
            frame["keyEpoch"] = key_epoch
        waiter = Waiter(None)
        self._echo_waiters[client_msg_id] = waiter
        try:
            await self._wait_ready()
            self.session.sent_message(frame)
            # Still unechoed if this fails: the rejoin after the reconnect sends it again.
            with contextlib.suppress(ConnectionLost):
                await self._send_frame(frame, waiter)
            result = await self._settle(waiter, frame)
        finally:
            self._echo_waiters.pop(client_msg_id, None)
            self.session.forget_message(room_id, client_msg_id)
        assert isinstance(result, NewMessage)
        return result

    async def typing(self, room_id: str, is_typing: bool) -> None:
        """Tell the other members this client started (True) or stopped typing."""
        await self._fire({"type": "typing", "roomId": room_id, "isTyping": is_typing})

    async def react(self, room_id: str, message_id: str, emoji: str, remove: bool = False) -> None:
        """Send a plain PROTOCOL.md reaction (roomd sees the emoji; E2EE clients encrypt)."""
        await self._fire(
            {
                "type": "reaction",
                "roomId": room_id,
                "messageId": message_id,
                "emoji": emoji,
                "remove": remove,
            }
        )

    async def signal(self, room_id: str, signals: Sequence[tuple[str, bytes]]) -> None:
        """Send each `(to, payload)` in one frame (`signal.signals`, costing the bucket 1)."""
        batch = [{"to": to, "payload": payload} for to, payload in signals]
        await self._fire({"type": "signal", "roomId": room_id, "signals": batch})

    async def update_room_key(
        self, room_id: str, encrypted_room_key: bytes, key_epoch: int
    ) -> RoomKeyUpdated:
        """Set the room key of `key_epoch` (host only); return the room's `roomKeyUpdated`.

        Raises `RequestError` with code `conflict` when `key_epoch` is not the
        room's next epoch; `error.key_epoch` is the room's current one.
        """
        frame: Frame = {
            "type": "updateRoomKey",
            "roomId": room_id,
            "encryptedRoomKey": encrypted_room_key,
            "keyEpoch": key_epoch,
        }
        me = self.aid

        def confirmed(event: Event) -> bool:
            return (
                isinstance(event, RoomKeyUpdated)
                and event.room_id == room_id
                and event.key_epoch == key_epoch
                and event.by == me
            )

        result = await self._request(frame, confirmed)
        assert isinstance(result, RoomKeyUpdated)
        return result

    async def get_history(
        self, room_id: str, *, before: int | None = None, limit: int | None = None
    ) -> History:
        """Return a page of the room's history: the newest `limit` messages before `before`."""
        frame: Frame = {"type": "getHistory", "roomId": room_id}
        if before is not None:
            frame["before"] = before
        if limit is not None:
            frame["limit"] = limit
        return await self._expect(History, frame)

    async def transfer_host(self, room_id: str, to: str) -> HostUpdated:
        """Make `to` the host (host only); return the room's `hostUpdated`."""
        result = await self._request(
            {"type": "transferHost", "roomId": room_id, "to": to},
            lambda e: isinstance(e, HostUpdated) and e.room_id == room_id and e.host == to,
        )
        assert isinstance(result, HostUpdated)
        return result

    async def kick(self, room_id: str, aid: str, *, ban: bool = False) -> UserLeft:
        """Kick `aid` (host only), banning it when `ban`; return the room's `userLeft`."""
        result = await self._request(
            {"type": "kick", "roomId": room_id, "aid": aid, "ban": ban},
            lambda e: isinstance(e, UserLeft) and e.room_id == room_id and e.aid == aid,
        )
        assert isinstance(result, UserLeft)
        return result

    async def unban(self, room_id: str, aid: str) -> Unbanned:
        """Lift the ban of `aid` (host only)."""
        return await self._expect(Unbanned, {"type": "unban", "roomId": room_id, "aid": aid})

    async def delete_room(self, room_id: str) -> RoomDeleted:
        """Delete the room (host only); return its `roomDeleted`."""
        result = await self._request(
            {"type": "deleteChatroom", "roomId": room_id},
            lambda e: isinstance(e, RoomDeleted) and e.room_id == room_id,
        )
        assert isinstance(result, RoomDeleted)
        return result

    async def _expect(self, kind: type[_T], frame: Frame, *, public_key: bytes | None = None) -> _T:
        result = await self._request(frame, None, public_key=public_key)
        if not isinstance(result, kind):
            raise RequestError(ErrorEvent("internal", f"unexpected {result!r}", None, None, None))
        return result

    async def _fire(self, frame: Frame) -> None:
        await self._wait_ready()
        await self._send_frame(frame, None, fired=True)

    async def _request(
        self, frame: Frame, match: Match | None, *, public_key: bytes | None = None
    ) -> Event:
        """Send `frame` and return its direct reply, or the first event `match` accepts."""
        await self._wait_ready()
        waiter = Waiter(match)
        if match is not None:
            self._matchers.append(waiter)
        try:
            request_id = await self._send_frame(frame, waiter, public_key=public_key)
            try:
                result = await self._settle(waiter, frame)
            finally:
                self._by_id.pop(request_id, None)
        finally:
            if waiter in self._matchers:
                self._matchers.remove(waiter)
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
                is_message = waiter in self._echo_waiters.values()
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
        self,
        frame: Frame,
        waiter: Waiter | None,
        *,
        public_key: bytes | None = None,
        fired: bool = False,
    ) -> int:
        request_id = next(self._ids)
        if waiter is not None:
            waiter.public_key = public_key
            self._by_id[request_id] = waiter
        if fired:
            # Before sending: the reader may take roomd's answer before this task resumes.
            self._fired[request_id] = frame
            if len(self._fired) > FIRED_REMEMBERED:
                del self._fired[next(iter(self._fired))]
        websocket = self._websocket
        if websocket is None:
            raise ConnectionLost("not connected")
        try:
            await self._paced_send(websocket, {**frame, "id": request_id})
        except ConnectionClosed as exc:
            raise ConnectionLost(f"connection lost: {exc}") from None
        return request_id

    async def _paced_send(self, websocket: WebSocket, frame: Frame) -> None:
        # One sender at a time: concurrent callers must queue behind the bucket, not
        # each see it empty, and their frames go out in the order they were paced.
        async with self._pacing:
            delay = self._pacer.delay(anyio.current_time())
            if delay > 0:
                await anyio.sleep(delay)
            self._pacer.take(anyio.current_time())
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

    async def _run(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        """Stay connected until cancelled: connect, authenticate, rejoin, read; repeat.

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

    async def _finish(self, reason: str) -> None:
        self._stop(ConnectionLost(reason))
        await self._events_send.send(Stopped(reason))
        await self._events_send.aclose()

    def _drop(self, exc: BaseException) -> None:
        self._websocket = None
        if self._ready.is_set():
            self._ready = anyio.Event()
        lost = ConnectionLost(f"connection lost: {exc}")
        echoes = set(self._echo_waiters.values())
        for waiter in self._by_id.values():
            # A message is not lost with its connection: the rejoin settles it.
            if waiter not in echoes:
                waiter.resolve(lost)
        self._by_id.clear()
        self._fired.clear()

    def _stop(self, exc: BaseException) -> None:
        self._stopped = exc
        self._drop(exc)
        for waiter in self._echo_waiters.values():
            waiter.resolve(exc)
        self._ready.set()
        self._replayed.set()

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
            # `_run` stops the client (or `connect` raises this, on the first connection).
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
                self._by_id.pop(request_id, None)
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
        if isinstance(event, ErrorEvent) and request_id in self._fired:
            event = self._fired_refused(event, self._fired.pop(request_id))
        waiter = self._by_id.pop(request_id, None) if request_id is not None else None
        if waiter is not None and isinstance(event, ErrorEvent):
            waiter.resolve(event)
            return
        public_key = waiter.public_key if waiter is not None else None
        received = self.session.receive(event, public_key)
        for passed in received.events:
            await self._events_send.send(passed)
            self._resolve(passed)
        if waiter is not None:
            waiter.resolve(event)
        for room_id in received.ready:
            for unechoed in self.session.unechoed(room_id):
                echo = self._echo_waiters.get(unechoed["clientMsgId"])
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

    def _resolve(self, event: Event) -> None:
        if isinstance(event, NewMessage) and event.client_msg_id is not None:
            echo = self._echo_waiters.get(event.client_msg_id)
            if echo is not None and event.sender == self.session.aid:
                echo.resolve(event)
        for waiter in list(self._matchers):
            assert waiter.match is not None
            if waiter.match(event):
                waiter.resolve(event)


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


@asynccontextmanager
async def connect(
    url: str,
    *,
    token: TokenSource,
    ssl_context: ssl.SSLContext | None = None,
    backoff: Backoff | None = None,
    event_buffer: int = EVENT_BUFFER,
) -> AsyncIterator[Client]:
    """Connect to roomd at `url`, authenticate with `token`, and keep the client connected.

    `token` is a token string, or an async callable returning a fresh one for
    each (re)connection. Returns once authenticated; raises `OSError` or
    `HandshakeRefused` when the first connection fails, `AuthenticationFailed`
    when roomd refuses the token.

    Resource handling: on leaving the block the connection is closed (1000) and
    the client's tasks end.
    """
    events_send, events_recv = anyio.create_memory_object_stream[Event](event_buffer)
    client = Client(url, token, ssl_context, backoff or Backoff(), events_send, events_recv)
    with unwrapped_errors():
        async with anyio.create_task_group() as tasks, events_send, events_recv:
            await tasks.start(client._run)
            try:
                yield client
            finally:
                client._stop(ConnectionLost("the client is closed"))
                tasks.cancel_scope.cancel()


__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "Client",
    "ConnectionLost",
    "RequestError",
    "TokenSource",
    "connect",
    "unwrapped_errors",
]
