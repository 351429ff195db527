"""Encrypted rooms end to end: SDK clients and a relay-side observer on a real `roomd serve`.

What roomd relays and stores must hold no plaintext; only invited members get
keys; a kicked member cannot read what follows the rotation; a member back from
an absence catches up on the epochs it missed.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import anyio
import attrs
import pytest

from roomd.client import e2ee
from roomd.client.client import Client, RequestError, connect
from roomd.client.events import Event, NewMessage, Signal, UserLeft
from roomd.client.invite import invite_link
from roomd.client.plaintext import Text, encode_body
from roomd.client.secure import SecureClient, connect_secure
from roomd.client.secure_room import (
    KNOCK_AGAIN,
    Admitted,
    KeyRotated,
    Message,
    ReactionMessage,
    SecureRoom,
    Unreadable,
)
from tests.e2e_support import RoomdProcess, roomd_processes, token

pytestmark = pytest.mark.e2e

Start = Callable[..., RoomdProcess]
WAIT = 10.0
SECRET_WORDS = ["attack at dawn", "the vault code is 4711", "bring the 🍰", "after the kick"]


@pytest.fixture
def roomd(tmp_path: Path) -> Iterator[RoomdProcess]:
    """A roomd process with history on, in `tmp_path`."""
    for start in roomd_processes(tmp_path):
        yield start()


T = TypeVar("T")


async def until(client: SecureClient, kind: type[T], test: Callable[[T], bool] = bool) -> T:
    """Return the next event of `kind` on `client` that passes `test`, within `WAIT`."""
    with anyio.fail_after(WAIT):
        while True:
            event = await client.next_event(kind)
            assert isinstance(event, kind)
            if test(event):
                return event


def store_bytes(data_dir: Path) -> bytes:
    """Return every byte of roomd's SQLite files (database, journal, WAL) in `data_dir`."""
    return b"".join(path.read_bytes() for path in sorted(data_dir.rglob("*sqlite*")))


async def collect_raw(client: Client, into: list[Event]) -> None:
    """Append every event the raw (relay-side) client receives to `into`."""
    async for event in client.events():
        into.append(event)


@asynccontextmanager
async def three_in_a_room(
    roomd: RoomdProcess, bob_url: str | None = None
) -> AsyncIterator[tuple[SecureClient, SecureClient, SecureClient, str]]:
    """Yield alice (host), bob and carol, both admitted to alice's new room, and the room id."""
    async with (
        connect_secure(roomd.url, token=token("alice")) as alice,
        connect_secure(bob_url or roomd.url, token=token("bob")) as bob,
        connect_secure(roomd.url, token=token("carol")) as carol,
    ):
        room = await alice.create_room()
        link = alice.invite_link(room)
        for member in (bob, carol):
            await member.join(link)
            await until(alice, Admitted, lambda e, aid=member.aid: e.aid == aid)
        yield alice, bob, carol, room


