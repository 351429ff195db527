"""Plain counters of what roomd did, bumped on the hot path and read by /metrics."""

from __future__ import annotations

from collections import Counter

import attrs

from roomd.core.admission import Rejection


@attrs.define(slots=True)
class Stats:
    """Counters since start; plain ints so the hot path pays one addition each."""

    frames_in: int = 0
    deliveries_out: int = 0
    rate_limited: int = 0
    handshakes_rejected: Counter[Rejection] = attrs.field(factory=Counter)
    closes: Counter[int] = attrs.field(factory=Counter)
    # Room events this node received from the cluster's Redis.
    cluster_events_in: int = 0


@attrs.frozen
class LiveCounts:
    """How much is live right now: open connections, rooms, and AIDs summed over rooms."""

    connections: int
    rooms: int
    members: int
    # Rooms whose channel this cluster node is subscribed to; None alone.
    subscriptions: int | None = None
