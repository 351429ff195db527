"""The protocol-1.1 reads of the server API: history pages and a room's epochs.

`GET /v1/rooms/{roomId}/messages` must answer what a member's `getHistory` would
(PROTOCOL.md section 8.3), with the blobs base64, and `GET /v1/rooms/{roomId}`
must show the stream epoch and the key epoch members see.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import pytest
import trio
import trio.testing

from ..harness import Client, Harness, running_api_server
from .test_app import TIMEOUT, b64, http

URL_SAFE_EPOCH = re.compile(r"[A-Za-z0-9_-]{8,32}")


async def send_messages(
    room_id: str, senders: list[Client], bodies: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Send each body as a `message`, senders taking turns; return the `newMessage`s, in order.

    Every sender is a member, so each reads every `newMessage`; what the first
    sender received is returned, without `type` and `roomId` (a history entry).
    """
    received = []
    for n, body in enumerate(bodies):
        await senders[n % len(senders)].send({"type": "message", "roomId": room_id, **body})
        events = [await client.recv_type("newMessage") for client in senders]
        assert all(event == events[0] for event in events), events
        entry = dict(events[0])
        del entry["type"], entry["roomId"]
        received.append(entry)
    return received


async def history(h: Harness, room_id: str, **query: int) -> dict[str, Any]:
    """Return the body of a 200 answer to `GET /v1/rooms/{room_id}/messages?query`."""
    target = f"/v1/rooms/{room_id}/messages"
    if query:
        target += "?" + urlencode(query)
    reply = await http(h, "GET", target)
    assert reply.status == 200, reply
    page: dict[str, Any] = reply.json()
    assert set(page) == {"roomId", "epoch", "messages", "more"}, page
    assert page["roomId"] == room_id
    return page


async def test_history_over_the_api_is_what_members_received_base64_and_in_order() -> None:
    """The messages route answers every field of each `newMessage`, oldest first, blobs base64."""
    bodies: list[dict[str, Any]] = [
        {"ciphertext": b64(b"\x00\xff first")},
        {"ciphertext": b64(b"second"), "iv": b64(b"\x01iv\xfe" * 3), "clientMsgId": "c-2"},
        {"ciphertext": b64(b"third"), "keyEpoch": 0},
        {"ciphertext": b64(bytes(range(256)) * 8)},
        {"ciphertext": b64(b"fifth"), "iv": b64(b"iv"), "clientMsgId": "c-5", "keyEpoch": 0},
    ]
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            alice = await h.login("alice")
            created = await alice.request({"type": "createChatroom"})
            room_id = created["roomId"]
            bob = await h.login("bob")
            assert (await bob.request({"type": "joinChatroom", "roomId": room_id}))["type"] == (
                "joinSuccess"
            )
            assert (await alice.recv())["type"] == "userJoined"
            sent = await send_messages(room_id, [alice, bob], bodies)
            assert [entry["from"] for entry in sent] == ["alice", "bob"] * 2 + ["alice"]
            assert "iv" in sent[1] and "keyEpoch" in sent[2] and "clientMsgId" in sent[4]

            page = await history(h, room_id)
            assert page == {
                "roomId": room_id,
                "epoch": created["epoch"],
                "messages": sent,
                "more": False,
            }
            room = (await http(h, "GET", f"/v1/rooms/{room_id}")).json()
            assert (room["epoch"], room["lastSeq"]) == (page["epoch"], 5)
            # A member's own getHistory gets the same page.
            reply = await alice.request({"type": "getHistory", "roomId": room_id})
            del reply["type"]
            assert reply == page
            # Reading history tells the members nothing.
            assert alice.pending() == bob.pending() == []


