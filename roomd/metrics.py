"""Prometheus metrics, collected at scrape time from `Stats` and the live state.

Nothing here runs on the hot path: the relay bumps plain integers (`Stats`) and
this collector turns them into metric families only when `/metrics` is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from roomd.errors import CloseCode

if TYPE_CHECKING:
    from roomd.server import Server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
REJECT_LABELS = {
    400: "bad_request",
    403: "origin",
    404: "path",
    429: "per_ip_limit",
    503: "draining",
}


class RoomdCollector(Collector):
    """Reads one server's counters and state into `roomd_*` metric families."""

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        server = self._server
        stats = server.stats
        rooms = server.registry.rooms
        yield _gauge("roomd_connections_open", "Open WebSocket connections.", len(server.sessions))
        yield _gauge("roomd_rooms", "Live rooms.", len(rooms))
        members = sum(len(handle.room.members) for handle in rooms.values())
        yield _gauge("roomd_members", "AIDs present in rooms, summed over rooms.", members)
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
        for status, reason in REJECT_LABELS.items():
            rejected.add_metric([reason], stats.handshakes_rejected[status])
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


def metrics_renderer(server: Server) -> Callable[[], bytes]:
    """Return a function that renders `server`'s metrics in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RoomdCollector(server))
    return lambda: generate_latest(registry)
