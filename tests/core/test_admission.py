"""Handshake admission and the client IP (PROTOCOL.md section 2, step 1)."""

from __future__ import annotations

import pytest

from roomd.core.admission import (
    Admission,
    Rejection,
    Slot,
    client_ip,
    parse_networks,
    request_path,
)

ORIGIN = "https://chat.example"


def status_of(rejection: Rejection | None) -> int | None:
    """Return the HTTP status a rejection answers with (None: admitted)."""
    return None if rejection is None else rejection.status


def admission(
    limit: int = 5,
    *,
    origins: tuple[str, ...] = (ORIGIN,),
    draining: bool = False,
    proxies: tuple[str, ...] = (),
    max_connections: int = 0,
) -> Admission:
    """Return an admission policy with an origin allow-list."""
    return Admission(
        max_conns_per_ip=limit,
        allowed_origins=frozenset(origins),
        trusted_proxies=parse_networks(proxies),
        max_connections=max_connections,
        draining=draining,
    )


def handshake(
    policy: Admission,
    peer: str,
    target: str = "/v1",
    origin: str | None = ORIGIN,
    ip: str | None = None,
) -> tuple[Slot | None, Rejection | None]:
    """Accept a TCP connection from `peer` and check its request; return its slot and verdict.

    A refused handshake's slot is released, as the shell does when it closes.
    """
    slot = policy.accept(peer)
    if isinstance(slot, Rejection):
        return None, slot
    verdict = policy.check(slot, target, origin, ip or peer)
    if verdict is not None:
        policy.release(slot)
        return None, verdict
    return slot, None


@pytest.mark.parametrize(
    ("target", "draining", "origin", "status"),
    [
        ("/v1", False, ORIGIN, None),
        ("/v2", True, "https://evil.example", 404),
        ("/v1", True, "https://evil.example", 503),
        ("/v1", False, "https://evil.example", 403),
        ("/v1", False, None, 403),
        ("/", False, ORIGIN, 404),
        ("/v1/", False, ORIGIN, 404),
        ("/V1", False, ORIGIN, 404),
        ("/v1x", False, ORIGIN, 404),
        ("/v1?token=x&y=1", False, ORIGIN, None),
        ("/v2?/v1", False, ORIGIN, 404),
        ("/v1?x", True, ORIGIN, 503),
    ],
)
def test_handshake_checks_run_in_order(
    target: str, draining: bool, origin: str | None, status: int | None
) -> None:
    """Path (404), draining (503), origin (403): the first failure answers and holds nothing."""
    policy = admission(1, draining=draining)
    _, verdict = handshake(policy, "1.2.3.4", target, origin)
    assert status_of(verdict) == status
    assert policy.open_by_ip == ({} if status else {"1.2.3.4": 1})
    assert policy.upgraded == (0 if status else 1)


def test_an_ip_at_its_limit_is_refused_at_accept_whatever_it_asks() -> None:
    """A TCP connection from a full IP is 429 before its request is read, and holds no slot."""
    policy = admission(1, draining=True)
    first = policy.accept("1.2.3.4")
    assert isinstance(first, Slot)
    assert policy.accept("1.2.3.4") is Rejection.PER_IP_LIMIT
    assert policy.open_by_ip == {"1.2.3.4": 1}


def test_a_handshake_under_way_counts_toward_its_ip() -> None:
    """Stalled handshakes hold their IP's slots from accept: the next socket is refused."""
    policy = admission(3)
    stalled = [policy.accept("ip") for _ in range(3)]
    assert all(isinstance(slot, Slot) for slot in stalled)
    assert policy.accept("ip") is Rejection.PER_IP_LIMIT
    assert isinstance(policy.accept("other"), Slot)
    assert policy.upgraded == 0


@pytest.mark.parametrize("origin", [None, "https://anything.example", ""])
def test_without_an_allow_list_any_origin_is_admitted(origin: str | None) -> None:
    """No configured origins means no origin check at all."""
    assert handshake(admission(origins=()), "1.2.3.4", origin=origin)[1] is None


def test_origins_are_compared_exactly() -> None:
    """Only a listed origin passes; scheme, port and case are part of it."""
    policy = admission(0, origins=(ORIGIN, "http://localhost:3000"))
    assert handshake(policy, "ip", origin="http://localhost:3000")[1] is None
    for origin in ("http://chat.example", "https://CHAT.example", "http://localhost:3001"):
        assert status_of(handshake(policy, "ip", origin=origin)[1]) == 403


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_per_ip_limit_admits_max_then_429_until_one_closes(limit: int) -> None:
    """`max_conns_per_ip` connections per IP; the next is 429; a release lets one more in."""
    policy = admission(limit)
    slots = [handshake(policy, "ip1")[0] for _ in range(limit)]
    assert all(slot is not None for slot in slots)
    assert status_of(handshake(policy, "ip1")[1]) == 429
    assert handshake(policy, "ip2")[1] is None
    assert policy.open_connections() == limit + 1
    assert slots[0] is not None
    policy.release(slots[0])
    assert handshake(policy, "ip1")[1] is None
    assert status_of(handshake(policy, "ip1")[1]) == 429


def test_zero_means_no_per_ip_limit() -> None:
    """With max_conns_per_ip 0 one IP may open any number of connections."""
    policy = admission(0)
    assert all(handshake(policy, "ip")[1] is None for _ in range(1_000))
    assert policy.open_connections() == 1_000


def test_a_trusted_proxy_holds_no_slot_its_clients_do() -> None:
    """Through a trusted proxy each forwarded client IP has its own limit; the proxy none."""
    policy = admission(1, proxies=("10.0.0.0/8",))
    slot = policy.accept("10.0.0.1")
    assert isinstance(slot, Slot) and policy.open_by_ip == {}
    assert policy.check(slot, "/v1", ORIGIN, "198.51.100.7") is None
    assert policy.open_by_ip == {"198.51.100.7": 1}
    assert status_of(handshake(policy, "10.0.0.1", ip="198.51.100.7")[1]) == 429
    assert handshake(policy, "10.0.0.1", ip="198.51.100.8")[1] is None
    policy.release(slot)
    assert policy.open_by_ip == {"198.51.100.8": 1}


@pytest.mark.parametrize("limit", [1, 3])
def test_max_connections_answers_503_past_it(limit: int) -> None:
    """At most `max_connections` upgraded connections; the next handshake is 503 (FULL)."""
    policy = admission(0, max_connections=limit)
    slots = [handshake(policy, f"ip{i}")[0] for i in range(limit)]
    assert handshake(policy, "late")[1] is Rejection.FULL
    assert policy.open_by_ip.get("late") is None
    first = slots[0]
    assert first is not None
    policy.release(first)
    assert handshake(policy, "late")[1] is None


def test_release_forgets_an_ip_with_no_open_connections() -> None:
    """The counter drops an IP at zero (no leak), and releasing a slot twice changes nothing."""
    policy = admission(2)
    one, _ = handshake(policy, "ip")
    two, _ = handshake(policy, "ip")
    assert one is not None and two is not None
    policy.release(one)
    assert policy.open_by_ip == {"ip": 1} and policy.upgraded == 1
    policy.release(two)
    assert policy.open_by_ip == {}
    policy.release(two)
    policy.release(one)
    assert policy.open_by_ip == {} and policy.open_connections() == 0 and policy.upgraded == 0


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
