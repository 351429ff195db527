"""The pinger: one task that pings every connection on time, for the whole server.

A reader waiting on its socket with a deadline at its next ping would wake,
unwinding a `Cancelled` through the wait, once per ping interval for nothing
(measured: over 60% of the server's CPU with 3,000 idle connections pinged every
second, README Performance). Instead each connection's reader waits only for
bytes and for its closing deadlines (auth, heartbeat timeout, token expiry),
and this task keeps a heap of every connection's next ping: at each one it asks
the core `Connection` (`ping_due`) and puts the ping frame into its outbox. So a
healthy idle connection's reader wakes once per interval, for the pong.
"""

from __future__ import annotations

import heapq
import itertools
import math

import attrs
import trio

from roomd.daemon.session import Session

# A server frame is unmasked and roomd's pings carry no payload: every ping is
# the same two bytes (FIN + opcode 9, length 0).
PING_FRAME = b"\x89\x00"


@attrs.define(eq=False)
class Pinger:
    """Pings each watched session at its connection's `next_ping`, until it closes."""

    # (when, tiebreak, session): a session forgotten since is dropped when it comes up.
    _due: list[tuple[float, int, Session]] = attrs.field(factory=list)
    _order: itertools.count[int] = attrs.field(factory=itertools.count)
    _timer: trio.CancelScope | None = None
    _watched: set[Session] = attrs.field(factory=set)

    def watch(self, session: Session) -> None:
        """Ping `session` from its connection's next ping on."""
        self._watched.add(session)
        self._push(session)

    def forget(self, session: Session) -> None:
        """Stop pinging `session` (it closed); the heap never holds many forgotten ones."""
        self._watched.discard(session)
        if len(self._due) > 2 * len(self._watched) + 64:
            self._due = [entry for entry in self._due if entry[2] in self._watched]
            heapq.heapify(self._due)

    def _push(self, session: Session) -> None:
        when = session.connection.next_ping
        heapq.heappush(self._due, (when, next(self._order), session))
        if self._timer is not None and when < self._timer.deadline:
            self._timer.deadline = when

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send every due ping, on time, until cancelled."""
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._due[0][0] if self._due else math.inf) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while self._due and self._due[0][0] <= now:
                _, _, session = heapq.heappop(self._due)
                if session not in self._watched:
                    continue
                if session.connection.ping_due(now):
                    session.outbox.put(PING_FRAME)
                if session.connection.next_ping > now:
                    self._push(session)
                else:  # closing: it gets no more pings
                    self._watched.discard(session)
