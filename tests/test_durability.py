"""Rooms survive restarts: SERVER_API.md's durability section, end to end and in-process."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

from roomd.store import RoomStore
from roomd.store.memory import MemoryRoomStore

from .e2e_support import RoomdProcess, WsClient, b64, roomd_processes
from .harness import Harness, running_server

Start = Callable[..., RoomdProcess]


@pytest.fixture
def start_roomd(tmp_path: Path) -> Iterator[Start]:
    """Start `roomd serve` processes on demand; SIGTERM each one at teardown."""
    yield from roomd_processes(tmp_path)


KEY = b"\x01encrypted-room-key\xfe"
DAY = 24 * 3600


def _join(process: RoomdProcess, aid: str, room_id: str) -> tuple[WsClient, dict[str, object]]:
    client = WsClient(process.url)
    client.login(aid)
    reply = client.request({"type": "joinChatroom", "roomId": room_id})
    assert reply["type"] == "joinSuccess", reply
    return client, reply


def _send(client: WsClient, room_id: str, count: int) -> list[int]:
    seqs = []
    for n in range(count):
        client.send({"type": "message", "roomId": room_id, "ciphertext": b64(b"m%d" % n)})
        seqs.append(int(client.recv_type("newMessage")["seq"]))
    return seqs


@pytest.mark.e2e
def test_rooms_and_seq_survive_sigkill(start_roomd: Start, tmp_path: Path) -> None:
    """After kill -9 and a restart every room is back with key and host, and seq moves on."""
    first = start_roomd("--rate", "1000", "--burst", "1000")
    alice = WsClient(first.url)
    alice.login("alice")
    created = alice.request({"type": "createChatroom", "encryptedRoomKey": b64(KEY)})
    room_id = str(created["roomId"])
    bob, _ = _join(first, "bob", room_id)
    sent = _send(alice, room_id, 7)
    assert sent == list(range(1, 8))
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    alice.close()
    bob.close()

    second = start_roomd("--rate", "1000", "--burst", "1000", data_dir=tmp_path)
    carol, joined = _join(second, "carol", room_id)
    # The room kept its key; it was empty at start, so carol, joining it, became host.
    assert joined["encryptedRoomKey"] == b64(KEY)
    assert joined["lastSeq"] >= 7
    (after,) = _send(carol, room_id, 1)
    assert after > max(sent)
    carol.close()


def _crash_after_seven(start_roomd: Start, *args: str) -> tuple[str, dict[str, object]]:
    """Run roomd (with `args`), send 7 messages into a new room with two members, kill -9 it.

    Returns the room id and bob's joinSuccess from before the crash.
    """
    first = start_roomd("--rate", "1000", "--burst", "1000", *args)
    alice = WsClient(first.url)
    alice.login("alice")
    room_id = str(alice.request({"type": "createChatroom"})["roomId"])
    bob, joined = _join(first, "bob", room_id)
    assert _send(alice, room_id, 7) == list(range(1, 8))
    assert [bob.recv_type("newMessage")["seq"] for _ in range(7)] == list(range(1, 8))
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(5)
    alice.close()
    bob.close()
    return room_id, joined


@pytest.mark.e2e
def test_with_history_a_sigkill_loses_no_seq_and_keeps_the_epoch(
    start_roomd: Start, tmp_path: Path
) -> None:
    """kill -9 after 7 messages: lastSeq is exactly 7, same epoch, history 1..7, then 8."""
    room_id, before = _crash_after_seven(start_roomd)
    second = start_roomd(data_dir=tmp_path)
    carol, joined = _join(second, "carol", room_id)
    assert (joined["lastSeq"], joined["epoch"]) == (7, before["epoch"])
    carol.send({"type": "getHistory", "roomId": room_id})
    page = carol.recv_type("history")
    assert page["epoch"] == before["epoch"]
    assert [entry["seq"] for entry in page["messages"]] == list(range(1, 8))
    assert [entry["ciphertext"] for entry in page["messages"]] == [
        b64(b"m%d" % n) for n in range(7)
    ]
    assert page["more"] is False
    assert _send(carol, room_id, 1) == [8]
    # A member that saw up to 4 before the crash recovers 5..7 exactly.
    dave = WsClient(second.url)
    dave.login("dave")
    since = {"epoch": before["epoch"], "seq": 4}
    rejoined = dave.request({"type": "joinChatroom", "roomId": room_id, "since": since})
    assert rejoined["recovered"] is True
    assert [dave.recv_type("newMessage")["seq"] for _ in range(4)] == [5, 6, 7, 8]
    carol.close()
    dave.close()


@pytest.mark.e2e
def test_without_history_a_sigkill_changes_the_epoch_and_seq_never_repeats(
    start_roomd: Start, tmp_path: Path
) -> None:
    """With --history-size 0, kill -9 gives the room a new epoch; its seq goes on above 7."""
    room_id, before = _crash_after_seven(start_roomd, "--history-size", "0")
    second = start_roomd("--history-size", "0", data_dir=tmp_path)
    carol, joined = _join(second, "carol", room_id)
    assert joined["epoch"] != before["epoch"]
    assert isinstance(joined["lastSeq"], int) and joined["lastSeq"] >= 7
    (after,) = _send(carol, room_id, 1)
    assert after > 7
    stale = {"epoch": before["epoch"], "seq": 7}
    dave = WsClient(second.url)
    dave.login("dave")
    rejoined = dave.request({"type": "joinChatroom", "roomId": room_id, "since": stale})
    assert rejoined["recovered"] is False
    carol.send({"type": "getHistory", "roomId": room_id})
    page = carol.recv_type("history")
    assert page["messages"] == [] and page["more"] is False
    carol.close()
    dave.close()


@pytest.mark.e2e
def test_graceful_restart_keeps_seq_contiguous_and_host(start_roomd: Start, tmp_path: Path) -> None:
    """After SIGTERM and a restart the next seq is exactly one more, and the host is kept."""
    first = start_roomd()
    alice = WsClient(first.url)
    alice.login("alice")
    room_id = str(alice.request({"type": "createChatroom"})["roomId"])
    assert _send(alice, room_id, 3) == [1, 2, 3]
    alice.close()
    assert first.stop() == 0

    second = start_roomd(data_dir=tmp_path)
    alice, joined = _join(second, "alice", room_id)
    assert (joined["host"], joined["lastSeq"]) == ("alice", 3)
    assert _send(alice, room_id, 1) == [4]
    alice.close()


def _server_on(
    store: RoomStore, wall_ms: Callable[[], int]
) -> AbstractAsyncContextManager[Harness]:
    """Run one in-process server over `store`, with its wall clock on trio's clock."""
    return running_server(store=store, wall_ms=wall_ms, stop=True)


