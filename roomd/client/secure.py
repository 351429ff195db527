"""End-to-end-encrypted rooms on a `Client`: plaintext in, plaintext out, blobs on the wire.

`connect_secure` wraps `connect`: one task (the pump) feeds every event of the
client to the `SecureRoom` of its room, passes on what the room shows and
carries out what it sets off (knocks, key deliveries, rotations). roomd only
ever receives E2EE.md's blobs. The device key lives as long as the
`SecureClient`, across reconnects, so the public key the rooms list for this
AID stays its own.

Resource handling: leaving `async with` stops the pump and closes the client.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from roomd.client import e2ee
from roomd.client.client import (
    Backoff,
    Client,
    ConnectionLost,
    RequestError,
    TokenSource,
    connect,
    unwrapped_errors,
)
from roomd.client.events import ErrorEvent, Event, Joined, LeftRoom, RoomDeleted, RoomLost, UserLeft
from roomd.client.invite import Invite, invite_link, parse_invite
from roomd.client.plaintext import Reaction, Text, encode_body
from roomd.client.secure_room import (
    Action,
    Message,
    ReactionMessage,
    SecureEvent,
    SecureRoom,
    Signals,
    Unreadable,
    UpdateKey,
)

# How long `send` waits for the room key of the room's epoch before giving up.
KEY_WAIT = 30.0
# How often each room is asked whether its missing key calls for a knock (`knock_again`).
KNOCK_CHECK = 1.0
EVENT_BUFFER = 10_000


class NoRoomKey(Exception):
    """No key of the room's current epoch arrived in time: nothing was sent."""


