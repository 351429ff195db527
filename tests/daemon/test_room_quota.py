"""Room quotas through the trio shell: per hosting AID across connections, and per server."""

from __future__ import annotations

import trio
import trio.testing

from ..harness import Client, running_server

TTL = 3600.0


async def create(client: Client, request_id: int) -> dict[str, object]:
    """Send createChatroom with `request_id` and return the direct reply."""
    return await client.request({"type": "createChatroom", "id": request_id})


def too_many(reply: dict[str, object], request_id: int) -> bool:
    """True when `reply` is the `tooManyRooms` error answering `request_id`."""
    return (reply["type"], reply.get("code"), reply.get("id")) == (
        "error",
        "tooManyRooms",
        request_id,
    )


async def test_the_per_aid_quota_spans_connections_and_counts_empty_rooms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two connections of one AID share max_rooms_per_aid; leaving a room does not free it."""
    with trio.fail_after(60):
        async with running_server(max_rooms_per_aid=2) as h:
            first = await h.login("alice")
            second = await h.login("alice")
            room = (await create(first, 1))["roomId"]
            assert (await create(second, 2))["type"] == "joinSuccess"
            assert too_many(await create(first, 3), 3)
            left = await first.request({"type": "leaveChatroom", "roomId": room})
            assert left["type"] == "leftChatroom"
            assert too_many(await create(first, 4), 4)  # the empty room still counts
            bob = await h.login("bob")
            assert (await create(bob, 5))["type"] == "joinSuccess"


async def test_deleting_a_room_or_handing_it_over_frees_the_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After deleteChatroom, or transferHost to another member, the host may create again."""
    with trio.fail_after(60):
        async with running_server(max_rooms_per_aid=1) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            assert too_many(await create(alice, 1), 1)
            await alice.send({"type": "transferHost", "roomId": room, "to": "bob"})
            assert (await alice.recv_type("hostUpdated"))["host"] == "bob"
            assert (await bob.recv_type("hostUpdated"))["host"] == "bob"
            mine = await create(alice, 2)
            assert mine["type"] == "joinSuccess"
            assert too_many(await create(alice, 3), 3)
            await alice.send({"type": "deleteChatroom", "roomId": mine["roomId"]})
            assert (await alice.recv_type("roomDeleted"))["roomId"] == mine["roomId"]
            assert (await create(alice, 4))["type"] == "joinSuccess"
            assert too_many(await create(bob, 5), 5)  # bob hosts the first room now


async def test_an_expired_room_frees_its_host_s_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A room left empty until room_ttl expires, and its last host may create another."""
    with trio.fail_after(4 * TTL):
        async with running_server(
            max_rooms_per_aid=1, room_ttl=TTL, heartbeat_interval=TTL, heartbeat_timeout=2 * TTL
        ) as h:
            alice = await h.login("alice", ttl=4 * TTL)
            room = (await create(alice, 1))["roomId"]
            await alice.request({"type": "leaveChatroom", "roomId": room})
            assert too_many(await create(alice, 2), 2)
            await trio.sleep(TTL + 1)
            assert room not in h.registry
            assert (await create(alice, 3))["type"] == "joinSuccess"


async def test_max_rooms_bounds_the_server(autojump_clock: trio.testing.MockClock) -> None:
    """Past --max-rooms a createChatroom from anyone is tooManyRooms."""
    with trio.fail_after(60):
        async with running_server(max_rooms=2) as h:
            alice, bob = await h.login("alice"), await h.login("bob")
            assert (await create(alice, 1))["type"] == "joinSuccess"
            assert (await create(bob, 2))["type"] == "joinSuccess"
            reply = await create(bob, 3)
            assert too_many(reply, 3) and "limit of 2 rooms" in str(reply["message"])
            assert len(h.registry) == 2
