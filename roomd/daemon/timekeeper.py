"""The timekeeper: one task that keeps every connection's timers, for the whole server.

A connection has a ping to send every `heartbeat_interval` and deadlines that
close it (auth 4001, heartbeat 4002, token expiry 4005). A reader that waited
on its socket under a cancel scope with those deadlines would enter and leave
a scope per read, and unwind a `Cancelled` through its wait once per ping
(measured: over 60% of the server's CPU with 3,000 idle connections pinged
every second, and about a sixth of it in the chat mix; README Performance).
Instead each reader waits only for bytes, and this task keeps a heap of each
connection's next timer, `Connection.next_timer`: at that time it asks the core
`Connection` (`wake`: close it, `session.close(code)`, which cancels its
reader; `ping_due`: put the ping frame into its outbox) and schedules the next
one.

Pings fall on a grid (`PING_GRID`, 1/16 s, in the core): the connections due
in one slot are pinged in one turn and their pongs come back together, which
shares the per-turn costs (measured: 109 -> 80 us per connection per ping
cycle with a generator that answers each ping at once).

A heap entry is never late: the core's timers only move later (bytes heard,
auth done), except at authentication, which may bring a token's expiry closer;
the reader then calls `reschedule`. An entry that comes up early finds nothing
due and is pushed again at the connection's current `next_timer`.
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
class Timekeeper:
    """Pings and closes each watched session on its connection's timers, until it closes."""

    # (when, order, conn_id); an entry whose order is not the session's current
    # one (in `_watched`) is stale and skipped when it comes up. Entries hold the
    # id, not the session: a closed session is freed when its task ends, not when
    # its stale entry comes up, up to an interval later. Holding them made the
    # soak's RSS creep (150 s soak, 30 s to 150 s: +3.4 MiB, against +0.8 MiB
    # with ids), though no Python object accumulated: a memory-layout effect.
    _due: list[tuple[float, int, int]] = attrs.field(factory=list)
    _order: itertools.count[int] = attrs.field(factory=itertools.count)
    _timer: trio.CancelScope | None = None
    # conn_id -> (when, order, session) of the session's current heap entry.
    _watched: dict[int, tuple[float, int, Session]] = attrs.field(factory=dict)

    def watch(self, session: Session) -> None:
        """Keep `session`'s timers from now on."""
        self._push(session)

    def reschedule(self, session: Session) -> None:
        """Take note that `session`'s next timer may have come closer (it authenticated)."""
        current = self._watched.get(session.conn_id)
        if current is not None and session.connection.next_timer < current[0]:
            self._push(session)

    def forget(self, session: Session) -> None:
        """Stop keeping `session`'s timers (it closed); the heap never holds many stale entries."""
        self._watched.pop(session.conn_id, None)
        if len(self._due) > 2 * len(self._watched) + 64:
            # In place: `run` holds the list.
            self._due[:] = [entry for entry in self._due if self._current(entry) is not None]
            heapq.heapify(self._due)

    def _current(self, entry: tuple[float, int, int]) -> Session | None:
        """Return the session of `entry`, or None when the entry is stale."""
        current = self._watched.get(entry[2])
        return current[2] if current is not None and current[1] == entry[1] else None

    def _push(self, session: Session) -> None:
        when = session.connection.next_timer
        order = next(self._order)
        self._watched[session.conn_id] = (when, order, session)
        heapq.heappush(self._due, (when, order, session.conn_id))
        if self._timer is not None and when < self._timer.deadline:
            self._timer.deadline = when

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Carry out every connection's timers, on time, until cancelled."""
        task_status.started()
        due = self._due
        while True:
            with trio.CancelScope(deadline=due[0][0] if due else math.inf) as timer:
                self._timer = timer
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            while due and due[0][0] <= now:
                session = self._current(heapq.heappop(due))
                if session is None:
                    continue
                connection = session.connection
                close = connection.wake(now)
                if close is not None:
                    session.close(close.code)
                elif connection.ping_due(now):
                    session.outbox.put(PING_FRAME)
                if connection.close_code is None:
                    self._push(session)
                else:  # closing: its reader is cancelled and forgets it
                    del self._watched[session.conn_id]
