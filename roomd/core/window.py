"""A sliding-window limit: at most `limit` events per key in any `window` seconds.

The browser demo's token route (`POST /demo/token`, docs/demo.md) takes one
event per client IP and refuses the one past the limit, with the seconds until
the oldest counted event leaves the window (its `Retry-After`). Unlike the
connection's leaky bucket (bucket.py), which lets a steady sender through at its
drain rate, no window of `window` seconds ever holds more than `limit` events.

State is bounded: a key holds at most `limit` times, and at most `max_keys` keys
are kept, in the order they were last offered. Past `max_keys` the least
recently offered key is forgotten (its last event is the oldest of all, so it is
the likeliest to have left the window already); a forgotten key starts afresh,
which only someone offering from more than `max_keys` keys within one window
can bring about.
"""

from __future__ import annotations

from collections import deque

import attrs


@attrs.define
class SlidingWindow:
    """At most `limit` events per key in any `window` seconds, for at most `max_keys` keys."""

    limit: int
    window: float
    max_keys: int = 4096
    # key -> the times of its events still in the window, oldest first; dict order
    # is the order keys were last offered, least recent first.
    _times: dict[str, deque[float]] = attrs.field(factory=dict, init=False)

    def take(self, key: str, now: float) -> float | None:
        """Count one event of `key` at `now` (seconds) if its window has room.

        Returns None when the event is counted: the shell goes ahead. Otherwise
        nothing is counted and the result is the seconds until the window has
        room again: the shell refuses (429) and says to retry after that long.
        """
        times = self._times.pop(key, None)
        if times is None:
            times = deque(maxlen=self.limit)
        while times and times[0] <= now - self.window:
            times.popleft()
        self._times[key] = times  # now the most recently offered key
        if len(times) >= self.limit:
            return max(0.0, times[0] + self.window - now)
        times.append(now)
        while len(self._times) > self.max_keys:
            del self._times[next(iter(self._times))]
        return None

    def __len__(self) -> int:
        """Return how many keys are kept."""
        return len(self._times)
