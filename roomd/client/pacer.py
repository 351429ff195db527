"""The client's own leaky bucket: it sends no faster than the server's limit admits.

roomd answers the first frame over its rate limit with `rateLimited` and drops
the next ones without a reply (PROTOCOL.md section 6), so a client that waits
for replies must not reach the limit at all. `Pacer` mirrors the server's
bucket from `hello.limits` with a margin and says how long to wait before each
frame; it takes `now`, so it is tested without a clock.
"""

from __future__ import annotations

import attrs

# Frames the pacer keeps in hand below the server's burst: pongs and the frames of
# a reconnect also cost the server's bucket.
BURST_MARGIN = 3.0


@attrs.define
class Pacer:
    """A leaky bucket of `burst` units draining at `rate` per second, as the server keeps."""

    rate: float
    burst: float
    level: float = 0.0
    last: float | None = None

    @classmethod
    def from_limits(cls, rate: float, burst: float) -> Pacer:
        """Return a pacer a little inside the server's `rate` and `burst`."""
        return cls(rate=rate * 0.95, burst=max(1.0, burst - BURST_MARGIN))

    def delay(self, now: float) -> float:
        """Return how many seconds to wait before the next frame; 0 means send now.

        After waiting, call `take(now)` with the time the frame goes out.
        """
        self._drain(now)
        excess = self.level + 1 - self.burst
        return 0.0 if excess <= 0 else excess / self.rate

    def take(self, now: float) -> None:
        """Count one frame sent at `now`."""
        self._drain(now)
        self.level += 1

    def hold(self, now: float, seconds: float) -> None:
        """Fill the bucket so that nothing goes out for `seconds` (a `retryAfter` honoured)."""
        self._drain(now)
        self.level = max(self.level, self.burst - 1 + seconds * self.rate)

    def _drain(self, now: float) -> None:
        if self.last is not None:
            self.level = max(0.0, self.level - (now - self.last) * self.rate)
        self.last = now
