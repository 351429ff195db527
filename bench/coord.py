"""Coordination between generator workers: named values and barriers.

With one worker (the default) everything is local and immediate. With several,
each worker is a process that runs its shard of the scenario; they share a
`multiprocessing` manager dict (room ids, start times) and a barrier, used from
trio through a worker thread so the event loops keep running.
"""

from __future__ import annotations

import multiprocessing.managers
import multiprocessing.synchronize
import threading
from typing import Any

import trio

_POLL = 0.01
_GET_TIMEOUT = 120.0
_SYNC_TIMEOUT = 600.0


class Coordinator:
    """Shared values and barriers for the `count` workers of one scenario."""

    def __init__(
        self,
        shard: int = 0,
        count: int = 1,
        values: multiprocessing.managers.DictProxy[str, Any] | None = None,
        barrier: multiprocessing.synchronize.Barrier | threading.Barrier | None = None,
    ) -> None:
        self.shard = shard
        self.count = count
        self._values: Any = values if values is not None else {}
        self._barrier = barrier

    @property
    def leader(self) -> bool:
        """Whether this worker owns the shared parts (the fanout sender, server readings)."""
        return self.shard == 0

    def put(self, key: str, value: Any) -> None:
        """Publish `value` under `key` to every worker."""
        self._values[key] = value

    async def get(self, key: str) -> Any:
        """Return the value published under `key`, waiting (at most 120 s) for it."""
        # Another process publishes it: a trio.Event cannot cross, so poll.
        with trio.fail_after(_GET_TIMEOUT):
            while key not in self._values:  # noqa: ASYNC110
                await trio.sleep(_POLL)
        return self._values[key]

    async def sync(self) -> None:
        """Wait until every worker reaches this point (at most 600 s)."""
        if self._barrier is None or self.count == 1:
            await trio.lowlevel.checkpoint()
            return
        barrier = self._barrier
        await trio.to_thread.run_sync(lambda: barrier.wait(_SYNC_TIMEOUT), abandon_on_cancel=True)