async def test_encrypted_conversation_shows_roomd_only_blobs(roomd: RoomdProcess) -> None:
    """Invited members read each other; an uninvited member, roomd's wire and store see no text."""
    seen_by_observer: list[Event] = []
    async with (
        connect_secure(roomd.url, token=token("alice")) as alice,
        connect_secure(roomd.url, token=token("bob")) as bob,
        connect_secure(roomd.url, token=token("eve")) as eve,
        connect(roomd.url, token=token("observer")) as observer,
        anyio.create_task_group() as tasks,
    ):
        room = await alice.create_room()
        link = alice.invite_link(room)
        assert link.startswith(roomd.url + "#room=")
        await bob.join(link)
        await until(alice, Admitted, lambda e: e.aid == "bob")
        await observer.join(room)
        tasks.start_soon(collect_raw, observer, seen_by_observer)
        await eve.join_uninvited(room)

        first = await alice.send(room, SECRET_WORDS[0])
        got = await until(bob, Message)
        assert (got.text, got.sender, got.seq) == (SECRET_WORDS[0], "alice", first.seq)
        await bob.send(room, SECRET_WORDS[1])
        assert (await until(alice, Message, lambda m: m.sender == "bob")).text == SECRET_WORDS[1]
        await bob.react(room, first.message_id, "🔥")
        reaction = await until(alice, ReactionMessage)
        assert (reaction.sender, reaction.message_id, reaction.emoji) == (
            "bob",
            first.message_id,
            "🔥",
        )
        await alice.send(room, SECRET_WORDS[2])
        assert (await until(bob, Message, lambda m: m.text == SECRET_WORDS[2])).sender == "alice"

        # eve joined without an invite secret: she knocked with nothing, the host gave nothing.
        unread = await until(eve, Unreadable, lambda e: e.seq == 4)
        assert unread.reason == "no key yet"
        assert eve.rooms[room].keys == {}
        # No key or invite secret shows in a repr (a traceback may print locals).
        secrets = [*alice.rooms[room].keys.values(), *bob.rooms[room].secrets]
        assert secrets
        for client in (alice, bob):
            assert not any(repr(secret) in repr(client) for secret in secrets)
        tasks.cancel_scope.cancel()

    assert [e.seq for e in seen_by_observer if isinstance(e, NewMessage)] == [1, 2, 3, 4]
    relayed = repr(seen_by_observer).encode()
    stored = store_bytes(roomd.stderr_path.parent)
    assert stored, "the store file was not found"
    for words in [*SECRET_WORDS[:3], "🔥"]:
        for place, data in (
            ("relayed", relayed),
            ("stored", stored),
            ("logged", roomd.logs().encode()),
        ):
            assert words.encode() not in data, (words, place)
    assert not any(isinstance(e, NewMessage) and b"text" in e.ciphertext for e in seen_by_observer)


async def test_kick_rotates_and_the_kicked_cannot_read_on(roomd: RoomdProcess) -> None:
    """After a kick with ban the key rotates: the others read on, the kicked one cannot."""
    async with three_in_a_room(roomd) as (alice, bob, carol, room):
        link = alice.invite_link(room)
        await alice.send(room, "before")
        for member in (bob, carol):
            assert (await until(member, Message)).text == "before"

        carol_keys = dict(carol.rooms[room].keys)
        assert list(carol_keys) == [1]
        await alice.kick(room, "carol")
        rotated = await until(bob, KeyRotated)
        # The new invite secret went to no one: bob can read epoch 2 only once alice delivers.
        assert (rotated.key_epoch, rotated.by, rotated.readable) == (2, "alice", False)
        after = await alice.send(room, SECRET_WORDS[3])
        assert (await until(bob, Message, lambda m: m.seq == after.seq)).text == SECRET_WORDS[3]

        with pytest.raises(RequestError) as refused:
            await carol.join(link)
        assert refused.value.error.code == "forbidden"
        # Every key carol ever held cannot open the message sent after the rotation.
        page = await bob.client.get_history(room)
        raw = next(m for m in page.messages if m.seq == after.seq)
        assert raw.key_epoch == 2
        carol_view = SecureRoom(room, "carol", carol.device, keys=carol_keys)
        assert isinstance(carol_view.read(raw), Unreadable)
        assert isinstance(bob.rooms[room].read(raw), Message)


@attrs.define(eq=False)
class Gate:
    """A loopback TCP proxy a test closes (dropping and refusing connections) and reopens."""

    target: int
    listener: socket.socket = attrs.field(factory=lambda: socket.create_server(("127.0.0.1", 0)))
    _open: list[socket.socket] = attrs.field(factory=list)
    closed: threading.Event = attrs.field(factory=threading.Event)

    @property
    def url(self) -> str:
        """The WebSocket URL through the gate."""
        return f"ws://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def start(self) -> None:
        """Accept and pump connections in threads."""
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.closed.is_set():
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()

    def close(self) -> None:
        """Drop every open connection and refuse new ones until `reopen`."""
        self.closed.set()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def reopen(self) -> None:
        """Let connections through again."""
        self.closed.clear()

    def stop(self) -> None:
        """Close the gate and its listener."""
        self.close()
        self.listener.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


