"""A room store in one SQLite file of the data dir.

Two connections. Writes run on the trio thread itself, on the writer
connection: each is a few short appends to the WAL file, which land in the
kernel's page cache (no fsync, see below), and a thread hop would cost more
than the write (measured: 0.2 us per delivery of a 500-member fan-out, and
1.4 ms of p99 latency, README Performance). What can take long runs on a worker
thread, one call at a time, on the reader connection: reads (WAL readers
never wait for the writer) and the WAL checkpoint, which copies the WAL into
the database file and fsyncs it; automatic checkpoints are off so that no
write on the trio thread ever does that work. The schema and its migrations
are in sqlite_schema.py.

Durability: WAL with `synchronous=NORMAL`. A commit is in the WAL file (written,
not yet fsynced) when it returns, so it survives the process dying at any point,
`kill -9` included: the kernel keeps the written pages and the next open
replays the WAL. Only an OS crash or power loss can drop the last commits
before a checkpoint; `FULL` would fsync every commit (one per scheduler turn
that stored a message) for that case alone.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord
from roomd.store import LOAD_PAGE, Batch
from roomd.store.sqlite_schema import check_version, migrate

T = TypeVar("T")

DB_FILE = "rooms.sqlite3"

_COLUMNS = (
    "room_id, host, encrypted_room_key, created_at, empty_since, seq_reserved,"
    " epoch, key_epoch, bans"
)
# A room's `seq_reserved` as read: with history on, the record is not re-saved per
# message, so the newest stored message may be above it (its seq is durable too).
_SELECT_ROOMS = (
    "SELECT room_id, host, encrypted_room_key, created_at, empty_since,"
    " max(seq_reserved, coalesce("
    "(SELECT max(seq) FROM messages WHERE messages.room_id = rooms.room_id), 0)),"
    " epoch, key_epoch, bans FROM rooms"
)
_MESSAGE_COLUMNS = "room_id, seq, message_id, sender, ciphertext, iv, client_msg_id, ts, key_epoch"
# Rows a history sweep deletes per transaction.
SWEEP_CHUNK = 500
# Commits between two WAL checkpoints (each a few pages of WAL).
CHECKPOINT_EVERY = 200
_UPSERT = f"INSERT OR REPLACE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _row(record: RoomRecord) -> tuple[Any, ...]:
    return (
        record.room_id,
        record.host,
        record.encrypted_room_key,
        record.created_at,
        record.empty_since,
        record.seq_reserved,
        record.epoch,
        record.key_epoch,
        json.dumps(sorted(record.bans)),
    )


def _record(row: tuple[Any, ...]) -> RoomRecord:
    room_id, host, key, created_at, empty_since, seq_reserved, epoch, key_epoch, bans = row
    return RoomRecord(
        room_id,
        host,
        key,
        created_at,
        empty_since,
        seq_reserved,
        epoch,
        key_epoch,
        frozenset(json.loads(bans)),
    )


class SqliteRoomStore:
    """A store in one SQLite file; each call runs on a worker thread, one at a time."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The writer: used on the trio thread only.
        self._db = sqlite3.connect(path, isolation_level=None)
        try:
            check_version(self._db, path.name)  # before WAL: a refused file stays as it was
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            migrate(self._db, path.name)
        except BaseException:
            self._db.close()
            raise
        # The reader (and checkpointer): used on the worker thread only.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._limiter = trio.CapacityLimiter(1)
        self._commits_since_checkpoint = 0

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> SqliteRoomStore:
        """Return the store of a data dir (created when missing)."""
        return cls(data_dir / DB_FILE)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def load(self, after: str = "", limit: int = LOAD_PAGE) -> list[RoomRecord]:
        """Return up to `limit` stored rooms whose ids sort after `after`, in id order."""
        rows = await self._run(self._select_page, after, limit)
        return [_record(row) for row in rows]

    def _select_page(self, after: str, limit: int) -> list[tuple[Any, ...]]:
        query = f"{_SELECT_ROOMS} WHERE room_id > ? ORDER BY room_id LIMIT ?"
        return self._reader.execute(query, (after, limit)).fetchall()

    async def get(self, room_id: str) -> RoomRecord | None:
        """Return the stored room `room_id`, or None when there is none."""
        row = await self._run(self._select_one, room_id)
        return None if row is None else _record(row)

    def _select_one(self, room_id: str) -> tuple[Any, ...] | None:
        query = f"{_SELECT_ROOMS} WHERE room_id = ?"
        row: tuple[Any, ...] | None = self._reader.execute(query, (room_id,)).fetchone()
        return row

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        await trio.lowlevel.checkpoint()
        return self._insert(record)

    def _insert(self, record: RoomRecord) -> bool:
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO rooms ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _row(record),
        )
        return cursor.rowcount == 1

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of a room; durable on return."""
        await trio.lowlevel.checkpoint()
        self._save(record)

    def _save(self, record: RoomRecord) -> None:
        self._db.execute(_UPSERT, _row(record))

    async def delete(self, room_id: str) -> None:
        """Forget a room (no error when it is unknown)."""
        await trio.lowlevel.checkpoint()
        self._delete(room_id)

    def _delete(self, room_id: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            self._db.execute("DELETE FROM messages WHERE room_id = ?", (room_id,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def commit(self, batch: Batch) -> None:
        """Write `batch` as one transaction; durable against a process crash on return."""
        await trio.lowlevel.checkpoint()
        self._commit(batch)

    def _commit(self, batch: Batch) -> None:
        db = self._db
        with self._transaction():
            db.executemany(_UPSERT, [_row(record) for record in batch.saves.values()])
            deleted = [(room_id,) for room_id in batch.deletes]
            db.executemany("DELETE FROM rooms WHERE room_id = ?", deleted)
            db.executemany("DELETE FROM messages WHERE room_id = ?", deleted)
            if not batch.messages:
                return
            db.executemany(
                f"INSERT OR REPLACE INTO messages ({_MESSAGE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [attrs.astuple(message) for message in batch.messages],
            )
            newest: dict[str, int] = {}
            for message in batch.messages:
                newest[message.room_id] = max(message.seq, newest.get(message.room_id, 0))
            db.executemany(
                "DELETE FROM messages WHERE room_id = ? AND seq <= ?",
                [(room_id, seq - batch.keep) for room_id, seq in newest.items()],
            )

    async def messages_after(
        self, room_id: str, after: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the oldest `limit` messages of `room_id` with `seq > after`, oldest first."""
        query = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room_id = ? AND seq > ?"
            " AND ts >= ? ORDER BY seq LIMIT ?"
        )
        rows = await self._run(self._select, query, (room_id, after, oldest_ts, limit))
        return [StoredMessage(*row) for row in rows]

    async def messages_before(
        self, room_id: str, before: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the newest `limit` messages of `room_id` with `seq < before`, oldest first."""
        query = (
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room_id = ? AND seq < ?"
            " AND ts >= ? ORDER BY seq DESC LIMIT ?"
        )
        rows = await self._run(self._select, query, (room_id, before, oldest_ts, limit))
        return [StoredMessage(*row) for row in reversed(rows)]

    def _select(self, query: str, parameters: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._reader.execute(query, parameters).fetchall()

    async def sweep_history(self, oldest_ts: int) -> int:
        """Forget every message with `ts < oldest_ts`; return how many went.

        In small transactions, yielding between them: the trio thread is never
        held for long.
        """
        await trio.lowlevel.checkpoint()
        self._keep_seq_of_swept(oldest_ts)
        swept = 0
        while True:
            await trio.lowlevel.checkpoint()
            deleted = self._sweep(oldest_ts)
            swept += deleted
            if deleted < SWEEP_CHUNK:
                return swept

    def _keep_seq_of_swept(self, oldest_ts: int) -> None:
        # A room's newest message may carry the only durable copy of its seq: raise the
        # record to it before the message goes, so a restart never numbers it again.
        self._db.execute(
            "UPDATE rooms SET seq_reserved ="
            " (SELECT max(seq) FROM messages WHERE messages.room_id = rooms.room_id)"
            " WHERE room_id IN (SELECT DISTINCT room_id FROM messages WHERE ts < ?)"
            " AND seq_reserved <"
            " (SELECT max(seq) FROM messages WHERE messages.room_id = rooms.room_id)",
            (oldest_ts,),
        )

    def _sweep(self, oldest_ts: int) -> int:
        query = (
            "DELETE FROM messages WHERE (room_id, seq) IN"
            " (SELECT room_id, seq FROM messages WHERE ts < ? LIMIT ?)"
        )
        return int(self._db.execute(query, (oldest_ts, SWEEP_CHUNK)).rowcount)

    async def tidy(self) -> None:
        """Checkpoint the WAL into the database file now and then, on the worker thread."""
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= CHECKPOINT_EVERY:
            self._commits_since_checkpoint = 0
            await self._run(self._checkpoint)

    def _checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for, or blocking, the writer.
        self._reader.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def mark_alive(self, now_ms: int) -> None:
        """Record that roomd was running at `now_ms`; durable on return."""
        await trio.lowlevel.checkpoint()
        self._mark_alive(now_ms)

    def _mark_alive(self, now_ms: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO alive (id, at_ms) VALUES (1, ?)", (now_ms,))

    async def last_alive(self) -> int | None:
        """Return the last `mark_alive` time, or None."""
        return await self._run(self._last_alive)

    def _last_alive(self) -> int | None:
        row = self._reader.execute("SELECT at_ms FROM alive WHERE id = 1").fetchone()
        return None if row is None else int(row[0])

    async def aclose(self) -> None:
        """Release the store's resources (the last close checkpoints the WAL)."""
        await self._run(self._reader.close)
        self._db.close()
