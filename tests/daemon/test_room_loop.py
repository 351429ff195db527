"""Room loops through the trio shell: expiry, fan-out, slow consumers and room operations."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from roomd.daemon.bus import Delete
from roomd.daemon.room_loop import Join
from roomd.daemon.session import Session

from ..harness import Client, Harness, running_server

TTL = 24 * 3600.0


def message(room: str, text: str = "aGk=") -> dict[str, Any]:
    """Return a `message` for `room` carrying the base64 ciphertext `text`."""
    return {"type": "message", "roomId": room, "ciphertext": text}


# -- expiry -------------------------------------------------------------------------


async def test_empty_room_expires_after_room_ttl(autojump_clock: trio.testing.MockClock) -> None:
    """A room left empty is deleted room_ttl later; joining it then gets notFound."""
    with trio.fail_after(2 * TTL):
        async with running_server() as h:
            room, (alice,) = await h.open_room("alice")
            assert (await alice.request({"type": "leaveChatroom", "roomId": room}))["type"] == (
                "leftChatroom"
            )
            await alice.close()
            await trio.sleep(TTL - 1)
            assert room in h.registry
            await trio.sleep(2)
            assert h.registry.room_ids() == []
            assert not h.registry.nursery.child_tasks  # the room task ended too
            bob = await h.login("bob")
            reply = await bob.request({"type": "joinChatroom", "roomId": room, "id": "j"})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "notFound", "j")


async def _alice_s_room_and_bob(h: Harness) -> tuple[str, Client, Client, Session]:
    """Return alice's new room, alice, and bob logged in (not a member) with his session."""
    room, (alice,) = await h.open_room("alice")
    bob = await h.login("bob")
    return room, alice, bob, h.session_of("bob")


async def _emptied_nearly_ttl_ago(h: Harness) -> tuple[str, Client]:
    """Return a room alice created and left TTL - 10 s ago, and a logged-in bob."""
    room, (alice,) = await h.open_room("alice")
    await alice.close()
    await trio.sleep(TTL - 10)
    return room, await h.login("bob", ttl=3 * TTL)


async def test_join_cancels_expiry_and_countdown_restarts_when_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join before the deadline keeps the room; the countdown restarts when it empties again."""
    with trio.fail_after(4 * TTL):
        # Hourly pings instead of every 25 s: the same test, 100 times fewer wake-ups.
        async with running_server(heartbeat_interval=3600, heartbeat_timeout=7200) as h:
            room, bob = await _emptied_nearly_ttl_ago(h)
            reply = await bob.request({"type": "joinChatroom", "roomId": room})
            assert (reply["type"], reply["host"]) == ("joinSuccess", "bob")
            assert await bob.listen(TTL + 100) == [
                {"type": "hostUpdated", "roomId": room, "host": "bob"}
            ]
            assert room in h.registry
            await bob.request({"type": "leaveChatroom", "roomId": room})
            await bob.close()
            await trio.sleep(TTL - 1)
            assert room in h.registry
            await trio.sleep(2)
            assert h.registry.room_ids() == []
            assert not h.registry.nursery.child_tasks


async def test_a_join_and_leave_in_one_burst_restart_the_countdown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join and a leave applied together still restart the ttl from the leave."""
    with trio.fail_after(4 * TTL):
        async with running_server(heartbeat_interval=3600, heartbeat_timeout=7200) as h:
            room, bob = await _emptied_nearly_ttl_ago(h)
            # One write carrying both frames, so the room loop applies them in one batch.
            await bob.send_together(
                {"type": "joinChatroom", "roomId": room}, {"type": "leaveChatroom", "roomId": room}
            )
            assert (await bob.recv_type("leftChatroom"))["reason"] == "left"
            await trio.sleep(20)  # past the old deadline
            assert room in h.registry
            await trio.sleep(TTL)
            assert h.registry.room_ids() == []


