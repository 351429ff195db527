"""The room store: what survives a restart, behind an interface a cluster can share.

A store keeps one `RoomRecord` per room: id, host, encrypted room key, creation
time, since when it has been empty, and `seq_reserved`, the high-water mark of
`seq`. The room loop never writes per message: it reserves `seq` numbers in
blocks (`SEQ_BLOCK`) and saves the record only when the block runs out or a
durable field (host, key, emptiness) changes, and it saves *before* it lets
anyone see the change. So after a crash, even `kill -9`, a room restarts at
`seq_reserved`, above every `seq` it ever sent: `seq` never repeats or goes back.

Two implementations: `SqliteRoomStore` (the default, a file in the data dir,
every call on a worker thread so the trio loop never blocks) and
`MemoryRoomStore` (nothing survives; for tests of the trio layer on the mock
clock, where a thread would let the clock jump, and for throwaway servers).
A Redis store for a cluster implements the same `RoomStore` protocol.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
import trio

T = TypeVar("T")

SEQ_BLOCK = 1000
DB_FILE = "rooms.sqlite3"


@attrs.frozen
class RoomRecord:
    """The durable fields of one room (times in Unix milliseconds)."""

    room_id: str
    host: str | None
    encrypted_room_key: bytes | None
    created_at: int
    empty_since: int | None
    seq_reserved: int


class RoomStore(Protocol):
    """Where rooms outlive the process."""

    async def load(self) -> list[RoomRecord]:
        """Return every stored room."""
        ...

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        ...

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of an existing room; durable on return."""
        ...

    async def delete(self, room_id: str) -> None:
        """Forget a room (no error when it is unknown)."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...


@attrs.define
class MemoryRoomStore:
    """A store in a dict: fast, in-process, forgotten at exit."""

    records: dict[str, RoomRecord] = attrs.field(factory=dict)

    async def load(self) -> list[RoomRecord]:
        await trio.lowlevel.checkpoint()
        return list(self.records.values())

    async def insert(self, record: RoomRecord) -> bool:
        await trio.lowlevel.checkpoint()
        if record.room_id in self.records:
            return False
        self.records[record.room_id] = record
        return True

    async def save(self, record: RoomRecord) -> None:
        await trio.lowlevel.checkpoint()
        self.records[record.room_id] = record

    async def delete(self, room_id: str) -> None:
        await trio.lowlevel.checkpoint()
        self.records.pop(room_id, None)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
    room_id TEXT PRIMARY KEY,
    host TEXT,
    encrypted_room_key BLOB,
    created_at INTEGER NOT NULL,
    empty_since INTEGER,
    seq_reserved INTEGER NOT NULL
)
"""
_COLUMNS = "room_id, host, encrypted_room_key, created_at, empty_since, seq_reserved"


class SqliteRoomStore:
    """A store in one SQLite file; each call runs on a worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # WAL + FULL: a committed write survives the process being killed, and power loss.
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteRoomStore:
        """Return the store of a data dir (created when missing)."""
        return cls(data_dir / DB_FILE)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def load(self) -> list[RoomRecord]:
        rows = await self._run(self._select_all)
        return [RoomRecord(*row) for row in rows]

    def _select_all(self) -> list[tuple[Any, ...]]:
        return self._db.execute(f"SELECT {_COLUMNS} FROM rooms").fetchall()

    async def insert(self, record: RoomRecord) -> bool:
        return await self._run(self._insert, record)

    def _insert(self, record: RoomRecord) -> bool:
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            attrs.astuple(record),
        )
        return cursor.rowcount == 1

    async def save(self, record: RoomRecord) -> None:
        await self._run(self._save, record)

    def _save(self, record: RoomRecord) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            attrs.astuple(record),
        )

    async def delete(self, room_id: str) -> None:
        await self._run(self._delete, room_id)

    def _delete(self, room_id: str) -> None:
        self._db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))

    async def aclose(self) -> None:
        await self._run(self._db.close)
