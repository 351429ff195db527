"""Refused handshakes reach the log once per cause, then as a count per interval."""

from __future__ import annotations

import pytest

from roomd.core.refusal import RefusalLog


def test_the_first_refusal_of_a_cause_is_reported_at_once() -> None:
    """A cause never seen is reported with a count of one, whatever the time."""
    log = RefusalLog(interval=60.0)
    assert log.note("per_ip_limit", 1_000.0) == 1
    assert log.note("origin", 1_000.0) == 1


@pytest.mark.parametrize("quiet", [1, 10, 2_000])
def test_refusals_within_the_interval_are_counted_then_reported_together(quiet: int) -> None:
    """A flood within the interval writes nothing; the next refusal after it reports them all."""
    log = RefusalLog(interval=60.0)
    assert log.note("per_ip_limit", 0.0) == 1
    assert all(log.note("per_ip_limit", 30.0) is None for _ in range(quiet))
    assert log.note("per_ip_limit", 60.0) == quiet + 1
    assert log.note("per_ip_limit", 61.0) is None
    assert log.note("per_ip_limit", 200.0) == 2


def test_causes_are_counted_apart() -> None:
    """A flood of one cause does not silence another."""
    log = RefusalLog(interval=60.0)
    log.note("per_ip_limit", 0.0)
    assert log.note("per_ip_limit", 1.0) is None
    assert log.note("bad_request", 1.0) == 1
