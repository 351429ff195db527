"""The SDK against a real `roomd serve`, under asyncio and under trio alike.

Each scenario is one anyio coroutine run twice: by `asyncio.run` in a plain
test, and directly by pytest-trio. Real processes take real time, so these run
on the real clock with bounded waits.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from roomd.client.client import Client, ConnectionLost, RequestError, connect
from roomd.client.events import (
    Disconnected,
    ErrorEvent,
    Event,
    Joined,
    NewMessage,
    Reconnected,
    Typing,
    UserJoined,
    UserLeft,
)
from tests.e2e_support import RoomdProcess, roomd_processes, token

pytestmark = pytest.mark.e2e

Start = Callable[..., RoomdProcess]
Scenario = Callable[[Start], Awaitable[None]]
WAIT = 10.0


@pytest.fixture
def start_roomd(tmp_path: Path) -> Iterator[Start]:
    """Start `roomd serve` processes on demand; stop each one at teardown."""
    yield from roomd_processes(tmp_path)


def of_type(kind: type) -> Callable[[Event], bool]:
    """Return a matcher of events of `kind`."""
    return lambda event: isinstance(event, kind)


async def rooms_events_and_replies(start: Start) -> None:
    """Two clients: create, join, messages both ways, typing, history, kick, errors."""
    roomd = start()
    alice_token = token("alice")
    async with (
        connect(roomd.url, token=alice_token) as alice,
        connect(roomd.url, token=token("bob")) as bob,
    ):
        assert (alice.aid, bob.aid) == ("alice", "bob")
        created = await alice.create_room(public_key=b"A" * 32)
        assert (created.host, created.you, created.last_seq) == ("alice", "alice", 0)
        joined = await bob.join(created.room_id, public_key=b"B" * 32)
        assert [m.aid for m in joined.members] == ["alice", "bob"]
        assert joined.members[1].public_key == b"B" * 32
        with anyio.fail_after(WAIT):
            arrived = await alice.next_event(of_type(UserJoined))
        assert arrived == UserJoined(created.room_id, "bob", b"B" * 32)

        mine = await alice.send_message(created.room_id, b"\x01cipher", iv=b"\x02" * 12)
        assert (mine.seq, mine.sender, mine.ciphertext) == (1, "alice", b"\x01cipher")
        theirs = await bob.send_message(created.room_id, b"reply", client_msg_id="b-1")
        assert (theirs.seq, theirs.client_msg_id) == (2, "b-1")
        with anyio.fail_after(WAIT):
            seen = await bob.next_event(of_type(NewMessage))
        assert seen == mine

        await bob.typing(created.room_id, True)
        with anyio.fail_after(WAIT):
            typing = await alice.next_event(of_type(Typing))
        assert typing == Typing(created.room_id, "bob", True)

        # A refusal of a frame sent without waiting (a signal) names the frame refused.
        await alice.signal(created.room_id, [("bob", b"to bob"), ("nobody", b"to nobody")])
        with anyio.fail_after(WAIT):
            refusal = await alice.next_event(of_type(ErrorEvent))
        assert isinstance(refusal, ErrorEvent) and refusal.code == "notFound"
        assert refusal.request is not None
        assert {k: v for k, v in refusal.request.items() if k != "id"} == {
            "type": "signal",
            "roomId": created.room_id,
            "signals": [
                {"to": "bob", "payload": b"to bob"},
                {"to": "nobody", "payload": b"to nobody"},
            ],
        }
        assert "to nobody" not in repr(refusal)
        # A signal roomd took is remembered, unanswered: neither it nor the token shows in
        # the client's repr (a traceback may print locals).
        await alice.signal(created.room_id, [("bob", b"taken by roomd")])
        assert "taken by roomd" not in repr(alice) and alice_token not in repr(alice)

        page = await bob.get_history(created.room_id, limit=1)
        assert [m.seq for m in page.messages] == [2] and page.more

        with pytest.raises(RequestError) as refused:
            await bob.kick(created.room_id, "alice")
        assert refused.value.error.code == "forbidden"
        with pytest.raises(RequestError) as refused:
            await bob.send_message("no-such-room", b"x")
        assert refused.value.error.code == "notMember"

        left = await alice.kick(created.room_id, "bob", ban=True)
        assert left == UserLeft(created.room_id, "bob", "kicked")
        with pytest.raises(RequestError) as refused:
            await bob.join(created.room_id)
        assert refused.value.error.code == "forbidden"
        await alice.unban(created.room_id, "bob")
        again = await bob.join(created.room_id)
        assert again.last_seq == 2


async def recovery_across_kill_9(start: Start) -> None:
    """`kill -9` of roomd mid-conversation: each side sees every message once, in order."""
    first = start("--history-size", "1000")
    port = first.url.rsplit(":", 1)[1].removesuffix("/v1")
    data_dir = first.stderr_path.parent
    total = 40
    async with (
        connect(first.url, token=token("alice")) as alice,
        connect(first.url, token=token("bob")) as bob,
    ):
        room = (await alice.create_room()).room_id
        await bob.join(room)
        seen: dict[str, list[NewMessage]] = {"alice": [], "bob": []}

        async def collect(client: Client) -> None:
            async for event in client.events():
                if isinstance(event, NewMessage):
                    seen[client.aid].append(event)
                    if len(seen[client.aid]) == 2 * total:
                        return

        async def talk(client: Client) -> None:
            for n in range(total):
                await client.send_message(room, f"{client.aid} {n}".encode())
                if client is alice and n == total // 2:
                    first.proc.send_signal(signal.SIGKILL)
                    await anyio.to_thread.run_sync(first.proc.wait)
                    await anyio.to_thread.run_sync(
                        lambda: start("--port", port, "--history-size", "1000", data_dir=data_dir)
                    )

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tasks:
                for client in (alice, bob):
                    tasks.start_soon(collect, client)
                    tasks.start_soon(talk, client)
    for aid, messages in seen.items():
        assert [m.seq for m in messages] == list(range(1, 2 * total + 1)), aid
        texts = [m.ciphertext.decode() for m in messages]
        for sender in ("alice", "bob"):
            assert [t for t in texts if t.startswith(sender)] == [
                f"{sender} {n}" for n in range(total)
            ], (aid, sender)


async def reconnect_events(start: Start) -> None:
    """A restart is announced as Disconnected then Reconnected, and the room is rejoined."""
    first = start()
    port = first.url.rsplit(":", 1)[1].removesuffix("/v1")
    async with connect(first.url, token=token("carol")) as carol:
        room = (await carol.create_room()).room_id
        first.proc.send_signal(signal.SIGKILL)
        with anyio.fail_after(WAIT):
            await carol.next_event(of_type(Disconnected))
        await anyio.to_thread.run_sync(
            lambda: start("--port", port, data_dir=first.stderr_path.parent)
        )
        with anyio.fail_after(WAIT):
            assert isinstance(await carol.next_event(), Reconnected)
            rejoined = await carol.next_event()
        assert isinstance(rejoined, Joined) and rejoined.room_id == room
        assert rejoined.recovered is True
        assert (await carol.send_message(room, b"after")).seq == 1


SCENARIOS = [rooms_events_and_replies, recovery_across_kill_9, reconnect_events]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_under_asyncio(scenario: Scenario, start_roomd: Start) -> None:
    """The SDK does what the scenario asserts when the application runs on asyncio."""
    asyncio.run(scenario(start_roomd))  # type: ignore[arg-type]


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_under_trio(scenario: Scenario, start_roomd: Start) -> None:
    """The SDK does what the scenario asserts when the application runs on trio."""
    await scenario(start_roomd)


async def test_a_refused_token_fails_connect(start_roomd: Start) -> None:
    """A token roomd refuses makes `connect` raise instead of retrying forever."""
    from roomd.client.client import AuthenticationFailed

    roomd = start_roomd()
    with pytest.raises(AuthenticationFailed), anyio.fail_after(WAIT):
        async with connect(roomd.url, token=token("mallory", secret="wrong" * 8)):
            pass


async def test_requests_after_close_fail(start_roomd: Start) -> None:
    """A client used after its block ended says so instead of hanging."""
    roomd = start_roomd()
    async with connect(roomd.url, token=token("dave")) as dave:
        pass
    with pytest.raises(ConnectionLost):
        await dave.create_room()


async def test_a_token_refused_on_reconnect_stops_the_client(start_roomd: Start) -> None:
    """roomd back with another secret: the stream says Stopped and ends; calls raise."""
    from roomd.client.events import Stopped

    first = start_roomd()
    port = first.url.rsplit(":", 1)[1].removesuffix("/v1")
    async with connect(first.url, token=token("erin")) as erin:
        first.proc.send_signal(signal.SIGKILL)
        await anyio.to_thread.run_sync(first.proc.wait)
        await anyio.to_thread.run_sync(
            lambda: start_roomd(
                "--port", port, data_dir=first.stderr_path.parent, secret="another" * 6
            )
        )
        with anyio.fail_after(WAIT):
            events = [event async for event in erin.events()]
        assert isinstance(events[-1], Stopped) and "refused the token" in events[-1].reason
        with pytest.raises(ConnectionLost):
            await erin.create_room()


async def test_concurrent_senders_are_paced_inside_the_rate_limit(start_roomd: Start) -> None:
    """60 messages sent at once by one client all arrive: none is rate-limited or dropped."""
    roomd = start_roomd()
    async with connect(roomd.url, token=token("fran")) as fran:
        room = (await fran.create_room()).room_id
        sent: list[NewMessage] = []

        async def send(n: int) -> None:
            sent.append(await fran.send_message(room, f"m{n}".encode()))

        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as tasks:
                for n in range(60):
                    tasks.start_soon(send, n)
    # Each send answered with its echo, every seq once: roomd refused none of the 60.
    assert sorted(m.seq for m in sent) == list(range(1, 61))


async def test_an_idle_client_answers_heartbeats_and_stays_connected(start_roomd: Start) -> None:
    """Pinged every 0.5 s with a 1.5 s timeout, an idle client is still in its room after 3 s."""
    roomd = start_roomd("--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")
    async with connect(roomd.url, token=token("gus")) as gus:
        room = (await gus.create_room()).room_id
        with anyio.move_on_after(3):  # real process: the heartbeat runs on its clock
            dropped = await gus.next_event(lambda e: isinstance(e, Disconnected))
            raise AssertionError(f"the idle client was dropped: {dropped}")
        assert (await gus.send_message(room, b"still here")).seq == 1
