"""How often roomd logs a refusal: once per cause, then a count per interval, never per packet.

A flood of refused handshakes (a slowloris, a full server) must not flood the
log. The first refusal of a cause is reported at once; those that follow
within `interval` seconds are only counted, and the next one after the
interval reports them all in one line.
"""

from __future__ import annotations

import attrs

# Seconds between two log lines about the same cause.
INTERVAL = 60.0


@attrs.define
class RefusalLog:
    """Decides which refusals the shell writes to the log, per cause."""

    interval: float = INTERVAL
    # cause -> (when its current interval began, refusals counted since without a line)
    _open: dict[str, tuple[float, int]] = attrs.field(factory=dict)

    def note(self, cause: str, now: float) -> int | None:
        """Count one refusal of `cause` at `now`; return how many to report now, or None.

        The count returned includes this refusal and every one kept quiet since
        the last line about `cause`.
        """
        began, quiet = self._open.get(cause, (None, 0))
        if began is None or now - began >= self.interval:
            self._open[cause] = (now, 0)
            return quiet + 1
        self._open[cause] = (began, quiet + 1)
        return None
