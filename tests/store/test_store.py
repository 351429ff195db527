"""Both room stores keep what SERVER_API.md's durability section promises."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from roomd.core.room import RoomRecord
from roomd.store import RoomStore
from roomd.store.memory import MemoryRoomStore
from roomd.store.sqlite import SqliteRoomStore

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
