"""The timers of one connection: auth deadline, heartbeat, pings and token expiry.

Sans-I/O: the shell tells this object `heard(now)` about every frame and, at
the earlier of `next_wakeup()` and `next_ping` (one timekeeper for the whole
server keeps a heap of them), asks `due(now)` whether to close, with which
code, and `ping_due(now)` whether to ping. So a reader waits only for bytes,
and a healthy idle connection's reader wakes only for the pong.
"""

from __future__ import annotations

import math

import attrs

from roomd.errors import CloseCode

# Pings go out on a grid of this many seconds (a power of two: exact in floats).
# A ping is then at most this late, and the connections whose pings fall in one
# slot are pinged in one scheduler turn, so their pongs come back together: the
# turn's fixed costs (polling, waking the timekeeper, flushing) are shared.
PING_GRID = 1 / 16


@attrs.define(slots=True)
class ConnectionDeadlines:
    """Deadlines of one connection, all on the same monotonic clock (seconds)."""

    heartbeat_interval: float
    heartbeat_timeout: float
    auth_deadline: float
    last_heard: float
    next_ping: float
    token_deadline: float = math.inf

    @classmethod
    def start(
        cls, now: float, *, auth_timeout: float, heartbeat_interval: float, heartbeat_timeout: float
    ) -> ConnectionDeadlines:
        """Return the deadlines of a connection accepted at `now`."""
        return cls(
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            auth_deadline=now + auth_timeout,
            last_heard=now,
            next_ping=now + heartbeat_interval,
        )

    def heard(self, now: float) -> None:
        """Record that something (a frame, a pong) arrived at `now`."""
        self.last_heard = now

    def authenticated(self, token_deadline: float) -> None:
        """Stop the auth countdown; close 4005 at `token_deadline`."""
        self.auth_deadline = math.inf
        self.token_deadline = token_deadline

    def next_wakeup(self) -> float:
        """Return the earliest time at which `due` may have a close to say."""
        return min(
            self.auth_deadline, self.last_heard + self.heartbeat_timeout, self.token_deadline
        )

    def next_timer(self) -> float:
        """Return when to ask `due`, then `ping_due`: the next ping's grid slot or a deadline."""
        slot = math.ceil(self.next_ping / PING_GRID) * PING_GRID
        return min(slot, self.next_wakeup())

    def due(self, now: float) -> CloseCode | None:
        """Return the close code that is due at `now` (4001 before 4002 before 4005), or None."""
        if now >= self.auth_deadline:
            return CloseCode.AUTH_TIMEOUT
        if now >= self.last_heard + self.heartbeat_timeout:
            return CloseCode.HEARTBEAT_TIMEOUT
        if now >= self.token_deadline:
            return CloseCode.TOKEN_EXPIRED
        return None

    def ping_due(self, now: float) -> bool:
        """Return whether a ping is due at `now`; a True result schedules the next one."""
        if now < self.next_ping:
            return False
        self.next_ping = now + self.heartbeat_interval
        return True
