"""The store writer: what every room changed in one scheduler turn, as one transaction.

A room that changed its record, deleted itself or produced messages hands them
to `StoreWriter.submit`, with what to do once they are durable (carry out the
effects: send the events); it does not wait. The writer task takes everything
submitted so far as one `Batch`, commits it (one SQLite transaction), then
calls each batch's callbacks in the order they were submitted. So a message
is in history before any member receives it, a room pays no task switch to
make it durable, and while one batch commits the next one gathers. A room that
must read the store next (recovery, paging) or is about to go dormant waits
for its submission with `durable`.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from roomd.core.history import StoredMessage
from roomd.core.room import RoomRecord
from roomd.store import Batch, RoomStore


@attrs.define(eq=False)
class Submission:
    """One batch being gathered or committed: what was submitted, and its callbacks."""

    batch: Batch
    # Called, in order, once the batch is committed.
    then: list[Callable[[], None]] = attrs.field(factory=list)
    done: trio.Event = attrs.field(factory=trio.Event)

    async def durable(self) -> None:
        """Return once this batch is committed and its callbacks have run."""
        await self.done.wait()


@attrs.define(eq=False)
class StoreWriter:
    """Gathers room changes into batches and commits each as one transaction."""

    store: RoomStore
    # History kept per room: each batch trims to it.
    keep: int
    _gathering: Submission | None = None
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def submit(
        self,
        then: Callable[[], None],
        *,
        save: RoomRecord | None = None,
        delete: str | None = None,
        messages: list[StoredMessage] | None = None,
    ) -> Submission:
        """Make `save`, `delete` and `messages` durable with the next batch, then call `then`.

        Never blocks. Callbacks run in the order they were submitted. A failed
        commit raises out of `run`: nothing of it is carried out.
        """
        gathering = self._gathering
        if gathering is None:
            gathering = self._gathering = Submission(Batch(self.keep))
            self._wake.set()
        batch = gathering.batch
        if save is not None:
            batch.saves[save.room_id] = save
        if delete is not None:
            batch.saves.pop(delete, None)
            batch.deletes.add(delete)
        if messages:
            batch.messages.extend(messages)
        gathering.then.append(then)
        return gathering

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit each gathered batch, in order, until cancelled (and the last one is done)."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            submission, self._gathering = self._gathering, None
            if submission is None:
                continue
            with trio.CancelScope(shield=True):
                await self.store.commit(submission.batch)
            for then in submission.then:
                then()
            submission.done.set()
            # While the store tidies up, the next batch gathers.
            await self.store.tidy()