async def test_a_member_back_from_an_absence_catches_up(roomd: RoomdProcess) -> None:
    """Away while the key rotated: on return bob replays, knocks, and reads every message."""
    port = int(roomd.url.rsplit(":", 1)[1].removesuffix("/v1"))
    gate = Gate(port)
    gate.start()
    try:
        async with three_in_a_room(roomd, gate.url) as (alice, bob, _carol, room):
            gate.close()
            left = await until(alice, UserLeft)
            assert (left.aid, left.reason) == ("bob", "disconnected")
            await alice.kick(room, "carol")
            await until(alice, KeyRotated, lambda e: e.key_epoch == 2)
            missed = [await alice.send(room, f"while away {n}") for n in range(3)]
            gate.reopen()
            texts = {}
            while len(texts) < 3:
                message = await until(bob, Message)
                texts[message.seq] = message.text
            assert texts == {m.seq: m.text for m in missed}
            assert 2 in bob.rooms[room].keys
    finally:
        gate.stop()


async def test_a_new_host_rotates_and_delivers(roomd: RoomdProcess) -> None:
    """When the host leaves, the next host rotates, and the members that knock read on."""
    async with three_in_a_room(roomd) as (alice, bob, carol, room):
        await alice.leave(room)
        rotated = await until(carol, KeyRotated, lambda e: e.by == "bob")
        assert rotated.key_epoch == 2
        # carol knocked to bob with the secret she joined with, which bob knows too.
        await until(bob, Admitted, lambda e: e.aid == "carol")
        sent = await bob.send(room, "new host here")
        assert (await until(carol, Message, lambda m: m.seq == sent.seq)).key_epoch == 2


async def test_signals_carry_only_blobs(roomd: RoomdProcess) -> None:
    """Knocks and deliveries that cross roomd are E2EE.md payloads, never a raw key."""
    async with (
        connect_secure(roomd.url, token=token("alice")) as alice,
        connect(roomd.url, token=token("bob")) as raw_bob,
    ):
        room = await alice.create_room()
        secret_key = alice.rooms[room].keys[1]
        joined = await raw_bob.join(room, public_key=bytes(32))
        assert joined.encrypted_room_key is not None
        assert secret_key not in joined.encrypted_room_key
        await raw_bob.signal(room, [("alice", b"\x02" + bytes(40))])  # a bad knock
        await alice.send(room, "still fine")
        with anyio.fail_after(WAIT):
            event = await raw_bob.next_event(lambda e: isinstance(e, NewMessage | Signal))
        assert isinstance(event, NewMessage), "a bad knock got an answer"


async def test_a_message_refused_for_a_stale_epoch_is_sent_again_under_the_current(
    roomd: RoomdProcess,
) -> None:
    """A send under an epoch the room has left gets `conflict`; the SDK re-encrypts and resends."""
    async with three_in_a_room(roomd) as (alice, bob, _carol, room):
        await alice.kick(room, "carol")
        await until(bob, KeyRotated, lambda e: e.key_epoch == 2)
        assert (await bob.wait_key(room))[0] == 2
        # As if bob had not seen roomKeyUpdated yet: he encrypts under epoch 1.
        bob.rooms[room].key_epoch = 1
        sent = await bob.send(room, "written before the rotation reached me")
        assert sent.key_epoch == 2
        got = await until(alice, Message, lambda m: m.sender == "bob")
        assert (got.seq, got.text, got.key_epoch) == (sent.seq, sent.text, 2)


