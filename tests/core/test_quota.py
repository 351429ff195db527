"""Room quotas: rooms per server and rooms per hosting AID (PROTOCOL.md 1.1 §5, Limits)."""

from __future__ import annotations

import pytest

from roomd.core.quota import RoomQuota
from roomd.errors import ErrorCode, ProtocolError


def refused(quota: RoomQuota, host: str | None, *, per_aid: bool = True) -> str:
    """Assert that reserving a room for `host` is `tooManyRooms` and changes nothing."""
    before = (quota.rooms, dict(quota.hosted))
    with pytest.raises(ProtocolError) as info:
        quota.reserve(host, per_aid=per_aid)
    assert info.value.code is ErrorCode.TOO_MANY_ROOMS
    assert (quota.rooms, dict(quota.hosted)) == before
    return info.value.message


@pytest.mark.parametrize("limit", [1, 2, 64])
def test_an_aid_hosts_at_most_max_rooms_per_aid(limit: int) -> None:
    """The limit-th room is admitted, the next refused; another AID is not affected."""
    quota = RoomQuota(max_rooms_per_aid=limit)
    for _ in range(limit):
        quota.reserve("alice")
    assert refused(quota, "alice") == f"'alice' already hosts {limit} rooms"
    quota.reserve("bob")
    assert quota.hosted == {"alice": limit, "bob": 1} and quota.rooms == limit + 1


@pytest.mark.parametrize("limit", [1, 3])
def test_the_server_holds_at_most_max_rooms(limit: int) -> None:
    """Past `max_rooms` every creation is refused, the API's and hostless ones included."""
    quota = RoomQuota(max_rooms=limit)
    for index in range(limit):
        quota.reserve(f"aid{index}")
    for host, per_aid in (("new", True), ("new", False), (None, False)):
        assert refused(quota, host, per_aid=per_aid) == (
            f"this server holds its limit of {limit} rooms"
        )


def test_zero_means_no_limit() -> None:
    """With both limits 0 any number of rooms and hosted rooms are admitted."""
    quota = RoomQuota()
    for _ in range(1_000):
        quota.reserve("alice")
    assert quota.rooms == 1_000 and quota.hosted["alice"] == 1_000


def test_rooms_made_by_the_api_count_for_their_host_but_are_not_refused() -> None:
    """`per_aid=False` ignores the per-AID limit, and the room still counts for its host."""
    quota = RoomQuota(max_rooms_per_aid=1)
    quota.reserve("alice", per_aid=False)
    quota.reserve("alice", per_aid=False)
    assert quota.hosted["alice"] == 2
    refused(quota, "alice")


@pytest.mark.parametrize(
    ("change", "alice_may_create"),
    [
        ("nothing", False),
        ("release", True),
        ("transfer to bob", True),
        ("transfer to nobody", True),
        ("transfer to alice again", False),
    ],
)
def test_a_deletion_or_a_host_transfer_frees_the_place(change: str, alice_may_create: bool) -> None:
    """A room released (deleted, expired) or handed to another host no longer counts for alice."""
    quota = RoomQuota(max_rooms_per_aid=1)
    quota.reserve("alice")
    if change == "release":
        quota.release("alice")
    elif change == "transfer to bob":
        quota.host_changed("alice", "bob")
    elif change == "transfer to nobody":
        quota.host_changed("alice", None)
    elif change == "transfer to alice again":
        quota.host_changed("alice", "alice")
    if alice_may_create:
        quota.reserve("alice")
    else:
        refused(quota, "alice")


def test_counts_go_back_to_zero_without_leaving_entries() -> None:
    """Releasing every room leaves no AID behind (no leak) and no room counted."""
    quota = RoomQuota(max_rooms=10, max_rooms_per_aid=10)
    quota.reserve("alice")
    quota.reserve(None)
    quota.host_changed("alice", "bob")
    quota.release("bob")
    quota.release(None)
    assert quota.rooms == 0 and quota.hosted == {}
