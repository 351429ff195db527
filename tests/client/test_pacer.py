"""The client's own leaky bucket (roomd/client/pacer.py), on explicit `now` values."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.client.pacer import BURST_MARGIN, Pacer
from roomd.core.bucket import LeakyBucket, Verdict

# (rate, burst) as hello.limits may give them; roomd's config takes any positive floats.
LIMITS = [(10.0, 30.0), (1.0, 5.0), (100.0, 4.0), (0.5, 3.0), (10.0, 2.0), (10.0, 1.0)]
LIMITS += [(2.5, 7.5), (10.0, 2.5), (1000.0, 1000.0)]


def at_once(pacer: Pacer, now: float) -> int:
    """Take frames at `now` while the pacer says 0, and return how many went."""
    sent = 0
    while pacer.delay(now) == 0.0:
        pacer.take(now)
        sent += 1
        assert sent <= 10_000, "the pacer never said wait"
    return sent


def paced(pacer: Pacer, start: float, frames: int) -> list[float]:
    """Send `frames` frames as the shell does (wait `delay`, then `take`); return their times."""
    now, times = start, []
    for _ in range(frames):
        now += pacer.delay(now)
        pacer.take(now)
        times.append(now)
    return times


@pytest.mark.parametrize(("rate", "burst"), LIMITS)
def test_a_fresh_pacer_lets_burst_minus_margin_go_at_once(rate: float, burst: float) -> None:
    """From hello's limits, burst - 3 frames (at least 1) go at once, then it asks to wait."""
    pacer = Pacer.from_limits(rate, burst)
    frames = max(1, math.floor(burst - BURST_MARGIN))
    assert at_once(pacer, 100.0) == frames
    # 1/rate for a whole burst; a fractional one waits only for its missing fraction.
    assert pacer.delay(100.0) == pytest.approx((frames + 1 - pacer.burst) / pacer.rate)
    if burst.is_integer():
        assert pacer.delay(100.0) == pytest.approx(1 / pacer.rate)


@pytest.mark.parametrize(("rate", "burst"), LIMITS)
def test_after_the_burst_frames_go_every_one_over_rate(rate: float, burst: float) -> None:
    """Past its burst the pacer spaces frames exactly 1/rate s apart."""
    pacer = Pacer.from_limits(rate, burst)
    at_once(pacer, 0.0)
    times = paced(pacer, 0.0, 51)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == pytest.approx([1 / pacer.rate] * 50, rel=1e-6)


@pytest.mark.parametrize(
    ("elapsed", "frames"),
    [(0.0, 0), (0.05, 0), (0.15, 1), (1.05, 10), (2.55, 25), (2.95, 29), (3.05, 30), (1e6, 30)],
)
def test_the_pacer_drains_at_rate(elapsed: float, frames: int) -> None:
    """A full pacer of rate 10 has room for floor(10 * elapsed) frames, never more than burst."""
    pacer = Pacer(rate=10.0, burst=30.0)
    assert at_once(pacer, 0.0) == 30
    assert at_once(pacer, elapsed) == frames


def test_delay_counts_nothing() -> None:
    """Asking for the delay does not fill the bucket: only `take` does."""
    pacer = Pacer(rate=10.0, burst=2.0)
    assert [pacer.delay(0.0) for _ in range(5)] == [0.0] * 5
    pacer.take(0.0)
    pacer.take(0.0)
    assert pacer.delay(0.0) == pytest.approx(0.1)
    assert pacer.delay(0.0) == pytest.approx(0.1)


def test_the_delay_shrinks_as_time_passes() -> None:
    """The wait asked at `now` is the wait asked earlier, less the time gone by."""
    pacer = Pacer(rate=4.0, burst=1.0)
    pacer.take(0.0)
    pacer.take(0.0)  # the shell may take without waiting: it is counted all the same
    assert [pacer.delay(t) for t in (0.0, 0.1, 0.25, 0.5, 0.6)] == pytest.approx(
        [0.5, 0.4, 0.25, 0.0, 0.0]
    )


@pytest.mark.parametrize("seconds", [0.1, 1.0, 2.5, 30.0])
@pytest.mark.parametrize("already", [0, 5, 26])
def test_hold_blocks_for_exactly_its_seconds(seconds: float, already: int) -> None:
    """hold(now, s) makes the pacer ask for s at `now`, less as time goes, and 0 after s."""
    pacer = Pacer.from_limits(10.0, 30.0)
    for _ in range(already):
        pacer.take(5.0)
    pacer.hold(5.0, seconds)
    assert pacer.delay(5.0) == pytest.approx(seconds)
    assert pacer.delay(5.0 + seconds / 2) == pytest.approx(seconds / 2)
    assert pacer.delay(5.0 + seconds) == pytest.approx(0.0, abs=1e-9)


def test_after_a_hold_frames_resume_one_at_a_time() -> None:
    """A hold leaves no burst behind: once it ends, frames go 1/rate apart."""
    pacer = Pacer.from_limits(10.0, 30.0)
    pacer.hold(0.0, 2.0)
    times = paced(pacer, 0.0, 4)
    assert times == pytest.approx([2.0 + n / pacer.rate for n in range(4)])


def test_a_shorter_hold_keeps_a_longer_wait() -> None:
    """hold never shortens a wait the bucket already asks for."""
    pacer = Pacer(rate=1.0, burst=3.0)
    pacer.hold(0.0, 5.0)
    pacer.hold(1.0, 0.5)
    assert pacer.delay(1.0) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("rate", "burst"),
    [
        *[limits for limits in LIMITS if limits[1] != 1.0],
        pytest.param(
            10.0,
            1.0,
            marks=pytest.mark.xfail(
                strict=True,
                reason="Pacer.from_limits(rate, 1) clamps its burst to 1.0, the server's own: no "
                "unit of headroom for a pong (a client frame that pays the server's bucket too)",
            ),
        ),
    ],
)
def test_from_limits_stays_strictly_inside_the_server_limits(rate: float, burst: float) -> None:
    """The pacer drains slower than the server and holds fewer units, yet at least one frame."""
    pacer = Pacer.from_limits(rate, burst)
    assert 0 < pacer.rate < rate
    assert 1.0 <= pacer.burst < burst


def test_from_limits_keeps_three_units_in_hand_when_the_burst_allows() -> None:
    """At the defaults (10/s, 30) the pacer keeps 3 units and 5% of the rate in hand."""
    pacer = Pacer.from_limits(10.0, 30.0)
    assert (pacer.rate, pacer.burst) == pytest.approx((9.5, 27.0))


@given(
    limits=st.sampled_from(LIMITS),
    wants=st.lists(st.floats(0.0, 20.0), max_size=60),
    extras=st.lists(st.floats(0.0, 30.0), max_size=3),
)
def test_paced_frames_and_the_margin_never_trip_the_server(
    limits: tuple[float, float], wants: list[float], extras: list[float]
) -> None:
    """Paced frames plus up to the margin of unpaced ones (pongs) all pass roomd's own bucket."""
    rate, burst = limits
    pacer = Pacer.from_limits(rate, burst)
    # Three units in hand where the burst allows it, as many as it allows below that.
    headroom = math.floor(min(3.0, burst - 1.0))
    sent, clock = [], 0.0
    for want in sorted(wants):
        clock = max(clock, want)
        clock += pacer.delay(clock)
        pacer.take(clock)
        sent.append(clock)
    server = LeakyBucket(rate=rate, burst=burst)
    for now in sorted(sent + extras[:headroom]):
        assert server.offer(now) is Verdict.ACCEPT