@attrs.define(eq=False)
class SecureClient:
    """A `Client` whose rooms are end-to-end encrypted. Make one with `connect_secure`."""

    client: Client
    # Keys and invite secrets stay out of the repr: a traceback that shows locals
    # must not print them (each SecureRoom's repr leaves its own out).
    device: X25519PrivateKey = attrs.field(repr=False)
    _events_send: anyio.abc.ObjectSendStream[SecureEvent] = attrs.field(repr=False)
    _events_recv: anyio.abc.ObjectReceiveStream[SecureEvent] = attrs.field(repr=False)
    rooms: dict[str, SecureRoom] = attrs.field(factory=dict)
    _invited: dict[str, list[bytes]] = attrs.field(factory=dict, repr=False)
    _keys_changed: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def aid(self) -> str:
        """The AID this client authenticated as."""
        return self.client.aid

    def events(self) -> AsyncIterator[SecureEvent]:
        """Return the stream of decrypted messages, key rotations and presence, in room order."""
        return self._events_recv

    async def next_event(self, kind: type | None = None) -> SecureEvent:
        """Return the next event (of `kind`, skipping others); bound it with `anyio.fail_after`."""
        async for event in self._events_recv:
            if kind is None or isinstance(event, kind):
                return event
        raise ConnectionLost("the client is closed")

    async def create_room(self) -> str:
        """Create an encrypted room, wait for its first key (epoch 1), return its id."""
        joined = await self.client.create_room(public_key=e2ee.public_bytes(self.device))
        await self.wait_key(joined.room_id)
        return joined.room_id

    def invite_link(self, room_id: str, base_url: str | None = None) -> str:
        """Return an invite link to `room_id` with its newest invite secret.

        `base_url` defaults to the WebSocket URL this client is connected to
        (the form `roomd chat` reads); pass the demo page's URL for browsers.
        """
        secret = self._room(room_id).invite_secret
        if secret is None:
            raise KeyError(f"this client knows no invite secret of room '{room_id}'")
        return invite_link(base_url or self.client.url, room_id, secret)

    async def join(self, invite: str | Invite) -> str:
        """Join the room an invite link names, knock to its host, return the room id.

        The room key arrives from the link's sealed key or from the host's
        delivery after the knock; `send` waits for it.
        """
        if isinstance(invite, str):
            invite = parse_invite(invite)
        self._invited.setdefault(invite.room_id, []).append(invite.secret)
        await self.client.join(invite.room_id, public_key=e2ee.public_bytes(self.device))
        return invite.room_id

    async def join_uninvited(self, room_id: str) -> str:
        """Join `room_id` holding no invite secret: roomd admits it, the host gives it no key."""
        await self.client.join(room_id, public_key=e2ee.public_bytes(self.device))
        return room_id

    async def send(self, room_id: str, text: str) -> Message:
        """Encrypt `text` with the room's current key, send it, return it as roomd ordered it.

        Waits (up to `KEY_WAIT`) while this client holds no key of the room's
        epoch; a message refused with `conflict` is encrypted again for the
        room's epoch and resent. Raises `NoRoomKey` when no key came,
        `RequestError` (`notMember`) for a room this client is not in, and
        `TimeoutError` when the client stays disconnected for 30 s.
        """
        sent = await self._send_body(room_id, Text(text, _now_ms()))
        assert isinstance(sent, Message), sent
        return sent

    async def react(
        self, room_id: str, message_id: str, emoji: str, *, remove: bool = False
    ) -> ReactionMessage:
        """Send a reaction to `message_id` inside an encrypted message (roomd never sees it)."""
        sent = await self._send_body(room_id, Reaction(message_id, emoji, remove, _now_ms()))
        assert isinstance(sent, ReactionMessage), sent
        return sent

    async def typing(self, room_id: str, is_typing: bool) -> None:
        """Tell the other members this client started or stopped typing (not encrypted)."""
        await self.client.typing(room_id, is_typing)

    async def kick(self, room_id: str, aid: str, *, ban: bool = True) -> UserLeft:
        """Kick `aid` (banned unless `ban` is False); the room key rotates right after."""
        return await self.client.kick(room_id, aid, ban=ban)

    async def leave(self, room_id: str) -> LeftRoom:
        """Leave `room_id`; its keys are forgotten."""
        return await self.client.leave(room_id)

    async def history(
        self, room_id: str, *, before: int | None = None, limit: int | None = None
    ) -> tuple[list[Message | ReactionMessage | Unreadable], bool]:
        """Return a decrypted page of history, oldest first, and whether older messages exist."""
        room = self._room(room_id)
        page = await self.client.get_history(room_id, before=before, limit=limit)
        return [room.read(message) for message in page.messages], page.more

    async def _send_body(self, room_id: str, body: Text | Reaction) -> SecureEvent:
        plaintext = encode_body(body)
        room = self._room(room_id)
        while True:
            epoch, key = await self.wait_key(room_id)
            iv, ciphertext = e2ee.encrypt_message(key, room_id, self.aid, epoch, plaintext)
            try:
                echo = await self.client.send_message(room_id, ciphertext, iv=iv, key_epoch=epoch)
            except RequestError as refused:
                if refused.error.code != "conflict" or refused.error.key_epoch is None:
                    raise
                room.message_refused(refused.error.key_epoch)
                continue
            return room.read(echo)

    def _room(self, room_id: str) -> SecureRoom:
        room = self.rooms.get(room_id)
        if room is None:
            error = ErrorEvent("notMember", f"not in room '{room_id}'", room_id, None, None)
            raise RequestError(error)
        return room

    async def wait_key(self, room_id: str) -> tuple[int, bytes]:
        """Return the room's current epoch and its key once this client holds it.

        Raises `NoRoomKey` when it does not arrive within `KEY_WAIT` seconds.
        """
        with anyio.move_on_after(KEY_WAIT):
            while True:
                room = self.rooms.get(room_id)
                current = None if room is None else room.current_key()
                if current is not None:
                    return current
                await self._keys_changed.wait()
        raise NoRoomKey(f"no key of room '{room_id}' for its current epoch")

    async def _knock_again(self) -> None:
        """Ask each room, every `KNOCK_CHECK` s, whether its missing key calls for a knock."""
        while True:
            await anyio.sleep(KNOCK_CHECK)
            for room_id, room in list(self.rooms.items()):
                outcome = room.knock_again(anyio.current_time())
                # Left meanwhile (an earlier room's knock waited for the pacer): no knock.
                if outcome.actions and self.rooms.get(room_id) is room:
                    await self._perform(room, outcome.actions)

    async def _pump(self) -> None:
        """Feed every client event to its room; pass on what shows, do what it sets off.

        The stream ends when the client's does (after `Stopped`).
        """
        async with self._events_send:
            await self._pump_events()

    async def _pump_events(self) -> None:
        async for event in self.client.events():
            room = self._room_for(event)
            if room is None:
                await self._events_send.send(event)
                continue
            outcome = room.receive(event)
            for shown in outcome.events:
                await self._events_send.send(shown)
            await self._perform(room, outcome.actions)
            if isinstance(event, LeftRoom | RoomDeleted | RoomLost):
                self.rooms.pop(room.room_id, None)
            self._keys_changed.set()
            self._keys_changed = anyio.Event()

    def _room_for(self, event: Event) -> SecureRoom | None:
        room_id = getattr(event, "room_id", None)
        if room_id is None and isinstance(event, ErrorEvent) and event.request is not None:
            room_id = event.request.get("roomId")
        if room_id is None:
            return None
        room = self.rooms.get(room_id)
        if isinstance(event, Joined):
            secrets = self._invited.pop(room_id, [])
            if room is None:
                room = SecureRoom(room_id, self.aid, self.device, secrets)
                self.rooms[room_id] = room
            else:
                # Joined again by a new invite link: its secret knocks from now on too.
                room.secrets.extend(s for s in secrets if s not in room.secrets)
        return room

    async def _perform(self, room: SecureRoom, actions: tuple[Action, ...]) -> None:
        for action in actions:
            try:
                match action:
                    case Signals(signals=signals):
                        await self.client.signal(room.room_id, signals)
                    case UpdateKey(key_epoch=epoch, sealed=sealed):
                        await self.client.update_room_key(room.room_id, sealed, epoch)
            except RequestError as refused:
                if not isinstance(action, UpdateKey):
                    continue  # a refused delivery batch comes back as an ErrorEvent
                if refused.error.code == "conflict" and refused.error.key_epoch is not None:
                    outcome = room.rotation_refused(refused.error.key_epoch)
                    await self._perform(room, outcome.actions)
                else:
                    room.rotation_failed()
            except (ConnectionLost, TimeoutError):
                # Disconnected, or for longer than a request waits: the rejoin knocks again,
                # and a rotation not sent is owed until this client is host of the room again.
                if isinstance(action, UpdateKey):
                    room.rotation_failed()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@asynccontextmanager
async def connect_secure(
    url: str,
    *,
    token: TokenSource,
    device_key: X25519PrivateKey | None = None,
    ssl_context: ssl.SSLContext | None = None,
    backoff: Backoff | None = None,
) -> AsyncIterator[SecureClient]:
    """Connect to roomd at `url` as `connect` does, with end-to-end-encrypted rooms.

    `device_key` is this client's X25519 key (a new one when None); keep it
    for the client's life so the rooms keep listing its own public key.
    """
    events_send, events_recv = anyio.create_memory_object_stream[SecureEvent](EVENT_BUFFER)
    device = device_key or e2ee.new_device_key()
    with unwrapped_errors():
        async with (
            connect(url, token=token, ssl_context=ssl_context, backoff=backoff) as client,
            anyio.create_task_group() as tasks,
            events_send,
            events_recv,
        ):
            secure = SecureClient(client, device, events_send, events_recv)
            tasks.start_soon(secure._pump)
            tasks.start_soon(secure._knock_again)
            try:
                yield secure
            finally:
                tasks.cancel_scope.cancel()
