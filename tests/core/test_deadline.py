"""The timers of one connection (PROTOCOL.md section 2, steps 3-4, and section 3)."""

from __future__ import annotations

import math

import pytest

from roomd.core.deadline import ConnectionDeadlines
from roomd.errors import CloseCode

T0 = 100.0


def start(auth: float = 10.0, interval: float = 25.0, timeout: float = 60.0) -> ConnectionDeadlines:
    """Return the deadlines of a connection accepted at T0 (PROTOCOL.md defaults)."""
    return ConnectionDeadlines.start(
        T0, auth_timeout=auth, heartbeat_interval=interval, heartbeat_timeout=timeout
    )


def test_a_new_connection_first_wakes_for_its_auth_deadline() -> None:
    """Before auth, the earliest deadline is auth_timeout after the accept."""
    deadlines = start()
    assert deadlines.next_wakeup() == T0 + 10
    assert deadlines.due(T0) is None
    assert deadlines.due(T0 + 9.999) is None


@pytest.mark.parametrize("late", [0.0, 0.5, 1_000.0])
def test_no_auth_within_auth_timeout_closes_4001(late: float) -> None:
    """At or after auth_timeout without authOk the connection closes with 4001."""
    deadlines = start()
    deadlines.heard(T0 + 9)  # frames that are not a successful auth do not help
    assert deadlines.due(T0 + 10 + late) is CloseCode.AUTH_TIMEOUT


def test_authentication_stops_the_auth_countdown() -> None:
    """After authOk the auth deadline is gone; the next wake-up is the heartbeat timeout."""
    deadlines = start()
    deadlines.heard(T0 + 5)
    deadlines.authenticated(token_deadline=T0 + 10_000)
    assert deadlines.auth_deadline == math.inf
    assert deadlines.due(T0 + 10) is None
    assert deadlines.next_wakeup() == T0 + 65


def test_pings_are_sent_every_heartbeat_interval() -> None:
    """ping_due says ping at each interval, scheduled from when it was asked; no wake-up."""
    deadlines = start(auth=1_000.0, timeout=1_000.0)
    assert deadlines.ping_due(T0 + 24.9) is False
    assert deadlines.ping_due(T0 + 25) is True
    assert deadlines.ping_due(T0 + 25) is False
    assert deadlines.next_ping == T0 + 50
    assert deadlines.ping_due(T0 + 53) is True  # asked late: the next ping is 25 s later
    assert deadlines.next_ping == T0 + 78
    assert deadlines.ping_due(T0 + 77.9) is False
    assert deadlines.next_wakeup() == T0 + 1_000  # the reader never wakes for a ping


def test_silence_for_heartbeat_timeout_closes_4002() -> None:
    """Nothing heard for heartbeat_timeout: close 4002, at exactly the timeout."""
    deadlines = start()
    deadlines.authenticated(token_deadline=math.inf)
    assert deadlines.due(T0 + 59.999) is None
    assert deadlines.due(T0 + 60) is CloseCode.HEARTBEAT_TIMEOUT


def test_anything_heard_postpones_the_heartbeat_timeout() -> None:
    """Each frame or pong restarts the 60 s of allowed silence."""
    deadlines = start()
    deadlines.authenticated(token_deadline=math.inf)
    for heard in (T0 + 50, T0 + 100, T0 + 150):
        deadlines.heard(heard)
        assert deadlines.due(heard + 59) is not CloseCode.HEARTBEAT_TIMEOUT
    assert deadlines.last_heard == T0 + 150
    assert deadlines.due(T0 + 210) is CloseCode.HEARTBEAT_TIMEOUT


def test_next_wakeup_includes_the_heartbeat_timeout() -> None:
    """The reader wakes for the heartbeat timeout, moved by what it hears."""
    deadlines = start(auth=1_000.0, interval=100.0, timeout=30.0)
    assert deadlines.next_wakeup() == T0 + 30
    deadlines.heard(T0 + 20)
    assert deadlines.next_wakeup() == T0 + 50


def test_an_expired_token_closes_4005() -> None:
    """At the token deadline the connection closes with 4005; not a moment before."""
    deadlines = start(timeout=1_000.0)
    deadlines.authenticated(token_deadline=T0 + 20)
    assert deadlines.next_wakeup() == T0 + 20
    assert deadlines.due(T0 + 19.99) is None
    assert deadlines.due(T0 + 20) is CloseCode.TOKEN_EXPIRED


def test_re_authentication_moves_the_token_deadline() -> None:
    """A later `authenticated` call replaces the token deadline."""
    deadlines = start(timeout=1_000.0)
    deadlines.authenticated(token_deadline=T0 + 20)
    deadlines.authenticated(token_deadline=T0 + 500)
    assert deadlines.due(T0 + 30) is None  # the first token would have expired
    assert deadlines.due(T0 + 500) is CloseCode.TOKEN_EXPIRED


@pytest.mark.parametrize(
    ("authenticated", "silent", "token_expired", "expected"),
    [
        (False, True, False, CloseCode.AUTH_TIMEOUT),
        (True, True, True, CloseCode.HEARTBEAT_TIMEOUT),
        (True, False, True, CloseCode.TOKEN_EXPIRED),
        (True, False, False, None),
    ],
)
def test_close_codes_take_precedence_over_each_other(
    authenticated: bool, silent: bool, token_expired: bool, expected: CloseCode | None
) -> None:
    """When several deadlines have passed: 4001, then 4002, then 4005; else nothing."""
    deadlines = start(auth=10.0, interval=5.0, timeout=60.0)
    now = T0 + 100
    if authenticated:
        deadlines.authenticated(token_deadline=now - 1 if token_expired else math.inf)
    if not silent:
        deadlines.heard(now - 1)
    assert deadlines.due(now) == expected
