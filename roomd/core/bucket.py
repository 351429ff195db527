"""The per-connection leaky bucket of PROTOCOL.md section 6 ("Rate").

The bucket holds up to `burst` units and drains at `rate` units per second. Every
client frame offers one unit. The shell calls `offer(now)` for each frame, before
decoding it, and acts on the verdict:

- `ACCEPT`: process the frame;
- `REJECT`: do not process it; answer `error rateLimited` with `retry_after`;
- `DROP`: do not process it and do not answer (a reject was already sent);
- `ABUSE`: the bucket has been kept full for `abuse_after` seconds: close 4004.

"Kept full" counts from the first refused frame until an accepted frame leaves room
for another one; frames accepted at the brim (the flooder's one per 1/rate s) do not
stop the count.
"""

from __future__ import annotations

import enum

import attrs

ABUSE_AFTER = 30.0


class Verdict(enum.Enum):
    """What the shell does with one offered frame."""

    ACCEPT = "accept"
    REJECT = "reject"
    DROP = "drop"
    ABUSE = "abuse"


@attrs.define(slots=True)
class LeakyBucket:
    """A leaky bucket of `burst` units draining at `rate` units per second."""

    rate: float
    burst: float
    abuse_after: float = ABUSE_AFTER
    level: float = 0.0
    updated: float = 0.0
    full_since: float | None = None
    rejected: bool = False

    def _drain(self, now: float) -> None:
        if now > self.updated:
            self.level = max(0.0, self.level - (now - self.updated) * self.rate)
            self.updated = now

    def offer(self, now: float) -> Verdict:
        """Offer one frame at time `now` (seconds) and return what to do with it."""
        self._drain(now)
        if self.level + 1.0 <= self.burst + 1e-9:
            self.level += 1.0
            # A frame that only fits because one unit drained leaves the bucket as full
            # as before: a flooder gets one frame per 1/rate s and must still reach ABUSE.
            if self.level + 1.0 <= self.burst + 1e-9:
                self.full_since = None
            self.rejected = False
            return Verdict.ACCEPT
        if self.full_since is None:
            self.full_since = now
        if now - self.full_since >= self.abuse_after:
            return Verdict.ABUSE
        if self.rejected:
            return Verdict.DROP
        self.rejected = True
        return Verdict.REJECT

    def retry_after(self, now: float) -> float:
        """Return the seconds until one more frame would be accepted (0.0 if now)."""
        self._drain(now)
        wait = (self.level + 1.0 - self.burst) / self.rate if self.rate > 0 else float("inf")
        return max(0.0, round(wait, 3))
