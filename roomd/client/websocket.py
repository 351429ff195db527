"""One client WebSocket connection: anyio streams below, wsproto frames above.

It opens the TCP (or TLS) stream, performs the upgrade offering roomd's
subprotocols, answers pings, and hands whole messages to one reader. Sends may
come from several tasks; a lock keeps their frames whole.
"""

from __future__ import annotations

import contextlib
import ssl
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

CBOR_SUBPROTOCOL = "roomd.v1.cbor"
RECEIVE_SIZE = 65536
CLOSE_TIMEOUT = 2.0


class ConnectionClosed(Exception):
    """The WebSocket is closed (`code` None: the transport ended without a close frame)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}")
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status (`status`), not 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"websocket upgrade refused with HTTP {status}")
        self.status = status


@attrs.define(eq=False)
class WebSocket:
    """An open client WebSocket; `receive` from one task, `send` from any."""

    _stream: anyio.abc.ByteStream
    _protocol: WSConnection
    subprotocol: str | None
    _send_lock: anyio.Lock = attrs.field(factory=anyio.Lock)
    _pending: list[bytes | str] = attrs.field(factory=list)
    _parts: list[bytes | str] = attrs.field(factory=list)
    _closed: ConnectionClosed | None = None

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        subprotocols: tuple[str, ...] = (CBOR_SUBPROTOCOL,),
        ssl_context: ssl.SSLContext | None = None,
    ) -> WebSocket:
        """Connect to `url` (`ws://` or `wss://`) and complete the upgrade.

        Raises `OSError` when the server cannot be reached, `HandshakeRefused`
        when it answers with an HTTP status (429 at the per-IP limit, 503 while
        draining), `ConnectionClosed` when it hangs up mid-handshake.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or parts.hostname is None:
            raise ValueError(f"not a websocket url: {url!r}")
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        stream: anyio.abc.ByteStream
        if tls:
            stream = await anyio.connect_tcp(
                parts.hostname,
                port,
                ssl_context=ssl_context or ssl.create_default_context(),
                tls_standard_compatible=False,
            )
        else:
            stream = await anyio.connect_tcp(parts.hostname, port)
        try:
            protocol = WSConnection(ConnectionType.CLIENT)
            host = parts.netloc.rpartition("@")[2]
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            request = Request(host=host, target=target, subprotocols=list(subprotocols))
            await stream.send(protocol.send(request))
            websocket = cls(stream, protocol, None)
            await websocket._handshake()
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise
        return websocket

    async def _handshake(self) -> None:
        while True:
            events = await self._events()
            for index, event in enumerate(events):
                if isinstance(event, AcceptConnection):
                    self.subprotocol = event.subprotocol
                    # The server's first frames may share the 101's TCP segment.
                    for early in events[index + 1 :]:
                        await self._handle(early)
                    return
                if isinstance(event, RejectConnection):
                    raise HandshakeRefused(event.status_code)

    async def _events(self) -> list[object]:
        try:
            data = await self._stream.receive(RECEIVE_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            raise ConnectionClosed(None, "transport ended") from None
        self._protocol.receive_data(data)
        return list(self._protocol.events())

    async def send(self, message: bytes | str) -> None:
        """Send one message (bytes: a binary frame; str: a text frame).

        Raises `ConnectionClosed` when the connection is gone.
        """
        if self._closed is not None:
            raise self._closed
        data = self._protocol.send(
            BytesMessage(message) if isinstance(message, bytes) else TextMessage(message)
        )
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                raise ConnectionClosed(None, "transport ended") from None

    async def receive(self) -> bytes | str:
        """Return the next whole message; pings are answered on the way.

        Raises `ConnectionClosed` with the server's close code when it closes.
        """
        while not self._pending:
            if self._closed is not None:
                raise self._closed
            for event in await self._events():
                await self._handle(event)
        return self._pending.pop(0)

    async def _handle(self, event: object) -> None:
        if isinstance(event, Ping):
            await self._write(self._protocol.send(event.response()))
        elif isinstance(event, TextMessage | BytesMessage):
            self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
            if event.message_finished:
                joined: bytes | str = (
                    "".join(p for p in self._parts if isinstance(p, str))
                    if isinstance(event, TextMessage)
                    else b"".join(p for p in self._parts if isinstance(p, bytes))
                )
                self._parts.clear()
                self._pending.append(joined)
        elif isinstance(event, CloseConnection):
            self._closed = ConnectionClosed(event.code, event.reason or "")
            with contextlib.suppress(ConnectionClosed):
                await self._write(self._protocol.send(event.response()))
            await anyio.aclose_forcefully(self._stream)

    async def aclose(self, code: int = 1000) -> None:
        """Close the connection with `code`, waiting (bounded) for the server's answer."""
        if self._closed is None:
            self._closed = ConnectionClosed(code, "closed by the client")
            with anyio.move_on_after(CLOSE_TIMEOUT):
                try:
                    await self._write(self._protocol.send(CloseConnection(code)))
                    while True:
                        await self._events()
                except ConnectionClosed:
                    pass
        await anyio.aclose_forcefully(self._stream)
