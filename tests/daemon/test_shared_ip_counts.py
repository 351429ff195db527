"""The per-IP count that `--workers` share: limits over workers, crashes, slots given back."""

from __future__ import annotations

from roomd.daemon.shared_ip_counts import SharedIpCounts


def test_the_limit_holds_over_every_worker() -> None:
    """Worker 0 holds two of 1.2.3.4's three places: worker 1 gets one, then no more."""
    counts = SharedIpCounts(2, slots=64)
    first = counts.for_worker(0)
    assert first.take("1.2.3.4", 3) and first.take("1.2.3.4", 3)
    second = counts.for_worker(1)
    assert second.take("1.2.3.4", 3)
    assert not second.take("1.2.3.4", 3)
    assert second.take("5.6.7.8", 3)  # another IP has its own places
    assert counts.count("1.2.3.4") == 3


def test_a_dead_worker_s_places_are_freed() -> None:
    """forget_worker zeroes one worker's column only."""
    counts = SharedIpCounts(2, slots=64)
    counts.for_worker(0).take("1.2.3.4", 2)
    counts.for_worker(1).take("1.2.3.4", 2)
    counts.forget_worker(0)
    assert counts.count("1.2.3.4") == 1
    assert counts.for_worker(1).take("1.2.3.4", 2)


def test_ips_that_came_and_went_give_their_slots_back() -> None:
    """A thousand IPs through a 64-slot table, one at a time: never full, empty at the end."""
    counts = SharedIpCounts(1, slots=64).for_worker(0)
    for n in range(1000):
        ip = f"10.0.{n // 256}.{n % 256}"
        assert counts.take(ip, 5), ip
        counts.give_back(ip)
    assert counts.used_slots() == 0


def test_a_full_table_refuses_a_new_ip_and_keeps_the_others() -> None:
    """With every slot held, a new IP is refused; the held IPs still count."""
    counts = SharedIpCounts(1, slots=4).for_worker(0)
    held = [f"10.0.0.{n}" for n in range(4)]
    for ip in held:
        assert counts.take(ip, 5)
    assert not counts.take("10.0.0.99", 5)
    assert all(counts.count(ip) == 1 for ip in held)


def test_giving_back_one_ip_never_loses_another_on_its_probe_chain() -> None:
    """In a tiny table every IP shares chains: each still counts after any other leaves."""
    counts = SharedIpCounts(1, slots=4).for_worker(0)
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for leaving in ips:
        for ip in ips:
            assert counts.take(ip, 5)
        counts.give_back(leaving)
        assert [counts.count(ip) for ip in ips] == [0 if ip == leaving else 1 for ip in ips]
        for ip in ips:
            if ip != leaving:
                counts.give_back(ip)
        assert counts.used_slots() == 0
