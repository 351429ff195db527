"""A room store in a dict: fast, in-process, forgotten at exit.

History is a ring per room (a deque of at most `keep` messages), so it costs
memory: at most `history_size` messages per room.
"""

from __future__ import annotations

import heapq
from collections import deque

import attrs
import trio

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord
from roomd.store import LOAD_PAGE, Batch


@attrs.define
class MemoryRoomStore:
    """A store in a dict: fast, in-process, forgotten at exit."""

    records: dict[str, RoomRecord] = attrs.field(factory=dict)
    histories: dict[str, deque[StoredMessage]] = attrs.field(factory=dict)
    alive_ms: int | None = None

    async def load(self, after: str = "", limit: int = LOAD_PAGE) -> list[RoomRecord]:
        """Return up to `limit` stored rooms whose ids sort after `after`, in id order."""
        await trio.lowlevel.checkpoint()
        ids = heapq.nsmallest(limit, (room_id for room_id in self.records if room_id > after))
        return [self._read(self.records[room_id]) for room_id in ids]

    async def get(self, room_id: str) -> RoomRecord | None:
        """Return the stored room `room_id`, or None when there is none."""
        await trio.lowlevel.checkpoint()
        record = self.records.get(room_id)
        return None if record is None else self._read(record)

    def _read(self, record: RoomRecord) -> RoomRecord:
        # As in SQLite: the newest stored message's seq counts (the record lags it).
        ring = self.histories.get(record.room_id)
        if ring and ring[-1].seq > record.seq_reserved:
            return attrs.evolve(record, seq_reserved=ring[-1].seq)
        return record

    async def insert(self, record: RoomRecord) -> bool:
        """Store a new room; return False (storing nothing) when its id exists."""
        await trio.lowlevel.checkpoint()
        if record.room_id in self.records:
            return False
        self.records[record.room_id] = record
        return True

    async def save(self, record: RoomRecord) -> None:
        """Overwrite the stored fields of a room; durable on return."""
        await trio.lowlevel.checkpoint()
        self.records[record.room_id] = record

    async def delete(self, room_id: str) -> None:
        """Forget a room (no error when it is unknown)."""
        await trio.lowlevel.checkpoint()
        self.records.pop(room_id, None)
        self.histories.pop(room_id, None)

    async def commit(self, batch: Batch) -> None:
        """Write `batch` (at once: nothing else runs in between)."""
        await trio.lowlevel.checkpoint()
        self.records.update(batch.saves)
        for room_id in batch.deletes:
            self.records.pop(room_id, None)
            self.histories.pop(room_id, None)
        for message in batch.messages:
            ring = self.histories.get(message.room_id)
            if ring is None or ring.maxlen != batch.keep:
                ring = self.histories[message.room_id] = deque(ring or (), maxlen=batch.keep)
            ring.append(message)

    async def messages_after(
        self, room_id: str, after: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the oldest `limit` messages of `room_id` with `seq > after`, oldest first."""
        await trio.lowlevel.checkpoint()
        ring = self.histories.get(room_id, ())
        return [m for m in ring if m.seq > after and m.ts >= oldest_ts][:limit]

    async def messages_before(
        self, room_id: str, before: int, limit: int, oldest_ts: int
    ) -> list[StoredMessage]:
        """Return the newest `limit` messages of `room_id` with `seq < before`, oldest first."""
        await trio.lowlevel.checkpoint()
        ring = self.histories.get(room_id, ())
        kept = [m for m in ring if m.seq < before and m.ts >= oldest_ts]
        return kept[-limit:]

    async def sweep_history(self, oldest_ts: int) -> int:
        """Forget every message with `ts < oldest_ts`; return how many went."""
        await trio.lowlevel.checkpoint()
        swept = 0
        for room_id, ring in self.histories.items():
            record = self.records.get(room_id)
            if record is not None and ring and ring[0].ts < oldest_ts:
                self.records[room_id] = self._read(record)
            while ring and ring[0].ts < oldest_ts:
                ring.popleft()
                swept += 1
        return swept

    async def tidy(self) -> None:
        """Nothing to tidy in memory."""
        await trio.lowlevel.checkpoint()

    async def mark_alive(self, now_ms: int) -> None:
        """Record that roomd was running at `now_ms`."""
        await trio.lowlevel.checkpoint()
        self.alive_ms = now_ms

    async def last_alive(self) -> int | None:
        """Return the last `mark_alive` time, or None."""
        await trio.lowlevel.checkpoint()
        return self.alive_ms

    async def aclose(self) -> None:
        """Release the store's resources."""
        await trio.lowlevel.checkpoint()
