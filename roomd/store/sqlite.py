"""A room store in one SQLite file of the data dir, off the trio loop.

Every call runs on a worker thread (one at a time), so the trio loop never
blocks on the disk. WAL with `synchronous=FULL`: a committed save survives the
process being killed, and power loss.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from roomd.core.room import RoomRecord
from roomd.store import LOAD_PAGE

T = TypeVar("T")

DB_FILE = "rooms.sqlite3"

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
# One row: when roomd last marked itself alive. Created when missing, so a data
# dir written before it existed opens as it is.
_ALIVE_SCHEMA = """
CREATE TABLE IF NOT EXISTS alive (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at_ms INTEGER NOT NULL
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
        self._db.execute(_ALIVE_SCHEMA)
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteRoomStore:
        """Return the store of a data dir (created when missing)."""
        return cls(data_dir / DB_FILE)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def load(self, after: str = "", limit: int = LOAD_PAGE) -> list[RoomRecord]:
        """Return up to `limit` stored rooms whose ids sort after `after`, in id order."""
        rows = await self._run(self._select_page, after, limit)
        return [RoomRecord(*row) for row in rows]

    def _select_page(self, after: str, limit: int) -> list[tuple[Any, ...]]:
        query = f"SELECT {_COLUMNS} FROM rooms WHERE room_id > ? ORDER BY room_id LIMIT ?"
        return self._db.execute(query, (after, limit)).fetchall()

    async def get(self, room_id: str) -> RoomRecord | None:
        """Return the stored room `room_id`, or None when there is none."""
        row = await self._run(self._select_one, room_id)
        return None if row is None else RoomRecord(*row)

    def _select_one(self, room_id: str) -> tuple[Any, ...] | None:
        query = f"SELECT {_COLUMNS} FROM rooms WHERE room_id = ?"
        row: tuple[Any, ...] | None = self._db.execute(query, (room_id,)).fetchone()
        return row

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        return await self._run(self._insert, record)

    def _insert(self, record: RoomRecord) -> bool:
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            attrs.astuple(record),
        )
        return cursor.rowcount == 1

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of a room; durable on return."""
        await self._run(self._save, record)

    def _save(self, record: RoomRecord) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            attrs.astuple(record),
        )

    async def delete(self, room_id: str) -> None:
        """Forget a room (no error when it is unknown)."""
        await self._run(self._delete, room_id)

    def _delete(self, room_id: str) -> None:
        self._db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))

    async def mark_alive(self, now_ms: int) -> None:
        """Record that roomd was running at `now_ms`; durable on return."""
        await self._run(self._mark_alive, now_ms)

    def _mark_alive(self, now_ms: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO alive (id, at_ms) VALUES (1, ?)", (now_ms,))

    async def last_alive(self) -> int | None:
        """Return the last `mark_alive` time, or None."""
        return await self._run(self._last_alive)

    def _last_alive(self) -> int | None:
        row = self._db.execute("SELECT at_ms FROM alive WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    async def aclose(self) -> None:
        """Release the store's resources."""
        await self._run(self._db.close)
