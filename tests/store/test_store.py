"""Both room stores keep what SERVER_API.md's durability section promises."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import attrs
import pytest
import trio

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord
from roomd.errors import ConfigError
from roomd.store import Batch, RoomStore
from roomd.store.memory import MemoryRoomStore
from roomd.store.sqlite import SqliteRoomStore
from roomd.store.sqlite_schema import SCHEMA_VERSION

RECORD = RoomRecord(
    room_id="r1",
    host="alice",
    encrypted_room_key=b"\x00key\xff",
    created_at=1_700_000_000_000,
    empty_since=None,
    seq_reserved=1000,
)


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path):
    """Each store implementation, fresh."""
    if request.param == "memory":
        instance: RoomStore = MemoryRoomStore()
    else:
        instance = SqliteRoomStore.in_data_dir(tmp_path)
    yield instance
    await instance.aclose()


async def test_insert_then_load_returns_the_record(store: RoomStore) -> None:
    """A stored room comes back with every field, the key bytes included."""
    with trio.fail_after(10):
        assert await store.insert(RECORD)
        assert await store.load() == [RECORD]


async def test_insert_of_an_existing_id_is_refused(store: RoomStore) -> None:
    """A second room with the same id is not stored and the first is untouched."""
    with trio.fail_after(10):
        assert await store.insert(RECORD)
        other = RoomRecord("r1", "bob", None, 1, 2, 3)
        assert not await store.insert(other)
        assert await store.load() == [RECORD]


async def test_get_returns_one_room_or_none(store: RoomStore) -> None:
    """A room is read back by its id alone; an unknown or deleted id reads None."""
    with trio.fail_after(10):
        other = RoomRecord("r2", None, None, 7, 7, 0)
        await store.insert(RECORD)
        await store.insert(other)
        assert await store.get("r1") == RECORD
        assert await store.get("r2") == other
        assert await store.get("r3") is None
        await store.delete("r1")
        assert await store.get("r1") is None


async def test_load_pages_through_every_room_in_id_order(store: RoomStore) -> None:
    """Pages of `limit` rooms after a given id cover every room once, in id order."""
    with trio.fail_after(10):
        ids = [f"r{n:02}" for n in range(25)]
        for room_id in reversed(ids):
            await store.insert(RoomRecord(room_id, None, None, 1, 1, 0))
        pages = []
        after = ""
        while page := await store.load(after=after, limit=10):
            pages.append([record.room_id for record in page])
            after = page[-1].room_id
        assert pages == [ids[:10], ids[10:20], ids[20:]]
        assert [record.room_id for record in await store.load(after="r07", limit=2)] == [
            "r08",
            "r09",
        ]


async def test_save_overwrites_and_delete_forgets(store: RoomStore) -> None:
    """Saving replaces the durable fields; deleting removes the room (twice is fine)."""
    with trio.fail_after(10):
        await store.insert(RECORD)
        changed = RoomRecord("r1", "bob", None, RECORD.created_at, 5, 2000)
        await store.save(changed)
        assert await store.load() == [changed]
        await store.delete("r1")
        await store.delete("r1")
        assert await store.load() == []


async def test_sqlite_store_survives_reopening(tmp_path: Path) -> None:
    """What one SqliteRoomStore wrote, a new one on the same data dir reads."""
    with trio.fail_after(10):
        first = SqliteRoomStore.in_data_dir(tmp_path)
        await first.insert(RECORD)
        await first.aclose()
        second = SqliteRoomStore.in_data_dir(tmp_path)
        assert await second.load() == [RECORD]
        await second.aclose()


async def test_the_alive_mark_keeps_its_latest_time(store: RoomStore) -> None:
    """No mark at first; then the last `mark_alive` time, overwritten by the next one."""
    with trio.fail_after(10):
        assert await store.last_alive() is None
        await store.mark_alive(1_000)
        await store.mark_alive(2_000)
        assert await store.last_alive() == 2_000


async def test_sqlite_alive_mark_survives_reopening_and_old_files_open(tmp_path: Path) -> None:
    """The mark is durable; a file made before the mark existed opens with no mark."""
    with trio.fail_after(10):
        first = SqliteRoomStore.in_data_dir(tmp_path)
        await first.insert(RECORD)
        await first.mark_alive(5_000)
        await first.aclose()
        again = SqliteRoomStore.in_data_dir(tmp_path)
        assert await again.last_alive() == 5_000
        await again.aclose()
        old = tmp_path / "old"
        old.mkdir()
        legacy = sqlite3.connect(old / "rooms.sqlite3")
        legacy.execute(
            "CREATE TABLE rooms (room_id TEXT PRIMARY KEY, host TEXT, encrypted_room_key BLOB,"
            " created_at INTEGER NOT NULL, empty_since INTEGER, seq_reserved INTEGER NOT NULL)"
        )
        legacy.execute("INSERT INTO rooms VALUES ('r1', 'alice', NULL, 1, NULL, 1000)")
        legacy.commit()
        legacy.close()
        opened = SqliteRoomStore.in_data_dir(old)
        assert await opened.last_alive() is None
        assert [record.room_id for record in await opened.load()] == ["r1"]
        await opened.aclose()


def stored(room_id: str, seq: int, ts: int = 1_000) -> StoredMessage:
    """Return message `seq` of `room_id`, sent at `ts`."""
    return StoredMessage(room_id, seq, f"px{seq:x}", "alice", b"ct%d" % seq, None, None, ts, None)


async def test_a_batch_saves_deletes_and_appends_in_one_go(store: RoomStore) -> None:
    """commit(batch) stores every saved record and message, and deletes rooms with their history."""
    with trio.fail_after(10):
        await store.insert(RECORD)
        await store.insert(RoomRecord("r2", None, None, 1, 1, 0))
        await store.commit(Batch(keep=10, messages=[stored("r2", 1), stored("r2", 2)]))
        changed = attrs.evolve(RECORD, seq_reserved=2, bans=frozenset({"eve"}), epoch="E1")
        batch = Batch(keep=10, saves={"r1": changed}, deletes={"r2"})
        batch.messages += [stored("r1", 1), stored("r1", 2)]
        await store.commit(batch)
        assert await store.load() == [changed]
        assert [m.seq for m in await store.messages_after("r1", 0, 10, 0)] == [1, 2]
        assert await store.messages_after("r2", 0, 10, 0) == []


async def test_history_is_trimmed_to_keep_and_read_in_both_directions(store: RoomStore) -> None:
    """Only the newest `keep` messages stay; reads are oldest first either way, within limits."""
    with trio.fail_after(10):
        await store.insert(RECORD)
        for first in (1, 6):
            await store.commit(
                Batch(keep=7, messages=[stored("r1", s) for s in range(first, first + 5)])
            )
        assert [m.seq for m in await store.messages_after("r1", 0, 100, 0)] == list(range(4, 11))
        assert [m.seq for m in await store.messages_after("r1", 5, 2, 0)] == [6, 7]
        assert [m.seq for m in await store.messages_before("r1", 9, 3, 0)] == [6, 7, 8]
        assert [m.seq for m in await store.messages_before("r1", 5, 3, 0)] == [4]
        assert (await store.messages_after("r1", 9, 1, 0)) == [stored("r1", 10)]


async def test_aged_messages_are_never_read_and_the_sweep_removes_them(store: RoomStore) -> None:
    """Messages older than oldest_ts are invisible to reads; sweep_history deletes them."""
    with trio.fail_after(10):
        await store.insert(RECORD)
        old = [stored("r1", 1, ts=100), stored("r1", 2, ts=200)]
        await store.commit(Batch(keep=10, messages=[*old, stored("r1", 3, ts=300)]))
        assert [m.seq for m in await store.messages_after("r1", 0, 10, 250)] == [3]
        assert [m.seq for m in await store.messages_before("r1", 4, 10, 150)] == [2, 3]
        assert await store.sweep_history(250) == 2
        assert [m.seq for m in await store.messages_after("r1", 0, 10, 0)] == [3]


async def test_a_room_reads_back_the_seq_of_its_newest_stored_message(store: RoomStore) -> None:
    """With history, seq_reserved reads as the newest stored message's seq when that is higher."""
    with trio.fail_after(10):
        lagging = RoomRecord("r0", "alice", None, 1, None, 0)
        await store.insert(lagging)
        await store.insert(RECORD)  # reserved 1000: above any message
        await store.commit(Batch(keep=2, messages=[stored("r0", s) for s in (1, 2, 3)]))
        await store.commit(Batch(keep=2, messages=[stored("r1", 4)]))
        assert await store.get("r0") == attrs.evolve(lagging, seq_reserved=3)
        assert await store.load() == [attrs.evolve(lagging, seq_reserved=3), RECORD]


