"""Prometheus metrics, collected at scrape time from `Stats` and the live state.

Nothing here runs on the hot path: the relay bumps plain integers (`Stats`) and
this collector turns them, and the live counts of the moment, into metric
families only when `/metrics` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from roomd.core.admission import Rejection
from roomd.core.stats import LiveCounts, Stats
from roomd.errors import CloseCode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RoomdCollector(Collector):
    """Reads a node's counters and live counts into `roomd_*` metric families."""

    def __init__(self, stats: Stats, live_counts: Callable[[], LiveCounts]) -> None:
        self._stats = stats
        self._live_counts = live_counts

    def collect(self) -> Iterator[Metric]:
        """Yield every `roomd_*` family as it stands now."""
        stats = self._stats
        live = self._live_counts()
        yield _gauge("roomd_connections_open", "Open WebSocket connections.", live.connections)
        yield _gauge("roomd_rooms", "Rooms on this node (with members or dormant).", live.rooms)
        yield _gauge("roomd_members", "AIDs present in rooms, summed over rooms.", live.members)
        if live.subscriptions is not None:
            yield _gauge(
                "roomd_cluster_subscriptions",
                "Rooms whose channel this node is subscribed to (it has members there).",
                live.subscriptions,
            )
            yield _counter(
                "roomd_cluster_events_in",
                "Room events this node received from the cluster's Redis.",
                stats.cluster_events_in,
            )
        yield _counter(
            "roomd_messages_in", "Client frames accepted for processing.", stats.frames_in
        )
        yield _counter(
            "roomd_deliveries_out", "Messages queued to connections.", stats.deliveries_out
        )
        yield _counter(
            "roomd_rate_limited", "Client frames refused by the rate limit.", stats.rate_limited
        )
        rejected = CounterMetricFamily(
            "roomd_handshakes_rejected", "WebSocket handshakes rejected.", labels=["reason"]
        )
        for rejection in Rejection:
            rejected.add_metric([rejection.label], stats.handshakes_rejected[rejection])
        yield rejected
        yield _counter(
            "roomd_slow_consumer_closes",
            "Connections closed with 4003 (outbound queue full).",
            stats.closes[CloseCode.SLOW_CONSUMER],
        )
        yield _counter(
            "roomd_heartbeat_timeouts",
            "Connections closed with 4002 (heartbeat timeout).",
            stats.closes[CloseCode.HEARTBEAT_TIMEOUT],
        )
        closes = CounterMetricFamily(
            "roomd_connections_closed", "Connections closed, by close code.", labels=["code"]
        )
        for code, count in sorted(stats.closes.items()):
            closes.add_metric([str(int(code))], count)
        yield closes


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def metrics_renderer(stats: Stats, live_counts: Callable[[], LiveCounts]) -> Callable[[], bytes]:
    """Return a function that renders the metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoomdCollector(stats, live_counts))
    return lambda: generate_latest(registry)