async def test_history_pages_by_before_and_limit_with_more_at_the_boundaries() -> None:
    """`before` excludes its own seq and older pages follow `more`; limits 1 and 100 are exact."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(rate=1000.0, burst=1000.0) as h:
            room_id, (alice,) = await h.open_room("alice")
            bodies = [{"ciphertext": b64(f"m{n}".encode())} for n in range(1, 102)]
            sent = await send_messages(room_id, [alice], bodies)
            assert [entry["seq"] for entry in sent] == list(range(1, 102))

            def seqs(page: dict[str, Any]) -> list[int]:
                return [entry["seq"] for entry in page["messages"]]

            default = await history(h, room_id)
            assert (seqs(default), default["more"]) == (list(range(52, 102)), True)
            widest = await history(h, room_id, limit=100)
            assert (seqs(widest), widest["more"]) == (list(range(2, 102)), True)
            assert widest["messages"] == sent[1:]
            newest = await history(h, room_id, limit=1)
            assert (newest["messages"], newest["more"]) == ([sent[-1]], True)
            for before, limit, expected, more in [
                (102, 100, range(2, 102), True),  # lastSeq + 1 is the default
                (101, 100, range(1, 101), False),  # exactly the 100 left: nothing older
                (10**6, 100, range(2, 102), True),  # past the end: the newest
                (3, 2, range(1, 3), False),
                (4, 2, range(2, 4), True),
                (2, 1, range(1, 2), False),
                (2, 100, range(1, 2), False),
                (1, 1, range(0), False),  # nothing is older than seq 1
                (1, 100, range(0), False),
            ]:
                page = await history(h, room_id, before=before, limit=limit)
                assert (seqs(page), page["more"]) == (list(expected), more), (before, limit)

            # Following `more` back from the newest yields every message once, in order.
            walked: list[dict[str, Any]] = []
            page = await history(h, room_id, limit=7)
            pages = 1
            while True:
                walked[:0] = page["messages"]
                if not page["more"]:
                    break
                page = await history(h, room_id, before=page["messages"][0]["seq"], limit=7)
                pages += 1
            assert walked == sent
            assert pages == -(-len(sent) // 7)


async def test_history_stays_readable_once_everyone_left() -> None:
    """A room whose members all left (dormant) still answers its history, from the store."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice,) = await h.open_room("alice")
            bodies = [{"ciphertext": b64(b"kept"), "clientMsgId": "k"}]
            sent = await send_messages(room_id, [alice], bodies)
            left = await alice.request({"type": "leaveChatroom", "roomId": room_id})
            assert left["type"] == "leftChatroom"
            await trio.testing.wait_all_tasks_blocked()
            assert room_id in h.registry.dormant
            page = await history(h, room_id)
            assert (page["messages"], page["more"]) == (sent, False)


async def test_history_off_answers_an_empty_page() -> None:
    """With history off (history_size 0) the route answers 200 with no messages and no more."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(history_size=0) as h:
            room_id, (alice,) = await h.open_room("alice")
            await send_messages(room_id, [alice], [{"ciphertext": b64(b"gone")}])
            page = await history(h, room_id)
            assert (page["messages"], page["more"]) == ([], False)
            assert re.fullmatch(URL_SAFE_EPOCH, page["epoch"])


@pytest.mark.parametrize(
    "query",
    [
        {"before": "0"},
        {"before": "-1"},
        {"before": ""},
        {"before": "abc"},
        {"before": "1.5"},
        {"before": "1e3"},
        {"before": "\u00b3"},
        {"before": str(2**53 + 1)},
        {"before": "9" * 5000},
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "-1"},
        {"limit": ""},
        {"limit": "ten"},
        {"limit": "2.0"},
        {"limit": "1" * 5000},
        {"before": "5", "limit": "1000"},
    ],
    ids=lambda query: urlencode(query)[:40],
)
async def test_history_with_a_bad_before_or_limit_is_400_never_clamped(
    query: dict[str, str],
) -> None:
    """`before` must be an integer >= 1 and `limit` one in 1..100; anything else is 400."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice,) = await h.open_room("alice")
            await send_messages(room_id, [alice], [{"ciphertext": b64(b"x")}])
            reply = await http(h, "GET", f"/v1/rooms/{room_id}/messages?{urlencode(query)}")
            assert reply.status == 400, reply
            assert reply.error_code == "badRequest"
            for good in ("before=1", "before=2", f"before={2**53}", "limit=100", "limit=001"):
                assert (await http(h, "GET", f"/v1/rooms/{room_id}/messages?{good}")).status == 200


# -- the epochs of GET /v1/rooms/{roomId} ----------------------------------------------


async def test_room_shows_its_stream_epoch_and_the_key_epoch_after_a_rotation() -> None:
    """`epoch` is the one members see, URL-safe; `keyEpoch` is 0, then 1 after updateRoomKey."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            body = {"roomId": "keyed", "host": "alice", "encryptedRoomKey": b64(b"k0")}
            assert (await http(h, "POST", "/v1/rooms", body)).status == 201
            assert (await http(h, "POST", "/v1/rooms", {"roomId": "other"})).status == 201
            room = (await http(h, "GET", "/v1/rooms/keyed")).json()
            assert re.fullmatch(URL_SAFE_EPOCH, room["epoch"]), room
            assert room["keyEpoch"] == 0
            other = (await http(h, "GET", "/v1/rooms/other")).json()
            assert other["epoch"] != room["epoch"]

            alice = await h.login("alice")
            joined = await alice.request({"type": "joinChatroom", "roomId": "keyed"})
            assert (joined["epoch"], joined["keyEpoch"]) == (room["epoch"], 0)
            update = {"type": "updateRoomKey", "roomId": "keyed", "encryptedRoomKey": b64(b"k1")}
            updated = await alice.request(update)
            assert (updated["type"], updated["keyEpoch"]) == ("roomKeyUpdated", 1)
            after = (await http(h, "GET", "/v1/rooms/keyed")).json()
            assert (after["epoch"], after["keyEpoch"]) == (room["epoch"], 1)
            assert (await http(h, "GET", "/v1/rooms/other")).json()["keyEpoch"] == 0