async def test_the_history_sweep_keeps_the_seq_of_what_it_forgets(store: RoomStore) -> None:
    """Sweeping every message of a room leaves its seq_reserved at their newest seq."""
    with trio.fail_after(10):
        lagging = RoomRecord("r0", "alice", None, 1, None, 0)
        await store.insert(lagging)
        await store.commit(Batch(keep=10, messages=[stored("r0", s, ts=100) for s in (1, 2)]))
        assert await store.sweep_history(250) == 2
        assert await store.messages_after("r0", 0, 10, 0) == []
        assert await store.get("r0") == attrs.evolve(lagging, seq_reserved=2)


async def test_sqlite_keeps_a_swept_room_s_seq_across_reopening(tmp_path: Path) -> None:
    """The sweep's raise of seq_reserved is in the file, not only in what get returns."""
    with trio.fail_after(10):
        store = SqliteRoomStore.in_data_dir(tmp_path)
        await store.insert(RoomRecord("r0", "alice", None, 1, None, 0))
        await store.commit(Batch(keep=10, messages=[stored("r0", s, ts=100) for s in (1, 2, 3)]))
        await store.sweep_history(250)
        await store.aclose()
        reopened = SqliteRoomStore.in_data_dir(tmp_path)
        record = await reopened.get("r0")
        await reopened.aclose()
        assert record is not None and record.seq_reserved == 3


async def test_deleting_a_room_deletes_its_history(store: RoomStore) -> None:
    """A deleted room's messages are gone with it."""
    with trio.fail_after(10):
        await store.insert(RECORD)
        await store.commit(Batch(keep=10, messages=[stored("r1", 1)]))
        await store.delete("r1")
        assert await store.messages_before("r1", 10, 10, 0) == []
        assert await store.get("r1") is None


def test_a_newer_schema_is_refused_without_touching_the_file(tmp_path: Path) -> None:
    """A rooms.sqlite3 whose user_version is above what roomd knows raises ConfigError."""
    path = tmp_path / "rooms.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(ConfigError, match="newer than this roomd knows"):
        SqliteRoomStore(path)
    assert path.read_bytes() == before
