"""Handshake admission and the client IP (PROTOCOL.md section 2, step 1)."""

from __future__ import annotations

import pytest

from roomd.core.admission import Admission, Rejection, client_ip, parse_networks, request_path

ORIGIN = "https://chat.example"


def status_of(rejection: Rejection | None) -> int | None:
    """Return the HTTP status a rejection answers with (None: admitted)."""
    return None if rejection is None else rejection.status


def admission(
    limit: int = 5, *, origins: tuple[str, ...] = (ORIGIN,), draining: bool = False
) -> Admission:
    """Return an admission policy with an origin allow-list."""
    return Admission(max_conns_per_ip=limit, allowed_origins=frozenset(origins), draining=draining)


@pytest.mark.parametrize(
    ("target", "draining", "origin", "full", "status"),
    [
        ("/v1", False, ORIGIN, False, None),
        ("/v2", True, "https://evil.example", True, 404),
        ("/v1", True, "https://evil.example", True, 503),
        ("/v1", False, "https://evil.example", True, 403),
        ("/v1", False, None, True, 403),
        ("/v1", False, ORIGIN, True, 429),
        ("/", False, ORIGIN, False, 404),
        ("/v1/", False, ORIGIN, False, 404),
        ("/V1", False, ORIGIN, False, 404),
        ("/v1x", False, ORIGIN, False, 404),
        ("/v1?token=x&y=1", False, ORIGIN, False, None),
        ("/v2?/v1", False, ORIGIN, False, 404),
        ("/v1?x", True, ORIGIN, False, 503),
    ],
)
def test_handshake_checks_run_in_order(
    target: str, draining: bool, origin: str | None, full: bool, status: int | None
) -> None:
    """Path (404), draining (503), origin (403), per-IP limit (429): the first failure answers."""
    policy = admission(1, draining=draining)
    if full:
        policy.open_by_ip["1.2.3.4"] = 1
    before = dict(policy.open_by_ip)
    assert status_of(policy.check(target, origin, "1.2.3.4")) == status
    if status is not None:
        assert policy.open_by_ip == before


@pytest.mark.parametrize("origin", [None, "https://anything.example", ""])
def test_without_an_allow_list_any_origin_is_admitted(origin: str | None) -> None:
    """No configured origins means no origin check at all."""
    assert admission(origins=()).check("/v1", origin, "1.2.3.4") is None


def test_origins_are_compared_exactly() -> None:
    """Only a listed origin passes; scheme, port and case are part of it."""
    policy = admission(0, origins=(ORIGIN, "http://localhost:3000"))
    assert policy.check("/v1", "http://localhost:3000", "ip") is None
    for origin in ("http://chat.example", "https://CHAT.example", "http://localhost:3001"):
        assert status_of(policy.check("/v1", origin, "ip")) == 403


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_per_ip_limit_admits_max_then_429_until_one_closes(limit: int) -> None:
    """`max_conns_per_ip` connections per IP; the next is 429; a release lets one more in."""
    policy = admission(limit)
    assert [policy.check("/v1", ORIGIN, "ip1") for _ in range(limit)] == [None] * limit
    assert status_of(policy.check("/v1", ORIGIN, "ip1")) == 429
    assert policy.check("/v1", ORIGIN, "ip2") is None
    assert policy.open_connections() == limit + 1
    policy.release("ip1")
    assert policy.check("/v1", ORIGIN, "ip1") is None
    assert status_of(policy.check("/v1", ORIGIN, "ip1")) == 429


def test_zero_means_no_per_ip_limit() -> None:
    """With max_conns_per_ip 0 one IP may open any number of connections."""
    policy = admission(0)
    assert all(policy.check("/v1", ORIGIN, "ip") is None for _ in range(1_000))
    assert policy.open_connections() == 1_000


def test_release_forgets_an_ip_with_no_open_connections() -> None:
    """The counter drops an IP at zero (no leak), and a stray release does not go negative."""
    policy = admission(2)
    policy.check("/v1", ORIGIN, "ip")
    policy.check("/v1", ORIGIN, "ip")
    policy.release("ip")
    assert policy.open_by_ip == {"ip": 1}
    policy.release("ip")
    assert policy.open_by_ip == {}
    policy.release("ip")
    policy.release("never-seen")
    assert policy.open_by_ip == {} and policy.open_connections() == 0


@pytest.mark.parametrize(
    ("target", "path"),
    [("/v1", "/v1"), ("/v1?a=b", "/v1"), ("/v1?", "/v1"), ("/x?y?z", "/x"), ("", "")],
)
def test_request_path_strips_the_query_string(target: str, path: str) -> None:
    """The path is everything before the first '?'."""
    assert request_path(target) == path


TRUSTED = parse_networks(["10.0.0.0/8", "fd00::/8", "127.0.0.1"])


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # An untrusted peer is the client, whatever it claims.
        ("203.0.113.9", [], "203.0.113.9"),
        ("203.0.113.9", ["198.51.100.1"], "203.0.113.9"),
        ("203.0.113.9", ["10.0.0.1"], "203.0.113.9"),
        # A trusted peer: the nearest untrusted hop, reading right to left.
        ("10.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.1", ["198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6, 198.51.100.1, 10.0.0.2"], "198.51.100.1"),
        ("10.0.0.1", ["6.6.6.6", "198.51.100.1", "10.9.9.9"], "198.51.100.1"),
        ("127.0.0.1", [" 198.51.100.7 ,,  "], "198.51.100.7"),
        ("fd00::1", ["2001:db8::1"], "2001:db8::1"),
        ("fd00::1", ["2001:DB8:0::1"], "2001:db8::1"),
        # No header, or only trusted hops.
        ("10.0.0.1", [], "10.0.0.1"),
        ("10.0.0.1", [""], "10.0.0.1"),
        ("10.0.0.1", ["10.0.0.3, 10.0.0.2"], "10.0.0.3"),
        # A garbled nearest untrusted hop: count against the proxy, not a made-up client.
        ("10.0.0.1", ["198.51.100.1, garbage"], "10.0.0.1"),
        ("10.0.0.1", ["198.51.100.1:4567"], "10.0.0.1"),
        ("10.0.0.1", ["unknown"], "10.0.0.1"),
        ("10.0.0.1", ["garbage, 198.51.100.1"], "198.51.100.1"),
    ],
)
def test_client_ip_believes_x_forwarded_for_only_from_trusted_proxies(
    peer: str, headers: list[str], expected: str
) -> None:
    """X-Forwarded-For counts only from a trusted proxy peer; the nearest untrusted hop wins."""
    assert client_ip(peer, headers, TRUSTED) == expected


def test_without_trusted_proxies_the_peer_is_always_the_client() -> None:
    """No configured proxy: the header is ignored even from loopback."""
    assert client_ip("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


@pytest.mark.parametrize("peer", ["", "not-an-ip", "10.0.0.1%eth0x"])
def test_a_peer_that_is_not_an_ip_is_never_trusted(peer: str) -> None:
    """An unparsable peer address is used as is and its header ignored."""
    assert client_ip(peer, ["198.51.100.1"], TRUSTED) == peer


def test_parse_networks_accepts_hosts_and_cidrs_and_rejects_garbage() -> None:
    """Single addresses become /32 or /128; host bits are tolerated; garbage raises ValueError."""
    nets = parse_networks(["192.168.1.7/24", "::1", "10.1.2.3"])
    assert [str(n) for n in nets] == ["192.168.1.0/24", "::1/128", "10.1.2.3/32"]
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/33"])
    with pytest.raises(ValueError):
        parse_networks(["proxy.local"])
