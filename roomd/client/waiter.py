"""The pieces of a request's life: its waiter, and the delays between reconnects."""

from __future__ import annotations

import random
from collections.abc import Callable

import anyio
import attrs

from roomd.client.events import Event

Match = Callable[[Event], bool]


@attrs.define
class Backoff:
    """Reconnect delays: `first`, doubling up to `longest`, each with up to 50% jitter."""

    first: float = 0.1
    longest: float = 5.0

    def delay(self, attempt: int) -> float:
        """Return how long to wait before reconnect attempt `attempt` (1, 2, ...)."""
        base = min(self.longest, self.first * 2 ** (attempt - 1))
        return float(base * (0.5 + random.random() / 2))


@attrs.define(eq=False)
class Waiter:
    """One request awaiting its direct reply, the event that shows it done, or an error."""

    match: Match | None
    public_key: bytes | None = None
    done: anyio.Event = attrs.field(factory=anyio.Event)
    result: Event | BaseException | None = None

    def rearm(self) -> None:
        self.done = anyio.Event()
        self.result = None

    def resolve(self, result: Event | BaseException) -> None:
        if not self.done.is_set():
            self.result = result
            self.done.set()
