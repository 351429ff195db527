"""Handshake admission: which WebSocket upgrades roomd accepts, and why not.

`Admission.check` applies PROTOCOL.md section 2 in order (path 404, draining 503,
origin 403, per-IP 429) and returns the `Rejection` to answer with, or None. A
caller that is admitted must call `release(ip)` exactly once when the connection
closes. The client IP is the TCP peer, or the nearest `X-Forwarded-For` hop that
is not a trusted proxy when the peer itself is a trusted proxy.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence

import attrs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

ENDPOINT_PATH = "/v1"


class Rejection(enum.Enum):
    """Why a WebSocket upgrade is refused: its HTTP status, metric label and body."""

    BAD_REQUEST = (400, "bad_request", b"bad websocket handshake\n")
    ORIGIN = (403, "origin", b"origin not allowed\n")
    PATH = (404, "path", b"no such endpoint; use /v1\n")
    PER_IP_LIMIT = (429, "per_ip_limit", b"too many connections from this address\n")
    DRAINING = (503, "draining", b"server is shutting down\n")

    def __init__(self, status: int, label: str, body: bytes) -> None:
        self.status = status
        self.label = label
        self.body = body


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """Return the networks of `cidrs` ('10.0.0.0/8', '::1'); raise ValueError on a bad one."""
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _is_trusted(address: str, trusted: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_ip(peer: str, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """Return the IP a connection is counted against.

    `forwarded_for` holds every `X-Forwarded-For` header value in order. Hops are
    read right to left, skipping trusted proxies; the first untrusted hop is the
    client. A peer outside `trusted` is the client itself, whatever it claims.
    """
    if not _is_trusted(peer, trusted):
        return peer
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a garbled header must not let one client pose as many
    return hops[0] if hops else peer


def request_path(target: str) -> str:
    """Return the path of a request target, without its query string."""
    return target.split("?", 1)[0]


@attrs.define
class Admission:
    """Counts open connections per client IP and decides each handshake."""

    max_conns_per_ip: int
    allowed_origins: frozenset[str] = frozenset()
    draining: bool = False
    open_by_ip: dict[str, int] = attrs.field(factory=dict)

    def check(self, target: str, origin: str | None, ip: str) -> Rejection | None:
        """Return why this handshake is refused, or None to accept it.

        On None the connection is counted against `ip` until `release(ip)`.
        """
        if request_path(target) != ENDPOINT_PATH:
            return Rejection.PATH
        if self.draining:
            return Rejection.DRAINING
        if self.allowed_origins and origin not in self.allowed_origins:
            return Rejection.ORIGIN
        count = self.open_by_ip.get(ip, 0)
        if self.max_conns_per_ip and count >= self.max_conns_per_ip:
            return Rejection.PER_IP_LIMIT
        self.open_by_ip[ip] = count + 1
        return None

    def release(self, ip: str) -> None:
        """Stop counting one connection of `ip` (after `check` admitted it)."""
        count = self.open_by_ip.get(ip, 0) - 1
        if count > 0:
            self.open_by_ip[ip] = count
        else:
            self.open_by_ip.pop(ip, None)

    def open_connections(self) -> int:
        """Return how many admitted connections are open."""
        return sum(self.open_by_ip.values())
