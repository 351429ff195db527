"""The trio shell over memory streams, on trio's mock clock."""

from __future__ import annotations

import trio

from .harness import running_server


async def test_two_clients_share_a_room(autojump_clock: trio.testing.MockClock) -> None:
    """A message sent in a room reaches both members with seq 1, the sender included."""
    with trio.fail_after(5):
        async with running_server() as h:
            alice = await h.login("alice")
            joined = await alice.request({"type": "createChatroom", "id": 1})
            assert joined["type"] == "joinSuccess" and joined["host"] == "alice"
            room = joined["roomId"]
            bob = await h.login("bob")
            reply = await bob.request({"type": "joinChatroom", "roomId": room})
            assert [m["aid"] for m in reply["members"]] == ["alice", "bob"]
            assert (await alice.recv())["type"] == "userJoined"
            await bob.send({"type": "message", "roomId": room, "ciphertext": "aGk="})
            for client in (alice, bob):
                msg = await client.recv()
                assert (msg["type"], msg["seq"], msg["from"]) == ("newMessage", 1, "bob")
