"""The chat's member list and typing line."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from roomd.chat.roster import TYPING_EXPIRY, Roster


def roster() -> Roster:
    """Return bob's roster of a room alice hosts, with carol in it."""
    room = Roster("bob")
    room.joined("alice", ["bob", "alice", "carol"])
    return room


def test_the_host_comes_first_and_marked() -> None:
    """The member list puts the host first with a mark, and marks this client."""
    assert roster().member_lines() == ["members", "★ alice (host)", "  bob (you)", "  carol"]


def test_presence_events_change_the_list() -> None:
    """Arrivals, departures and a new host show; offline marks the list as stale."""
    room = roster()
    room.arrived("dave")
    room.left("carol")
    room.host_is("bob")
    room.offline()
    assert room.member_lines() == ["members (offline)", "★ bob (host) (you)", "  alice", "  dave"]
    room.joined("alice", ["alice"])
    assert room.member_lines() == ["members", "★ alice (host)"]
    room.gone()
    assert room.member_lines() == ["members"]


@pytest.mark.parametrize(
    "typists, line",
    [
        ([], ""),
        (["carol"], "carol is typing…"),
        (["carol", "dave"], "carol and dave are typing…"),
        (["carol", "dave", "erin"], "carol, dave and erin are typing…"),
        (["carol", "dave", "erin", "fay"], "4 people are typing…"),
    ],
)
def test_the_typing_line_names_who_types(typists: list[str], line: str) -> None:
    """The typing line names up to three typists, then counts them."""
    room = roster()
    for aid in typists:
        room.typing(aid, True, now=0.0)
    assert room.typing_line() == line


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda room: room.typing("carol", False, now=1.0), id="says so"),
        pytest.param(lambda room: room.sent("carol"), id="sends"),
        pytest.param(lambda room: room.left("carol"), id="leaves"),
        pytest.param(lambda room: room.offline(), id="this client drops"),
        pytest.param(lambda room: room.expire(TYPING_EXPIRY + 0.1), id="expires"),
    ],
)
def test_typing_stops(stop: Callable[[Roster], object]) -> None:
    """A typist stops showing when it stops, sends, leaves, the client drops, or it expires."""
    room = roster()
    room.typing("carol", True, now=0.0)
    assert not room.expire(TYPING_EXPIRY - 0.1)
    stop(room)
    assert room.typing_line() == ""


def test_this_client_never_shows_as_typing() -> None:
    """The typing line is about the others."""
    room = roster()
    room.typing("bob", True, now=0.0)
    assert room.typing_line() == ""
