"""`roomd chat` end to end: textual apps driven by their pilots against a real `roomd serve`.

pytest runs in trio mode and textual runs on asyncio, so each scenario is a
coroutine that a sync test runs with `asyncio.run`; every wait polls a widget
up to a deadline.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from roomd.chat import app
from roomd.chat.command import ChatOptions
from roomd.chat.roster import TYPING_EXPIRY
from roomd.chat.session import open_chat
from roomd.client.invite import parse_invite
from tests.chat.support import say, text, until, until_gone
from tests.e2e_support import RoomdProcess, roomd_processes, token

pytestmark = pytest.mark.e2e

Start = Callable[..., RoomdProcess]
RESTART_WAIT = 30.0
OTHER = "another-token-secret-0123456789abcdef0123456789"


@pytest.fixture
def start_roomd(tmp_path: Path) -> Iterator[Start]:
    """Start `roomd serve` processes on demand; stop each one at teardown."""
    yield from roomd_processes(tmp_path)


def invite_of(shown: str) -> str:
    """Return the invite link in the text of `#invite`."""
    link = shown.removeprefix("invite: ").strip()
    parse_invite(link)
    return link


async def two_chats_talk(roomd: RoomdProcess) -> None:
    host = ChatOptions(roomd.url, token("alice"))
    async with open_chat(host) as alice_app, alice_app.run_test() as alice:
        link = invite_of(await until(alice, "#invite", "#room="))
        assert link.startswith(roomd.url + "#room=")
        await until(alice, "#log", "key rotated to epoch 1 by alice")
        guest = ChatOptions(roomd.url, token("bob"), parse_invite(link))
        async with open_chat(guest) as bob_app, bob_app.run_test() as bob:
            await until(alice, "#log", "admitted bob")
            for pilot in (alice, bob):
                members = await until(pilot, "#members", "bob")
                assert "★ alice (host)" in members
            assert "room " in text(bob, "#invite") and "host alice" in text(bob, "#invite")

            await bob.press(*"hello alice")
            await until(alice, "#typing", "bob is typing")
            await bob.press("enter")
            await until(alice, "#log", "bob: hello alice")
            await until_gone(alice, "#typing", "bob is typing")
            await say(alice, "hi bob, 🔑 and [brackets] stay as typed")
            await until(bob, "#log", "alice: hi bob, 🔑 and [brackets] stay as typed")
            await until(bob, "#log", "bob: hello alice")
            await say(bob, "/invite")
            await until(bob, "#log", f"invite link: {roomd.url}#room=")

            await bob.press(*"a draft")
            await until(alice, "#typing", "bob is typing")
            # Sooner than alice would expire it herself: bob's chat said he stopped.
            await until_gone(alice, "#typing", "bob is typing", TYPING_EXPIRY - 1)
            assert "a draft" not in text(alice, "#log")


def test_two_chats_exchange_messages(start_roomd: Start, monkeypatch: pytest.MonkeyPatch) -> None:
    """Creator shows its link, the invitee joins by it, both talk, see members, host and typing."""
    monkeypatch.setattr(app, "TYPING_IDLE", 0.5)
    asyncio.run(two_chats_talk(start_roomd()))


async def host_kicks(roomd: RoomdProcess) -> None:
    host = ChatOptions(roomd.url, token("alice"))
    async with open_chat(host) as alice_app, alice_app.run_test() as alice:
        invite = parse_invite(invite_of(await until(alice, "#invite", "#room=")))
        async with (
            open_chat(ChatOptions(roomd.url, token("bob"), invite)) as bob_app,
            bob_app.run_test() as bob,
            open_chat(ChatOptions(roomd.url, token("carol"), invite)) as carol_app,
            carol_app.run_test() as carol,
        ):
            await until(alice, "#log", "admitted bob")
            await until(alice, "#log", "admitted carol")
            await say(bob, "/kick alice")
            await until(bob, "#log", "only the host can kick; alice is host")

            await say(alice, "/kick carol")
            await until(carol, "#log", "you were kicked from the room")
            for pilot in (alice, bob):
                await until(pilot, "#log", "carol was kicked")
                await until(pilot, "#log", "key rotated to epoch 2 by alice")
                await until_gone(pilot, "#members", "carol")
            await say(alice, "after the kick")
            await until(bob, "#log", "alice: after the kick")
            await say(carol, "still here?")
            await until(carol, "#log", "you are not in the room any more")
            assert "after the kick" not in text(carol, "#log")


def test_kick_by_the_host_rotates_the_key(start_roomd: Start) -> None:
    """/kick: the kicked chat says so, the others show epoch 2 and read what follows."""
    asyncio.run(host_kicks(start_roomd()))


async def restart_survived(start: Start) -> None:
    first = start()
    port = first.url.rsplit(":", 1)[1].removesuffix("/v1")
    data_dir = first.stderr_path.parent
    async with (
        open_chat(ChatOptions(first.url, token("alice"))) as alice_app,
        alice_app.run_test() as alice,
    ):
        invite = parse_invite(invite_of(await until(alice, "#invite", "#room=")))
        async with (
            open_chat(ChatOptions(first.url, token("bob"), invite)) as bob_app,
            bob_app.run_test() as bob,
        ):
            await until(alice, "#log", "admitted bob")
            await say(alice, "before the restart")
            await until(bob, "#log", "alice: before the restart")

            first.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(first.proc.wait)
            for pilot in (alice, bob):
                await until(pilot, "#log", "disconnected — reconnecting…")
            await asyncio.to_thread(lambda: start("--port", port, data_dir=data_dir))
            for pilot in (alice, bob):
                await until(pilot, "#log", "reconnected", RESTART_WAIT)

            await say(bob, "after the restart")
            await until(alice, "#log", "bob: after the restart", RESTART_WAIT)
            await say(alice, "and back")
            await until(bob, "#log", "alice: and back", RESTART_WAIT)
            for pilot in (alice, bob):
                log = text(pilot, "#log")
                for line in (
                    "alice: before the restart",
                    "bob: after the restart",
                    "alice: and back",
                ):
                    assert log.count(line) == 1, (line, log)


def test_a_restart_of_roomd_is_survived(start_roomd: Start) -> None:
    """kill -9 and a restart: both chats reconnect, talk on, and show no message twice."""
    asyncio.run(restart_survived(start_roomd))


async def token_refused_after_restart(start: Start) -> None:
    first = start()
    port = first.url.rsplit(":", 1)[1].removesuffix("/v1")
    alice_options = ChatOptions(first.url, token("alice"))
    async with open_chat(alice_options) as alice_app, alice_app.run_test() as alice:
        await until(alice, "#invite", "#room=")
        first.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.proc.wait)
        await until(alice, "#log", "disconnected — reconnecting…")
        await asyncio.to_thread(
            lambda: start("--port", port, data_dir=first.stderr_path.parent, secret=OTHER)
        )
        await until(alice, "#log", "disconnected for good (roomd refused the token", RESTART_WAIT)
        assert "· reconnected" not in text(alice, "#log")


def test_a_token_refused_after_a_restart_ends_the_chat(start_roomd: Start) -> None:
    """A roomd back with another token secret ends the chat with the reason, not a hang."""
    asyncio.run(token_refused_after_restart(start_roomd))
