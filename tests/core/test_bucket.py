"""The per-connection leaky bucket (PROTOCOL.md section 6, "Rate")."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core.bucket import LeakyBucket, Verdict

A, R, D, X = Verdict.ACCEPT, Verdict.REJECT, Verdict.DROP, Verdict.ABUSE


def filled(rate: float = 10.0, burst: float = 30.0, now: float = 0.0) -> LeakyBucket:
    """Return a bucket that accepted `burst` frames at `now` and is now full."""
    bucket = LeakyBucket(rate=rate, burst=burst, updated=now)
    assert [bucket.offer(now) for _ in range(int(burst))] == [A] * int(burst)
    return bucket


@pytest.mark.parametrize(("rate", "burst"), [(10.0, 30.0), (1.0, 1.0), (0.5, 5.0), (100.0, 2.0)])
def test_a_burst_is_accepted_at_once_and_the_next_frame_rejected(rate: float, burst: float) -> None:
    """`burst` frames at one instant are accepted; the next is rejected, later ones dropped."""
    bucket = filled(rate, burst)
    assert [bucket.offer(0.0) for _ in range(4)] == [R, D, D, D]


def test_the_defaults_refuse_frame_31_and_tell_it_to_wait_a_tenth() -> None:
    """At rate 10 and burst 30 frame 31 is rejected with retryAfter 0.1 s."""
    bucket = filled()
    assert bucket.offer(0.0) is R
    assert bucket.retry_after(0.0) == pytest.approx(0.1)


def test_drops_last_until_the_bucket_has_room_again() -> None:
    """After a reject, frames are dropped until a unit drains; one reject per run of refusals."""
    bucket = filled()
    verdicts = [bucket.offer(t) for t in (0.0, 0.03, 0.06, 0.09, 0.1, 0.1, 0.11, 0.2)]
    assert verdicts == [R, D, D, D, A, R, D, A]


@pytest.mark.parametrize(
    ("rate", "seconds", "accepted"),
    [(10.0, 1.0, 10), (10.0, 2.55, 25), (2.0, 3.0, 6), (0.5, 4.0, 2)],
)
def test_the_bucket_drains_at_rate(rate: float, seconds: float, accepted: int) -> None:
    """After `seconds` a full bucket has room for exactly floor(rate * seconds) frames."""
    bucket = filled(rate=rate)
    verdicts = [bucket.offer(seconds) for _ in range(accepted + 1)]
    assert verdicts == [A] * accepted + [R]


def test_an_idle_bucket_empties_but_never_below_zero() -> None:
    """However long a connection is quiet, it gets one burst back, not more."""
    bucket = filled()
    assert [bucket.offer(1_000.0) for _ in range(31)] == [A] * 30 + [R]


def test_a_client_at_exactly_the_rate_is_never_refused() -> None:
    """After a full burst, one frame every 1/rate seconds is always accepted (no float drift)."""
    bucket = filled()
    assert all(bucket.offer(k * 0.1) is A for k in range(1, 2_000))


@pytest.mark.parametrize(
    ("offers", "at", "expected"),
    [
        (30, 0.0, 0.1),
        (30, 0.05, 0.05),
        (30, 0.1, 0.0),
        (29, 0.0, 0.0),
        (0, 0.0, 0.0),
    ],
)
def test_retry_after_is_the_time_until_one_more_frame_fits(
    offers: int, at: float, expected: float
) -> None:
    """retry_after counts the seconds until the level drops by one unit below full."""
    bucket = LeakyBucket(rate=10.0, burst=30.0)
    for _ in range(offers):
        bucket.offer(0.0)
    assert bucket.retry_after(at) == pytest.approx(expected)


def test_retry_after_is_rounded_to_milliseconds() -> None:
    """retryAfter goes on the wire rounded to 3 decimals."""
    bucket = filled(rate=3.0, burst=1.0)
    assert bucket.retry_after(0.0) == 0.333


def test_a_bucket_that_never_drains_has_infinite_retry_after() -> None:
    """With rate 0 there is no time at which another frame fits."""
    bucket = filled(rate=0.0, burst=1.0)
    assert math.isinf(bucket.retry_after(5.0))


def test_refused_frames_do_not_fill_the_bucket() -> None:
    """Rejected and dropped frames cost nothing: room comes back after 1/rate regardless."""
    bucket = filled(rate=1.0, burst=2.0)
    assert [bucket.offer(0.5) for _ in range(50)] == [R] + [D] * 49
    assert bucket.offer(1.0) is A


def test_a_clock_that_goes_backwards_drains_nothing() -> None:
    """An offer stamped before the last update neither drains nor fills the bucket."""
    bucket = filled(now=10.0)
    assert bucket.offer(9.0) is R
    assert bucket.offer(10.1) is A


def flood(bucket: LeakyBucket, start: float, per_second: int) -> float:
    """Offer `per_second` frames a second from `start` until ABUSE; return when it came."""
    for i in range(100 * per_second):
        now = start + i / per_second
        if bucket.offer(now) is X:
            return now
    raise AssertionError("never abuse")


@pytest.mark.parametrize(
    ("rate", "burst", "per_second"), [(10.0, 30.0, 100), (1.0, 3.0, 10), (10.0, 30.0, 11)]
)
def test_a_client_that_keeps_the_bucket_full_for_30_s_is_abuse(
    rate: float, burst: float, per_second: int
) -> None:
    """Flooding faster than `rate` is ABUSE 30 s after the first refusal, though frames get in."""
    bucket = filled(rate, burst)
    assert bucket.offer(0.0) is R
    abuse = flood(bucket, 0.0, per_second)
    assert 30.0 <= abuse <= 30.0 + 2 / per_second  # at 30.0 itself a unit may just fit
    assert bucket.offer(abuse + 0.001) is X


def test_a_flood_still_gets_one_reject_per_run_of_refusals() -> None:
    """Before ABUSE, each frame that gets in is followed by one REJECT, then DROPs."""
    bucket = filled(rate=1.0, burst=3.0)
    verdicts = [bucket.offer(i / 10) for i in range(0, 50)]
    assert verdicts == [R] + [D] * 9 + ([A, R] + [D] * 8) * 4


def test_a_client_that_backs_off_restarts_the_abuse_clock() -> None:
    """A frame accepted with room to spare ends the full spell; flooding again starts anew."""
    bucket = filled(rate=1.0, burst=3.0)
    verdicts = [bucket.offer(i / 10) for i in range(200)]  # 20 s of flooding from 0.0
    assert X not in verdicts and bucket.full_since == 0.0
    assert bucket.offer(23.0) is A  # 3 s of quiet: room for three, one taken
    assert bucket.full_since is None
    abuse = flood(bucket, 23.0, 10)
    assert bucket.full_since == pytest.approx(23.2)  # two more fitted, 23.2 was refused
    assert 53.2 <= abuse <= 53.4


def test_a_slow_bucket_refusing_everything_for_30_s_is_abuse() -> None:
    """With no frame accepted at all, 30 s of refusals is ABUSE."""
    bucket = filled(rate=0.01, burst=1.0)
    assert bucket.offer(1.0) is R
    assert [bucket.offer(t) for t in (2.0, 15.0, 30.99)] == [D, D, D]
    assert bucket.offer(31.0) is X


def test_abuse_after_is_configurable() -> None:
    """`abuse_after` sets the seconds of refusals that make abuse."""
    bucket = LeakyBucket(rate=0.001, burst=1.0, abuse_after=5.0)
    assert [bucket.offer(t) for t in (0.0, 1.0, 5.99, 6.0)] == [A, R, D, X]


@given(
    rate=st.floats(0.1, 1_000),
    burst=st.integers(1, 100),
    gaps=st.lists(st.floats(0, 2), max_size=200),
)
def test_accepted_frames_never_exceed_burst_plus_drained(
    rate: float, burst: int, gaps: list[float]
) -> None:
    """Over any window starting at 0, accepted frames <= burst + rate * elapsed."""
    bucket = LeakyBucket(rate=rate, burst=float(burst))
    now = 0.0
    accepted = 0
    for gap in gaps:
        now += gap
        accepted += bucket.offer(now) is A
        assert accepted <= burst + rate * now + 1e-6
