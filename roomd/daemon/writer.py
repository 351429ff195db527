"""The store writer: what every room changed in one scheduler turn, as one transaction.

A room loop that changed its record, deleted itself or produced messages hands
them to `StoreWriter.write` and waits; the writer task takes everything queued
so far as one `Batch`, commits it (one worker-thread hop, one SQLite
transaction), then wakes every room of that batch, which only now carries out
its effects. So a message is in history before any member receives it, and a
room pays no thread hop per message: while one batch commits, the next one
gathers.
"""

from __future__ import annotations

import attrs
import trio

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord
from roomd.store import Batch, RoomStore


@attrs.define(eq=False)
class _Pending:
    batch: Batch
    done: trio.Event = attrs.field(factory=trio.Event)
    failed: BaseException | None = None


@attrs.define(eq=False)
class StoreWriter:
    """Gathers room changes into batches and commits each as one transaction."""

    store: RoomStore
    # History kept per room: each batch trims to it.
    keep: int
    _pending: _Pending | None = None
    _wake: trio.Event = attrs.field(factory=trio.Event)

    async def write(
        self,
        *,
        save: RoomRecord | None = None,
        delete: str | None = None,
        messages: list[StoredMessage] | None = None,
    ) -> None:
        """Return once `save`, `delete` and `messages` are durable (with whatever else came)."""
        pending = self._pending
        if pending is None:
            pending = self._pending = _Pending(Batch(self.keep))
            self._wake.set()
        batch = pending.batch
        if save is not None:
            batch.saves[save.room_id] = save
        if delete is not None:
            batch.saves.pop(delete, None)
            batch.deletes.add(delete)
        if messages:
            batch.messages.extend(messages)
        # Shielded: the caller's change is in the batch and will be committed.
        with trio.CancelScope(shield=True):
            await pending.done.wait()
        if pending.failed is not None:
            raise pending.failed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit each gathered batch, in order, until cancelled (and the last one is done)."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            pending, self._pending = self._pending, None
            if pending is None:
                continue
            try:
                with trio.CancelScope(shield=True):
                    await self.store.commit(pending.batch)
            except Exception as exc:  # every writer of the batch hears of it
                pending.failed = exc
            pending.done.set()
            # While the store tidies up, the next batch gathers.
            await self.store.tidy()
