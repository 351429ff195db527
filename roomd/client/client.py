"""The SDK's client of roomd: requests, replies by `id`, and the one stream of events.

`connect` opens a `Client` inside `async with` and keeps it connected: when the
connection drops it reconnects with backoff, authenticates again, rejoins every
room with `since` and resends the messages roomd never ordered, so the event
stream shows every message once and in order, or a `Gap` when roomd could not
replay what was missed (`roomd.client.link` does this). It runs on asyncio and
on trio alike (anyio).

Resource handling: the client owns one task group (the connection loop and its
reader); leaving `async with` closes the connection with 1000 and cancels them.
"""

from __future__ import annotations

import secrets
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
import attrs

from roomd.client.errors import (
    AuthenticationFailed,
    ConnectionLost,
    RequestError,
    unwrapped_errors,
)
from roomd.client.events import (
    ErrorEvent,
    Event,
    Hello,
    History,
    HostUpdated,
    Joined,
    LeftRoom,
    NewMessage,
    RoomDeleted,
    RoomKeyUpdated,
    Unbanned,
    UserLeft,
)
from roomd.client.link import Link, TokenSource
from roomd.client.session import Frame
from roomd.client.waiter import Backoff, Match

_T = TypeVar("_T")

EVENT_BUFFER = 10_000


@attrs.define(eq=False)
class Client:
    """A connected roomd client. Make one with `connect`; never construct it directly."""

    _link: Link

    @property
    def url(self) -> str:
        """The WebSocket URL this client connects (and reconnects) to."""
        return self._link.url

    @property
    def hello(self) -> Hello | None:
        """roomd's `hello` of the current (or last) connection: its limits and heartbeat."""
        return self._link.hello

    @property
    def aid(self) -> str:
        """The AID this client authenticated as."""
        aid = self._link.session.aid
        assert aid is not None
        return aid

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
        return self._link.events

    async def next_event(self, match: Match | None = None) -> Event:
        """Return the next event of the stream for which `match` is true (others are skipped).

        Bound it with `anyio.fail_after`.
        """
        async for event in self._link.events:
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
        frame: Frame = {
            "type": "message",
            "roomId": room_id,
            "ciphertext": ciphertext,
            "clientMsgId": client_msg_id or secrets.token_urlsafe(12),
        }
        if iv is not None:
            frame["iv"] = iv
        if key_epoch is not None:
            frame["keyEpoch"] = key_epoch
        return await self._link.send_message(frame)

    async def typing(self, room_id: str, is_typing: bool) -> None:
        """Tell the other members this client started (True) or stopped typing."""
        await self._link.fire({"type": "typing", "roomId": room_id, "isTyping": is_typing})

    async def react(self, room_id: str, message_id: str, emoji: str, remove: bool = False) -> None:
        """Send a plain PROTOCOL.md reaction (roomd sees the emoji; E2EE clients encrypt)."""
        await self._link.fire(
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
        await self._link.fire({"type": "signal", "roomId": room_id, "signals": batch})

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

        result = await self._link.request(frame, confirmed)
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
        result = await self._link.request(
            {"type": "transferHost", "roomId": room_id, "to": to},
            lambda e: isinstance(e, HostUpdated) and e.room_id == room_id and e.host == to,
        )
        assert isinstance(result, HostUpdated)
        return result

    async def kick(self, room_id: str, aid: str, *, ban: bool = False) -> UserLeft:
        """Kick `aid` (host only), banning it when `ban`; return the room's `userLeft`."""
        result = await self._link.request(
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
        result = await self._link.request(
            {"type": "deleteChatroom", "roomId": room_id},
            lambda e: isinstance(e, RoomDeleted) and e.room_id == room_id,
        )
        assert isinstance(result, RoomDeleted)
        return result

    async def _expect(self, kind: type[_T], frame: Frame, *, public_key: bytes | None = None) -> _T:
        result = await self._link.request(frame, None, public_key=public_key)
        if not isinstance(result, kind):
            raise RequestError(ErrorEvent("internal", f"unexpected {result!r}", None, None, None))
        return result


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
    link = Link(url, token, ssl_context, backoff or Backoff(), events_send, events_recv)
    with unwrapped_errors():
        async with anyio.create_task_group() as tasks, events_send, events_recv:
            await tasks.start(link.run)
            try:
                yield Client(link)
            finally:
                link.stop(ConnectionLost("the client is closed"))
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
