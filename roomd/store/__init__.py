"""The room store: what survives a restart, behind a seam a cluster can share.

A store keeps one `RoomRecord` (roomd.core.room) per room: id, host, encrypted
room key, creation time, since when it has been empty, `seq_reserved` (the
high-water mark of `seq`), epoch, key epoch and bans; and, with history on,
each room's newest messages. Rooms write through a `Batch` per scheduler turn
(daemon/writer.py), *before* anyone sees the change. With history on, each
message is stored with its `seq` and the record is not re-saved for it: a
store reads a room's `seq_reserved` as the higher of the record's and its
newest stored message's, and before a history sweep forgets messages it raises
the record to their newest `seq`. So `seq` is exact after a restart. With
history off the room reserves `seq` numbers in blocks (`SEQ_BLOCK`) and saves
only when a block runs out or a durable field changes. Either way, after a
crash, even `kill -9`, `seq` never repeats or goes back.

Implementations: `SqliteRoomStore` (sqlite.py, the default, a file in the data
dir) and `MemoryRoomStore` (memory.py, nothing survives; for tests of the trio
layer on the mock clock, where a thread would let the clock jump, and for
throwaway servers). A Redis store for a cluster implements the same protocol.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord

# How many rooms `load` returns at a time by default.
LOAD_PAGE = 1000


@attrs.define
class Batch:
    """What the rooms changed in one scheduler turn, written as one transaction.

    `saves` (by room id, the latest record wins), then `deletes` (each with its
    history), then `messages` appended to history, each room's history trimmed
    to its newest `keep` messages.
    """

    keep: int
    saves: dict[str, RoomRecord] = attrs.field(factory=dict)
    deletes: set[str] = attrs.field(factory=set)
    messages: list[StoredMessage] = attrs.field(factory=list)

    def __bool__(self) -> bool:
        return bool(self.saves or self.deletes or self.messages)


class RoomStore(Protocol):
    """Where rooms outlive the process."""

    async def load(self, after: str = "", limit: int = LOAD_PAGE) -> list[RoomRecord]:
        """Return up to `limit` stored rooms whose ids sort after `after`, in id order.

        Read page by page, so a start with many rooms never holds them all at once.
        """
        ...

    async def get(self, room_id: str) -> RoomRecord | None:
        """Return the stored room `room_id`, or None when there is none."""
        ...

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        ...

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of an existing room; durable on return."""
        ...

    async def delete(self, room_id: str) -> None:
        """Forget a room and its history (no error when it is unknown)."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Write `batch` atomically; durable on return (a process crash cannot undo it)."""
        ...

    async def messages_after(
        self, room_id: str, after: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the oldest `limit` messages of `room_id` with `seq > after`, oldest first.

        Messages with `ts < oldest_ts` have aged out and are never returned.
        """
        ...

    async def messages_before(
        self, room_id: str, before: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the newest `limit` messages of `room_id` with `seq < before`, oldest first."""
        ...

    async def sweep_history(self, oldest_ts: int) -> int:
        """Forget every message with `ts < oldest_ts`; return how many went."""
        ...

    async def tidy(self) -> None:
        """Do the store's upkeep (SQLite: a WAL checkpoint now and then) between batches."""
        ...

    async def mark_alive(self, now_ms: int) -> None:
        """Record that roomd was running at `now_ms` (durable on return)."""
        ...

    async def last_alive(self) -> int | None:
        """Return the last `mark_alive` time, or None when none was ever recorded."""
        ...

    async def aclose(self) -> None:
        """Release the store's resources."""
        ...