def _mock_wall() -> Callable[[], int]:
    """Return a wall clock (Unix ms) that advances with trio's (mock) clock."""
    base = time.time_ns() // 1_000_000 - int(trio.current_time() * 1000)
    return lambda: base + int(trio.current_time() * 1000)


async def _room_left_empty(store: RoomStore, wall: Callable[[], int]) -> str:
    async with _server_on(store, wall) as h:
        (room_id, (alice,)) = await h.open_room("alice")
        await alice.request({"type": "leaveChatroom", "roomId": room_id})
    return room_id


async def test_room_whose_ttl_ran_out_while_down_is_gone_at_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A room empty since before the stop, whose 24 h passed while down, is deleted at start."""
    with trio.fail_after(3 * DAY):  # virtual time: the test sleeps through days
        store = MemoryRoomStore()
        wall = _mock_wall()
        room_id = await _room_left_empty(store, wall)
        assert room_id in store.records
        await trio.sleep(DAY + 1)  # roomd is down for a day
        async with _server_on(store, wall) as h:
            assert room_id not in h.registry
            assert room_id not in store.records
            client = await h.login("bob", ttl=10 * DAY)
            reply = await client.request({"type": "joinChatroom", "roomId": room_id})
            assert reply["code"] == "notFound"


async def _crashed_with_a_member() -> tuple[MemoryRoomStore, Callable[[], int], str, int]:
    """Run roomd with alice in a room for an hour, then cancel it (a crash, not a stop).

    Returns the store, the wall clock, the room id and roomd's last alive mark,
    at most a minute before the crash.
    """
    store, wall = MemoryRoomStore(), _mock_wall()
    async with running_server(store=store, wall_ms=wall) as h:
        room_id, (alice,) = await h.open_room("alice", ttl=DAY)
        assert await alice.listen(3600) == []  # answering pings
    assert store.records[room_id].empty_since is None  # it had a member when roomd died
    assert store.alive_ms is not None and wall() - store.alive_ms <= 60_000
    return store, wall, room_id, store.alive_ms


async def test_a_room_with_members_at_a_crash_expires_from_when_roomd_was_last_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """roomd dead for longer than the ttl: the room that had members is deleted at start."""
    with trio.fail_after(3 * DAY):
        store, wall, room_id, _ = await _crashed_with_a_member()
        await trio.sleep(DAY)  # down for the whole ttl
        async with _server_on(store, wall) as h:
            assert room_id not in h.registry
            assert room_id not in store.records


async def test_a_room_with_members_at_a_crash_counts_down_from_the_last_alive_mark(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Down for less than the ttl: the room is back and expires ttl after the last mark."""
    with trio.fail_after(3 * DAY):
        store, wall, room_id, died_ms = await _crashed_with_a_member()
        await trio.sleep(DAY / 2)
        async with _server_on(store, wall) as h:
            assert room_id in h.registry
            assert store.records[room_id].empty_since == died_ms
            await trio.sleep(DAY / 2 - 120)
            assert room_id in h.registry
            await trio.sleep(120)
            assert room_id not in h.registry


