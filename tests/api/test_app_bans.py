"""Bans through the server API: kick with `ban`, and `DELETE /v1/rooms/{roomId}/bans/{aid}`.

Kicks and unbans answer once the event bus has taken them; the room applies them
a moment later, so a test waits for every task to block (the bus pump and the
room loop have run) before it checks what a member's next join gets.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import trio
import trio.testing

from ..harness import Client, Harness, running_api_server
from .test_app import TIMEOUT, http, join


async def refused_join(h: Harness, aid: str, room_id: str) -> dict[str, Any]:
    """Log `aid` in and ask to join `room_id`; return the `error` it gets."""
    client = await h.login(aid)
    reply = await client.request({"type": "joinChatroom", "roomId": room_id})
    assert reply["type"] == "error", reply
    return reply


async def settle() -> None:
    """Wait until the bus pump and the room loops have applied what the API published."""
    await trio.testing.wait_all_tasks_blocked()


def bans_path(room_id: str, aid: str) -> str:
    """Return the unban route of `aid` in `room_id`, the AID percent-encoded."""
    return f"/v1/rooms/{room_id}/bans/{quote(aid, safe='')}"


async def test_kick_with_ban_keeps_the_aid_out_until_unbanned() -> None:
    """A banned member is kicked, its joins get forbidden; after the unban (204) it joins again."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            body = {"aid": "bob", "ban": True}
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", body)
            assert (reply.status, reply.body) == (204, b"")
            assert await bob.recv() == {
                "type": "leftChatroom",
                "roomId": room_id,
                "reason": "kicked",
            }
            for client in (alice, carol):
                assert await client.recv() == {
                    "type": "userLeft",
                    "roomId": room_id,
                    "aid": "bob",
                    "reason": "kicked",
                }
            # Refused on the kicked connection and on a new one alike.
            again = await bob.request({"type": "joinChatroom", "roomId": room_id})
            assert (again["type"], again["code"]) == ("error", "forbidden")
            assert (await refused_join(h, "bob", room_id))["code"] == "forbidden"
            room = (await http(h, "GET", f"/v1/rooms/{room_id}")).json()
            assert [m["aid"] for m in room["members"]] == ["alice", "carol"]
            # Others may still join; the ban is bob's alone.
            await join(h, "dave", room_id)
            for client in (alice, carol):
                assert (await client.recv())["aid"] == "dave"

            reply = await http(h, "DELETE", bans_path(room_id, "bob"))
            assert (reply.status, reply.body) == (204, b"")
            await settle()
            back = await bob.request({"type": "joinChatroom", "roomId": room_id})
            assert back["type"] == "joinSuccess", back
            for client in (alice, carol):
                joined = await client.recv()
                assert (joined["type"], joined["aid"]) == ("userJoined", "bob")
            # Unbanned now: a second unban finds no ban.
            reply = await http(h, "DELETE", bans_path(room_id, "bob"))
            assert (reply.status, reply.error_code) == (404, "notFound")
            assert alice.pending() == carol.pending() == []


async def test_ban_of_an_absent_aid_is_204_and_binds_its_first_join() -> None:
    """Kick with `ban: true` of an AID not in the room answers 204 and it may not join."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice,) = await h.open_room("alice")
            kick = f"/v1/rooms/{room_id}/kick"
            for body in ({"aid": "mallory"}, {"aid": "mallory", "ban": False}):
                reply = await http(h, "POST", kick, body)
                assert (reply.status, reply.error_code) == (404, "notFound")
            reply = await http(h, "POST", kick, {"aid": "mallory", "ban": True})
            assert (reply.status, reply.body) == (204, b"")
            await settle()
            assert (await refused_join(h, "mallory", room_id))["code"] == "forbidden"
            assert alice.pending() == []
            assert (await http(h, "DELETE", bans_path(room_id, "mallory"))).status == 204
            await settle()
            await join(h, "mallory", room_id)
            assert (await alice.recv())["aid"] == "mallory"


async def test_ban_in_a_room_nobody_is_in_holds_when_someone_joins() -> None:
    """A ban of an API-made room with no members (dormant) binds; the unban lifts it."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            assert (await http(h, "POST", "/v1/rooms", {"roomId": "quiet"})).status == 201
            reply = await http(h, "POST", "/v1/rooms/quiet/kick", {"aid": "mallory", "ban": True})
            assert reply.status == 204
            await settle()
            assert (await refused_join(h, "mallory", "quiet"))["code"] == "forbidden"
            # The refused join left the room as it was: empty and hostless.
            room = (await http(h, "GET", "/v1/rooms/quiet")).json()
            assert (room["members"], room["host"]) == ([], None)
            assert (await http(h, "DELETE", bans_path("quiet", "mallory"))).status == 204
            await settle()
            await join(h, "mallory", "quiet")


async def test_unban_of_an_aid_that_is_not_banned_is_404_and_of_a_bad_aid_400() -> None:
    """Unban answers 404 for an AID without a ban (even a member), 400 for a malformed AID."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, carol) = await h.open_room("alice", "carol")
            body = {"aid": "bob", "ban": True}
            assert (await http(h, "POST", f"/v1/rooms/{room_id}/kick", body)).status == 204
            for aid in ("nobody", "alice", "carol", "Bob", "bob "):
                reply = await http(h, "DELETE", bans_path(room_id, aid))
                assert (reply.status, reply.error_code) == (404, "notFound"), aid
            # "bob\n" is not bob: malformed (not printable), and bob stays banned.
            for aid in ("bob\n", "bad\naid", "tab\there", "a" * 129, ""):
                reply = await http(h, "DELETE", bans_path(room_id, aid))
                assert reply.status == 400, (aid, reply)
                assert reply.error_code in {"badRequest", "tooLarge"}
            await settle()
            assert (await refused_join(h, "bob", room_id))["code"] == "forbidden"
            assert (await http(h, "DELETE", bans_path(room_id, "bob"))).status == 204
            assert alice.pending() == carol.pending() == []


async def test_an_aid_with_a_slash_can_be_banned_and_unbanned() -> None:
    """AIDs may hold '/', sent percent-encoded: the unban route finds that AID's ban."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice,) = await h.open_room("alice")
            aid = "team/bob ü"
            body = {"aid": aid, "ban": True}
            assert (await http(h, "POST", f"/v1/rooms/{room_id}/kick", body)).status == 204
            await settle()
            assert (await refused_join(h, aid, room_id))["code"] == "forbidden"
            reply = await http(h, "DELETE", bans_path(room_id, "team"))
            assert reply.status == 404
            assert (await http(h, "DELETE", bans_path(room_id, aid))).status == 204
            await settle()
            await join(h, aid, room_id)
            assert (await alice.recv())["aid"] == aid


@pytest.mark.parametrize("ban", ["yes", "true", 1, 0, None, [], {}], ids=repr)
async def test_kick_with_a_ban_that_is_not_a_boolean_is_400_and_does_nothing(ban: object) -> None:
    """`ban` must be true or false: anything else answers 400 and neither kicks nor bans."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob) = await h.open_room("alice", "bob")
            for aid in ("bob", "mallory"):
                body = {"aid": aid, "ban": ban}
                reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", body)
                assert (reply.status, reply.error_code) == (400, "badRequest"), aid
            await settle()
            room = (await http(h, "GET", f"/v1/rooms/{room_id}")).json()
            assert [m["aid"] for m in room["members"]] == ["alice", "bob"]
            assert alice.pending() == bob.pending() == []
            mallory: Client = await join(h, "mallory", room_id)
            assert mallory.pending() == []