async def test_a_join_queued_behind_the_room_s_deletion_is_answered_not_found(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join still in the inbox when the room is deleted gets notFound with its id, not silence."""
    with trio.fail_after(30):
        async with running_server() as h:
            room, alice, bob, session = await _alice_s_room_and_bob(h)
            handle = h.registry.live[room]
            session.connection.joining[room] += 1  # as the reader counts a join it hands on
            # Both queued in one turn: the loop applies the deletion first, then stops.
            handle.inbox_send.send_nowait(Delete(room, "deleted"))
            handle.inbox_send.send_nowait(Join(session, "bob", None, "j1"))
            assert (await alice.recv())["type"] == "roomDeleted"
            reply = await bob.recv()
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "notFound", "j1")
            assert room not in session.connection.joining


# -- fan-out and closing ----------------------------------------------------------


async def test_a_join_arriving_after_its_connection_closed_is_not_applied(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A join still queued when its connection went (and left) leaves no ghost member."""
    with trio.fail_after(30):
        async with running_server() as h:
            room, alice, bob, session = await _alice_s_room_and_bob(h)
            await bob.abort()
            await trio.testing.wait_all_tasks_blocked()
            assert session.close_code is not None  # gone, and its leaves already sent
            # A join that sat behind a full inbox reaches the room only now.
            handle = h.registry.live[room]
            await handle.inbox_send.send(Join(session, "bob", None, None))
            await trio.testing.wait_all_tasks_blocked()
            assert list(handle.room.members) == ["alice"]
            assert await alice.drain() == []


async def test_slow_consumer_closed_with_4003_without_stalling_the_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A member that stops reading is closed with 4003; the others get every message in order."""
    with trio.fail_after(10):
        async with running_server(send_queue=8) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            slow = await h.login("slow", pair=trio.testing.lockstep_stream_pair)
            assert (await slow.request({"type": "joinChatroom", "roomId": room}))["type"] == (
                "joinSuccess"
            )
            for client in (alice, bob):
                assert (await client.recv())["aid"] == "slow"
            session = h.session_of("slow")
            for n in range(1, 21):
                await alice.send(message(room))
                for client in (alice, bob):
                    got = await client.recv()
                    assert (got["type"], got["seq"]) == ("newMessage", n)
            assert session.close_code == 4003
            assert await slow.expect_close() == 4003
            for client in (alice, bob):
                left = await client.recv()
                assert left == {
                    "type": "userLeft",
                    "roomId": room,
                    "aid": "slow",
                    "reason": "disconnected",
                }


@pytest.mark.parametrize("how", ["clean", "abrupt"])
async def test_closing_host_tells_room_and_moves_host_to_longest_present(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """A closed host's room gets userLeft disconnected, then hostUpdated to the next oldest."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            if how == "clean":
                await alice.close()
                assert alice.close_code == 1000
            else:
                await alice.abort()
            for client in (bob, carol):
                assert await client.recv() == {
                    "type": "userLeft",
                    "roomId": room,
                    "aid": "alice",
                    "reason": "disconnected",
                }
                assert await client.recv() == {"type": "hostUpdated", "roomId": room, "host": "bob"}
            await trio.testing.wait_all_tasks_blocked()
            assert len(h.sessions) == 2


async def test_userleft_only_when_the_aids_last_connection_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closing one of an AID's two connections tells the room nothing; closing the last does."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            second = await h.login("bob")
            reply = await second.request({"type": "joinChatroom", "roomId": room})
            assert [m["aid"] for m in reply["members"]] == ["alice", "bob"]
            await second.close()
            assert await alice.drain() == []
            await bob.abort()
            left = await alice.recv()
            assert (left["type"], left["aid"], left["reason"]) == (
                "userLeft",
                "bob",
                "disconnected",
            )


# -- limits and membership ----------------------------------------------------------


async def test_too_many_rooms_at_max_rooms_per_conn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A connection already in max_rooms_per_conn rooms cannot create or join another."""
    with trio.fail_after(10):
        async with running_server(max_rooms_per_conn=2) as h:
            other = (await (await h.login("bob")).request({"type": "createChatroom"}))["roomId"]
            alice = await h.login("alice")
            first = (await alice.request({"type": "createChatroom"}))["roomId"]
            assert (await alice.request({"type": "createChatroom"}))["type"] == "joinSuccess"
            reply = await alice.request({"type": "createChatroom", "id": 3})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "tooManyRooms", 3)
            reply = await alice.request({"type": "joinChatroom", "roomId": other})
            assert (reply["code"], reply["roomId"]) == ("tooManyRooms", other)
            again = await alice.request({"type": "joinChatroom", "roomId": first})
            assert again["type"] == "joinSuccess"  # a room it is already in costs nothing
            await alice.request({"type": "leaveChatroom", "roomId": first})
            reply = await alice.request({"type": "joinChatroom", "roomId": other})
            assert reply["type"] == "joinSuccess", reply


async def test_not_member_and_not_found(autojump_clock: trio.testing.MockClock) -> None:
    """Room messages for a room the connection is not in get notMember; a missing room notFound."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice,) = await h.open_room("alice")
            bob = await h.login("bob")
            for msg in (
                message(room),
                {"type": "typing", "roomId": room, "isTyping": True},
                {"type": "leaveChatroom", "roomId": room},
                {"type": "deleteChatroom", "roomId": room},
                message("no-such-room"),
            ):
                reply = await bob.request({**msg, "id": "x"})
                assert (reply["type"], reply["code"]) == ("error", "notMember"), msg
                assert (reply["id"], reply["roomId"]) == ("x", msg["roomId"])
            reply = await bob.request({"type": "joinChatroom", "roomId": "no-such-room"})
            assert (reply["code"], reply["roomId"]) == ("notFound", "no-such-room")
            assert await alice.drain() == []


@pytest.mark.parametrize(
    "op",
    [
        {"type": "updateRoomKey", "encryptedRoomKey": "a2V5"},
        {"type": "transferHost", "to": "bob"},
        {"type": "kick", "aid": "alice"},
        {"type": "deleteChatroom"},
    ],
    ids=lambda op: op["type"],
)
async def test_host_only_operations_forbidden_to_others(
    autojump_clock: trio.testing.MockClock, op: dict[str, Any]
) -> None:
    """A member who is not host gets forbidden for a host-only operation, which changes nothing."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            reply = await bob.request({**op, "roomId": room, "id": 5})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "forbidden", 5)
            assert await alice.drain() == []
            assert (await bob.request(message(room)))["type"] == "newMessage"


# -- room operations ----------------------------------------------------------------


async def test_host_operations_are_observed_by_every_member(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """updateRoomKey, transferHost, kick and deleteChatroom reach every member in one order."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, clients = await h.open_room("alice", "bob", "carol")
            alice, bob, carol = clients
            await alice.send({"type": "updateRoomKey", "roomId": room, "encryptedRoomKey": "a2V5"})
            await alice.send({"type": "transferHost", "roomId": room, "to": "bob"})
            expected = [
                {
                    "type": "roomKeyUpdated",
                    "roomId": room,
                    "encryptedRoomKey": "a2V5",
                    "by": "alice",
                    "keyEpoch": 1,
                },
                {"type": "hostUpdated", "roomId": room, "host": "bob"},
            ]
            for client in clients:
                assert [await client.recv() for _ in expected] == expected
            reply = await alice.request({"type": "kick", "roomId": room, "aid": "carol"})
            assert reply["code"] == "forbidden"  # alice is no longer host
            await bob.send({"type": "kick", "roomId": room, "aid": "carol"})
            assert await carol.recv() == {
                "type": "leftChatroom",
                "roomId": room,
                "reason": "kicked",
            }
            kicked = {"type": "userLeft", "roomId": room, "aid": "carol", "reason": "kicked"}
            for client in (alice, bob):
                assert await client.recv() == kicked
            assert (await carol.request(message(room)))["code"] == "notMember"
            await bob.send({"type": "deleteChatroom", "roomId": room})
            for client in (alice, bob):
                deleted = await client.recv()
                assert deleted == {"type": "roomDeleted", "roomId": room, "reason": "deleted"}
            assert await carol.drain() == []
            await trio.testing.wait_all_tasks_blocked()
            assert h.registry.room_ids() == []
            assert (await alice.request(message(room)))["code"] == "notMember"
            reply = await carol.request({"type": "joinChatroom", "roomId": room})
            assert reply["code"] == "notFound"


async def test_signal_reaches_every_connection_of_the_target(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A signal reaches each connection of `to` and nobody else; an absent `to` gets notFound."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            bob2 = await h.login("bob")
            await bob2.request({"type": "joinChatroom", "roomId": room})
            await alice.send({"type": "signal", "roomId": room, "to": "bob", "payload": "c2ln"})
            expected = {"type": "signal", "roomId": room, "from": "alice", "payload": "c2ln"}
            for client in (bob, bob2):
                assert await client.recv() == expected
            assert await alice.drain() == []
            assert await carol.drain() == []
            reply = await alice.request(
                {"type": "signal", "roomId": room, "to": "dave", "payload": "c2ln", "id": 9}
            )
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "notFound", 9)


async def test_typing_is_not_echoed_to_the_sender(autojump_clock: trio.testing.MockClock) -> None:
    """Typing reaches the other members only."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            await alice.send({"type": "typing", "roomId": room, "isTyping": True, "id": 1})
            assert await bob.recv() == {
                "type": "typing",
                "roomId": room,
                "aid": "alice",
                "isTyping": True,
            }
            assert await alice.drain() == []


async def test_id_is_echoed_in_direct_replies_only(autojump_clock: trio.testing.MockClock) -> None:
    """`id` comes back in joinSuccess, leftChatroom and error, never in a broadcast."""
    with trio.fail_after(10):
        async with running_server() as h:
            alice = await h.login("alice")
            created = await alice.request({"type": "createChatroom", "id": "create"})
            room = created["roomId"]
            assert created["id"] == "create"
            bob: Client = await h.login("bob")
            joined = await bob.request({"type": "joinChatroom", "roomId": room, "id": 2**53})
            assert (joined["type"], joined["id"]) == ("joinSuccess", 2**53)
            assert "id" not in await alice.recv()  # userJoined
            await bob.send({**message(room), "id": "m", "clientMsgId": "c"})
            for client in (alice, bob):
                got = await client.recv()
                assert got["clientMsgId"] == "c" and "id" not in got
            await bob.send(
                {"type": "reaction", "roomId": room, "messageId": "x", "emoji": "+", "id": 1}
            )
            for client in (alice, bob):
                assert "id" not in await client.recv()
            left = await bob.request({"type": "leaveChatroom", "roomId": room, "id": -1})
            assert (left["type"], left["reason"], left["id"]) == ("leftChatroom", "left", -1)
            assert "id" not in await alice.recv()  # userLeft
            error = await bob.request({"type": "nonsense", "id": "e"})
            assert (error["type"], error["code"], error["id"]) == ("error", "badRequest", "e")
