"""The sliding-window limit (roomd/core/window.py): the demo's tokens per client IP."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core.window import SlidingWindow


def test_the_event_past_the_limit_waits_for_the_oldest_to_leave() -> None:
    """Five events in a minute are counted; the sixth is told when the first leaves the window."""
    window = SlidingWindow(limit=5, window=60.0)
    assert [window.take("ip", t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)] == [None] * 5
    assert window.take("ip", 10.0) == pytest.approx(50.0)
    assert window.take("ip", 59.5) == pytest.approx(0.5)
    assert window.take("ip", 60.0) is None  # the event of 0.0 has left
    assert window.take("ip", 60.5) == pytest.approx(0.5)  # the next leaves at 61
    assert window.take("other", 60.5) is None


def test_a_refused_event_is_not_counted() -> None:
    """Refusals do not push the window on: a key that keeps asking recovers on time."""
    window = SlidingWindow(limit=1, window=10.0)
    assert window.take("ip", 0.0) is None
    for t in range(1, 10):
        assert window.take("ip", float(t)) == pytest.approx(10.0 - t)
    assert window.take("ip", 10.0) is None


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=60))
def test_no_window_ever_holds_more_than_the_limit(offsets: list[float]) -> None:
    """Whatever the times, no span of `window` seconds holds more than `limit` counted events."""
    window = SlidingWindow(limit=3, window=60.0)
    times = sorted(offsets)
    counted = [t for t in times if window.take("ip", t) is None]
    for i, start in enumerate(counted):
        assert len([t for t in counted[i:] if t < start + 60.0]) <= 3


def test_state_is_bounded_and_the_least_recently_offered_key_is_forgotten() -> None:
    """At most `max_keys` keys are kept; past it the least recently offered one starts afresh."""
    window = SlidingWindow(limit=1, window=60.0, max_keys=3)
    for key in ("a", "b", "c"):
        assert window.take(key, 0.0) is None
    assert window.take("a", 1.0) is not None  # refused, and now the most recent
    assert window.take("d", 2.0) is None
    assert len(window) == 3
    assert window.take("a", 3.0) is not None  # still kept: "b" went
    assert window.take("b", 3.0) is None  # forgotten, so counted afresh
    assert len(window) == 3
    for i in range(1000):
        window.take(f"ip{i}", 4.0)
    assert len(window) == 3
