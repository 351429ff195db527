"""The chat's screen from a scripted event stream: a fake client, no server, no network.

A `FakeClient` stands in for the `SecureClient`: the test puts events on its
stream and reads back what the app asked of it, so orderings that a real
roomd makes only by chance (a message that arrives before its key) are
certain here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import attrs

from roomd.chat.app import ChatApp
from roomd.client.events import Joined, Member, Typing
from roomd.client.secure import SecureClient
from roomd.client.secure_room import Message, ReactionMessage, SecureEvent, Unreadable
from tests.chat.support import POLL, WAIT, say, text, until, until_gone

ROOM = "Room_1"


@attrs.define
class FakeRoom:
    """What the app reads of the SDK's room: its newest invite secret."""

    invite_secret: bytes | None = None


@attrs.define
class FakeClient:
    """A `SecureClient` as the app uses it: an event stream in, requests recorded."""

    aid: str
    rooms: dict[str, FakeRoom] = attrs.field(factory=lambda: {ROOM: FakeRoom(b"k" * 32)})
    stream: asyncio.Queue[SecureEvent] = attrs.field(factory=lambda: asyncio.Queue(100))
    requests: list[tuple[str, object]] = attrs.field(factory=list)

    async def _events(self) -> AsyncIterator[SecureEvent]:
        while True:
            yield await self.stream.get()

    def events(self) -> AsyncIterator[SecureEvent]:
        """Return the scripted events, as `SecureClient.events` does."""
        return self._events()

    def invite_link(self, room_id: str) -> str:
        """Return a link like the SDK's."""
        return f"ws://roomd.test/v1#room={room_id}&secret=s"

    async def send(self, room_id: str, text: str) -> None:
        """Record a message sent."""
        self.requests.append(("send", text))

    async def typing(self, room_id: str, is_typing: bool) -> None:
        """Record a typing announcement."""
        self.requests.append(("typing", is_typing))


def joined(host: str, *members: str) -> Joined:
    """Return bob's `joinSuccess` of `ROOM`."""
    listed = tuple(Member(aid, None) for aid in members)
    return Joined(ROOM, "bob", host, None, listed, 0, "e1", 1, None)


async def placeholders_replaced() -> None:
    fake = FakeClient("bob")
    chat = ChatApp(cast(SecureClient, fake), ROOM, created=False)
    async with chat.run_test() as bob:
        fake.stream.put_nowait(joined("alice", "alice", "bob"))
        fake.stream.put_nowait(Unreadable(ROOM, 1, "alice", 2, "no key yet"))
        fake.stream.put_nowait(Message(ROOM, 2, "m2", "carol", "second", 0, 2))
        await until(bob, "#log", "carol: second")
        assert "alice: [waiting for the room key]" in text(bob, "#log")

        fake.stream.put_nowait(Message(ROOM, 1, "m1", "alice", "first", 0, 2))
        fake.stream.put_nowait(ReactionMessage(ROOM, 3, "alice", "m2", "👍", False))
        log = await until(bob, "#log", "carol: second  👍 alice")
        assert "waiting" not in log
        assert log.index("alice: first") < log.index("carol: second")


def test_a_placeholder_is_replaced_on_its_line() -> None:
    """#log shows a keyless message as waiting, then its text on the same line; reactions land."""
    asyncio.run(placeholders_replaced())


async def typing_announced() -> None:
    fake = FakeClient("bob")
    chat = ChatApp(cast(SecureClient, fake), ROOM, created=False)
    async with chat.run_test() as bob:
        fake.stream.put_nowait(joined("alice", "alice", "bob", "carol"))
        members = await until(bob, "#members", "carol")
        assert members.splitlines() == ["members", "★ alice (host)", "  bob (you)", "  carol"]
        assert text(bob, "#invite") == f"room {ROOM} · host alice · /invite shows a link to share"
        fake.stream.put_nowait(Typing(ROOM, "carol", True))
        await until(bob, "#typing", "carol is typing…")
        fake.stream.put_nowait(Message(ROOM, 1, "m1", "carol", "done", 0, 1))
        await until_gone(bob, "#typing", "carol is typing…")

        await bob.press(*"hi", "enter")
        await say(bob, "/typo")
        await until(bob, "#log", "unknown command /typo")
        deadline = time.monotonic() + WAIT
        while len(fake.requests) < 3 and time.monotonic() < deadline:
            await bob.pause(POLL)
        # Typing and messages go out by two workers: only each one's own order is certain.
        assert [r for r in fake.requests if r[0] == "typing"] == [
            ("typing", True),
            ("typing", False),
        ]
        assert [r for r in fake.requests if r[0] == "send"] == [("send", "hi")]


def test_typing_and_sending_go_to_the_client() -> None:
    """Keystrokes announce typing, Enter sends and stops it, a sender stops showing as typing."""
    asyncio.run(typing_announced())