async def test_a_send_without_the_current_key_waits_for_the_delivery(roomd: RoomdProcess) -> None:
    """The room moved to an epoch this member has no key for: `send` waits until it arrives."""
    from roomd.client import e2ee

    async with (
        connect(roomd.url, token=token("host")) as host,
        connect_secure(roomd.url, token=token("dana")) as dana,
    ):
        device = e2ee.new_device_key()
        created = await host.create_room(public_key=e2ee.public_bytes(device))
        room, secret, key1 = created.room_id, e2ee.new_secret(), e2ee.new_secret()
        await host.update_room_key(room, e2ee.seal_room_key(secret, room, 1, key1), 1)
        await dana.join(invite_link(roomd.url, room, secret))
        await host.update_room_key(room, e2ee.seal_room_key(e2ee.new_secret(), room, 2, key1), 2)
        await until(dana, KeyRotated, lambda e: e.key_epoch == 2 and not e.readable)
        async with anyio.create_task_group() as tasks:
            sent: list[Message] = []

            async def send() -> None:
                sent.append(await dana.send(room, "held until the key came"))

            tasks.start_soon(send)
            await anyio.sleep(0.3)
            assert not sent, "sent without a key of the room's epoch"
            key2 = e2ee.new_secret()
            dana_key = dana.rooms[room].public_key
            await host.signal(room, [("dana", e2ee.deliver_key(device, dana_key, room, 2, key2))])
        assert sent[0].key_epoch == 2
        with anyio.fail_after(WAIT):
            echo = await host.next_event(lambda e: isinstance(e, NewMessage) and e.sender == "dana")
        assert isinstance(echo, NewMessage) and echo.key_epoch == 2
        assert e2ee.decrypt_message(key2, room, "dana", 2, echo.iv or b"", echo.ciphertext)


async def test_a_member_whose_key_never_came_knocks_again(roomd: RoomdProcess) -> None:
    """A delivery lost on the way: the member knocks again and reads once the key comes.

    The host here is scripted with the SDK's E2EE.md primitives over a plain
    client, so it can leave bob's first knock after the rotation unanswered.
    """
    device = e2ee.new_device_key()
    async with (
        connect(roomd.url, token=token("alice")) as alice,
        connect_secure(roomd.url, token=token("bob")) as bob,
    ):
        room = (await alice.create_room(public_key=e2ee.public_bytes(device))).room_id
        first_key, secret = e2ee.new_secret(), e2ee.new_secret()
        await alice.update_room_key(room, e2ee.seal_room_key(secret, room, 1, first_key), 1)
        await bob.join(invite_link(roomd.url, room, secret))
        assert (await bob.wait_key(room)) == (1, first_key)  # opened from the link's sealed key

        def from_bob(event: Event) -> bool:
            return isinstance(event, Signal) and event.sender == "bob"

        with anyio.fail_after(WAIT):
            await alice.next_event(from_bob)  # the knock of bob's join, left unanswered

        # Rotated under a secret bob never saw: only a delivery gives him epoch 2.
        second_key = e2ee.new_secret()
        sealed = e2ee.seal_room_key(e2ee.new_secret(), room, 2, second_key)
        await alice.update_room_key(room, sealed, 2)
        rotated = anyio.current_time()
        with anyio.fail_after(WAIT):
            knock = await alice.next_event(from_bob)
        assert isinstance(knock, Signal)
        asked = e2ee.read_knock(knock.payload)
        bob_public = bob.rooms[room].public_key
        assert e2ee.knock_matches(asked, secret, room, "bob", bob_public)
        assert asked.next_epoch == 2
        # Not at once: only once the key has stayed missing (seen so at two checks).
        assert anyio.current_time() - rotated >= KNOCK_AGAIN - 0.5

        delivery = e2ee.deliver_key(device, bob_public, room, 2, second_key)
        await alice.signal(room, [("bob", delivery)])
        assert (await bob.wait_key(room)) == (2, second_key)
        iv, ciphertext = e2ee.encrypt_message(
            second_key, room, "alice", 2, encode_body(Text("read at last", 1))
        )
        await alice.send_message(room, ciphertext, iv=iv, key_epoch=2)
        assert (await until(bob, Message, lambda m: m.key_epoch == 2)).text == "read at last"