async def test_room_with_ttl_left_resumes_its_countdown_after_a_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A room down for less than its ttl is back, then expires when the rest runs out."""
    with trio.fail_after(3 * DAY):  # virtual time: the test sleeps through days
        store = MemoryRoomStore()
        wall = _mock_wall()
        room_id = await _room_left_empty(store, wall)
        await trio.sleep(DAY - 1000)  # down for most of the room's ttl
        async with _server_on(store, wall) as h:
            assert room_id in h.registry
            await trio.sleep(900)
            assert room_id in h.registry
            await trio.sleep(200)
            assert room_id not in h.registry
            assert room_id not in store.records


# A data dir's rooms.sqlite3 as roomd 1.0 (commit bdfaa82) wrote it: alice's room
# R10_KEYED (key "key-one", 3 messages) and her empty room R10_PLAIN, stopped cleanly.
ROOMS_1_0 = Path(__file__).parent / "data" / "rooms-1.0.sqlite3"
R10_KEYED = "8abDyeBPhWWicimidrrhbw"
R10_PLAIN = "NSsHEglp_5KIgLuFPkKr6g"


@pytest.mark.e2e
def test_a_data_dir_written_by_roomd_1_0_opens_and_migrates_in_place(
    start_roomd: Start, tmp_path: Path
) -> None:
    """roomd 1.0's rooms come back with key, host and seq, gain an epoch, and keep it after."""
    shutil.copy(ROOMS_1_0, tmp_path / "rooms.sqlite3")
    first = start_roomd(data_dir=tmp_path)
    alice, joined = _join(first, "alice", R10_KEYED)
    assert (joined["host"], joined["lastSeq"], joined["keyEpoch"]) == ("alice", 3, 0)
    assert joined["encryptedRoomKey"] == b64(b"key-one")
    epoch = joined["epoch"]
    assert isinstance(epoch, str) and len(epoch) >= 8
    assert _send(alice, R10_KEYED, 1) == [4]
    alice.close()
    assert first.stop() == 0
    with contextlib.closing(sqlite3.connect(tmp_path / "rooms.sqlite3")) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    second = start_roomd(data_dir=tmp_path)
    alice, joined = _join(second, "alice", R10_KEYED)
    assert (joined["epoch"], joined["lastSeq"]) == (epoch, 4)
    _, plain = _join(second, "bob", R10_PLAIN)
    assert plain["lastSeq"] == 0
    alice.close()


@pytest.mark.e2e
def test_a_data_dir_from_a_newer_roomd_is_refused_and_left_alone(tmp_path: Path) -> None:
    """A rooms.sqlite3 with a schema newer than this roomd knows: exit with a clear message."""
    shutil.copy(ROOMS_1_0, tmp_path / "rooms.sqlite3")
    with contextlib.closing(sqlite3.connect(tmp_path / "rooms.sqlite3")) as db:
        db.execute("PRAGMA user_version = 7")
    before = (tmp_path / "rooms.sqlite3").read_bytes()
    with pytest.raises(AssertionError) as refused:
        RoomdProcess.start(tmp_path)
    assert "schema version 7, newer than this roomd knows (1)" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    assert (tmp_path / "rooms.sqlite3").read_bytes() == before
