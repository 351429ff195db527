"""Handshake admission: which WebSocket upgrades roomd accepts, and why not.

`Admission.accept` counts a TCP connection against its IP from the moment it is
accepted; `Admission.check` applies PROTOCOL.md section 2 in order (path 404,
draining 503, origin 403, per-IP 429, connection limit 503) and returns the
`Rejection` to answer with, or None. Every slot `accept` gave must be
`release`d when its connection closes. The client IP is the TCP peer, or the
nearest `X-Forwarded-For` hop that is not a trusted proxy when the peer itself
is a trusted proxy.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from typing import Protocol

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
    FULL = (503, "max_connections", b"server is at its connection limit\n")

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


@attrs.define(eq=False, slots=True)
class Slot:
    """One TCP connection's place in the admission counts, from accept to close."""

    # The IP this connection counts against, once counted.
    ip: str | None = None
    # The handshake was accepted: it counts toward `max_connections`.
    upgraded: bool = False


class IpCounts(Protocol):
    """Connections per client IP counted across processes (`--workers` share one count)."""

    def take(self, ip: str, limit: int) -> bool:
        """Count one more connection of `ip`; False, counting nothing, when it has `limit`."""
        ...

    def give_back(self, ip: str) -> None:
        """Count one connection of `ip` fewer."""
        ...


@attrs.define
class Admission:
    """Counts connections per client IP from TCP accept, and decides each handshake.

    A connection counts against its IP from the moment it is accepted (`accept`)
    until it closes (`release`), while its handshake is still under way, so
    stalled handshakes cannot pile up past `max_conns_per_ip`. A peer that is a
    trusted proxy holds no slot of its own: the connection counts against its
    forwarded client IP once the request headers are read (`check`).
    """

    max_conns_per_ip: int
    allowed_origins: frozenset[str] = frozenset()
    trusted_proxies: tuple[Network, ...] = ()
    max_connections: int = 0
    draining: bool = False
    # This process's open connections per IP.
    open_by_ip: dict[str, int] = attrs.field(factory=dict)
    upgraded: int = 0
    # The machine's count when processes share one (`--workers`): it decides the limit.
    shared: IpCounts | None = None

    def accept(self, peer: str) -> Slot | Rejection:
        """Count a TCP connection accepted from `peer`; `PER_IP_LIMIT` when `peer` is full.

        On `PER_IP_LIMIT` nothing is counted: the shell answers 429 as soon as
        the first bytes arrive and closes. Otherwise the shell must `release`
        the slot when the connection closes.
        """
        if _is_trusted(peer, self.trusted_proxies):
            return Slot()
        if not self._take(peer):
            return Rejection.PER_IP_LIMIT
        return Slot(peer)

    def check(self, slot: Slot, target: str, origin: str | None, ip: str) -> Rejection | None:
        """Return why the handshake of `slot`'s connection from `ip` is refused, or None.

        In order: path (404), draining (503), origin (403), the per-IP limit of
        a connection through a trusted proxy (429), `max_connections` (503). On
        None the connection counts as upgraded until `release`.
        """
        if request_path(target) != ENDPOINT_PATH:
            return Rejection.PATH
        if self.draining:
            return Rejection.DRAINING
        if self.allowed_origins and origin not in self.allowed_origins:
            return Rejection.ORIGIN
        if slot.ip is None:
            if not self._take(ip):
                return Rejection.PER_IP_LIMIT
            slot.ip = ip
        if self.max_connections and self.upgraded >= self.max_connections:
            return Rejection.FULL
        slot.upgraded = True
        self.upgraded += 1
        return None

    def release(self, slot: Slot) -> None:
        """Stop counting the connection of `slot` (it closed); releasing twice is harmless."""
        if slot.upgraded:
            slot.upgraded = False
            self.upgraded -= 1
        if slot.ip is None:
            return
        count = self.open_by_ip.get(slot.ip, 0) - 1
        if count > 0:
            self.open_by_ip[slot.ip] = count
        else:
            self.open_by_ip.pop(slot.ip, None)
        if self.shared is not None:
            self.shared.give_back(slot.ip)
        slot.ip = None

    def open_connections(self) -> int:
        """Return how many connections hold a slot (handshaking or upgraded)."""
        return sum(self.open_by_ip.values())

    def _take(self, ip: str) -> bool:
        count = self.open_by_ip.get(ip, 0)
        if self.shared is not None:
            if not self.shared.take(ip, self.max_conns_per_ip):
                return False
        elif self.max_conns_per_ip and count >= self.max_conns_per_ip:
            return False
        self.open_by_ip[ip] = count + 1
        return True
