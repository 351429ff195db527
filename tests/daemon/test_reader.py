"""The trio shell over memory streams, on trio's mock clock: one connection's life."""

from __future__ import annotations

import base64

import pytest
import trio
import trio.testing

from ..harness import running_server, token

MAX_FRAME = 128 * 1024


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


# -- authentication -------------------------------------------------------------


async def test_no_auth_closes_with_4001_after_auth_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that never authenticates is closed with 4001 once auth_timeout has passed."""
    with trio.fail_after(60):
        async with running_server() as h:
            client = await h.connect()
            start = trio.current_time()
            assert await client.expect_close() == 4001
            assert trio.current_time() - start == pytest.approx(10)


async def test_messages_before_auth_are_refused_and_not_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before authOk every message gets `error unauthenticated` (with its id) and does nothing."""
    with trio.fail_after(5):
        async with running_server() as h:
            client = await h.connect()
            reply = await client.request({"type": "createChatroom", "id": "c1"})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "unauthenticated", "c1")
            reply = await client.request({"type": "typing", "roomId": "r1", "isTyping": True})
            assert (reply["code"], reply["roomId"]) == ("unauthenticated", "r1")
            assert h.registry.room_ids() == []
            reply = await client.request({"type": "auth", "token": token("alice"), "id": 7})
            assert (reply["type"], reply["aid"], reply["id"]) == ("authOk", "alice", 7)


@pytest.mark.parametrize(
    "bad_token",
    [
        token("alice", secret="another-secret-another-secret-another-secret"),
        token("alice", ttl=-60),
        "not.a.jwt",
    ],
    ids=["bad-signature", "expired", "garbage"],
)
async def test_bad_token_is_refused_and_connection_stays_open(
    autojump_clock: trio.testing.MockClock, bad_token: str
) -> None:
    """A bad token gets `error unauthenticated`; the same connection may then try again."""
    with trio.fail_after(5):
        async with running_server() as h:
            client = await h.connect()
            reply = await client.request({"type": "auth", "token": bad_token, "id": 1})
            assert (reply["type"], reply["code"], reply["id"]) == ("error", "unauthenticated", 1)
            reply = await client.request({"type": "auth", "token": token("alice")})
            assert (reply["type"], reply["aid"]) == ("authOk", "alice")


async def test_token_expiry_closes_with_4005(autojump_clock: trio.testing.MockClock) -> None:
    """When the token of an open connection expires, the server closes it with 4005."""
    with trio.fail_after(120):
        async with running_server() as h:
            client = await h.connect()
            reply = await client.request({"type": "auth", "token": token("alice", ttl=30)})
            assert reply["type"] == "authOk"
            start = trio.current_time()
            assert await client.expect_close() == 4005
            assert 29 <= trio.current_time() - start <= 30.01


async def test_token_expiring_before_the_first_ping_closes_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A token that expires before the auth deadline and the first ping still closes at its exp."""
    with trio.fail_after(60):
        async with running_server() as h:
            client = await h.connect()
            reply = await client.request({"type": "auth", "token": token("alice", ttl=4)})
            assert reply["type"] == "authOk"
            start = trio.current_time()
            assert await client.expect_close() == 4005
            assert 3 <= trio.current_time() - start <= 4.01
            assert client.pings == 0


async def test_reauth_extends_same_aid_and_forbids_another(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A fresh token for the same AID extends the session; a token for another AID is forbidden."""
    with trio.fail_after(300):
        async with running_server() as h:
            client = await h.connect()
            first = await client.request({"type": "auth", "token": token("alice", ttl=30)})
            assert await client.listen(20) == []
            again = await client.request({"type": "auth", "token": token("alice", ttl=3600)})
            assert again["type"] == "authOk" and again["expiresAt"] > first["expiresAt"]
            other = await client.request({"type": "auth", "token": token("mallory"), "id": 2})
            assert (other["type"], other["code"], other["id"]) == ("error", "forbidden", 2)
            assert await client.listen(100) == []  # well past the first token's expiry
            reply = await client.request({"type": "createChatroom"})
            assert reply["you"] == "alice"


# -- heartbeat ------------------------------------------------------------------


async def test_client_answering_pings_stays_open(autojump_clock: trio.testing.MockClock) -> None:
    """The server pings every heartbeat_interval; a client that pongs outlives the timeout."""
    with trio.fail_after(600):
        async with running_server() as h:
            client = await h.login("alice")
            assert await client.listen(201) == []
            assert client.pings == 8  # at 25, 50, ... 200 s
            reply = await client.request({"type": "createChatroom"})
            assert reply["type"] == "joinSuccess"


async def test_timers_still_run_after_many_connections_came_and_went(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a hundred connections close, the one left is still pinged, a newcomer still gets 4001.

    (Closed connections' timers are dropped from the timekeeper's heap in bulk;
    that once left the timekeeper reading a list nobody added to any more.)
    """
    with trio.fail_after(600):
        async with running_server() as h:
            staying = await h.login("alice")
            passing = [await h.connect() for _ in range(100)]
            for client in passing:
                await client.abort()
            assert await staying.listen(1) == []  # the passing ones are gone
            newcomer = await h.connect()
            start = trio.current_time()
            assert await newcomer.expect_close() == 4001
            assert trio.current_time() - start == pytest.approx(10)
            assert await staying.listen(100) == []
            assert staying.pings == 4  # at 25, 50, 75 and 100 s
            assert len(h.sessions) == 1


async def test_silent_client_closed_with_4002_and_room_told_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client silent for heartbeat_timeout is closed with 4002; its room gets userLeft timeout."""
    with trio.fail_after(300):
        async with running_server() as h:
            room, (silent, alice) = await h.open_room("silent", "alice")
            silent.auto_pong = False
            start = trio.current_time()
            assert await alice.listen(30) == []  # alice pongs; silent does not
            assert await silent.expect_close() == 4002
            assert trio.current_time() - start == pytest.approx(60)
            assert silent.pings == 2
            left = await alice.recv()
            assert left == {
                "type": "userLeft",
                "roomId": room,
                "aid": "silent",
                "reason": "timeout",
            }
            assert (await alice.recv())["type"] == "hostUpdated"


# -- rate limiting ----------------------------------------------------------------


async def test_rate_limit_rejects_once_then_drops_until_drained(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full bucket answers rateLimited once, then drops silently; once drained, frames flow."""
    with trio.fail_after(30):
        async with running_server(burst=3, rate=1) as h:
            client = await h.login("alice")  # frame 1
            room = (await client.request({"type": "createChatroom"}))["roomId"]  # frame 2
            for n in range(4):  # frames 3 to 6, sent at one instant
                await client.send(
                    {"type": "message", "roomId": room, "ciphertext": "aGk=", "id": n}
                )
            replies = await client.drain()
            assert sorted(r["type"] for r in replies) == ["error", "newMessage"]
            error = next(r for r in replies if r["type"] == "error")
            assert (error["code"], error["id"], error["roomId"]) == ("rateLimited", 1, room)
            assert error["retryAfter"] == pytest.approx(1.0)
            await trio.sleep(3)
            for _ in range(3):
                await client.send({"type": "message", "roomId": room, "ciphertext": "aGk="})
            seqs = [(await client.recv_type("newMessage"))["seq"] for _ in range(3)]
            assert seqs == [2, 3, 4]  # the dropped frames were not processed
            assert await client.drain() == []


async def test_keeping_the_bucket_full_for_30s_closes_with_4004(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that floods faster than the rate for 30 s is closed with 4004."""
    with trio.fail_after(120):
        async with running_server(burst=3, rate=1) as h:
            room, (client,) = await h.open_room("alice")
            session = h.session_of("alice")
            for n in range(310):  # ten frames a second for 31 s
                await client.send({"type": "typing", "roomId": room, "isTyping": True})
                await trio.sleep(0.1)
                if n == 295:  # full for 29.5 s: not yet abuse
                    assert session.close_code is None
            with trio.move_on_after(5):
                await client.expect_close()
            assert client.close_code == 4004


# -- frames and codecs --------------------------------------------------------------


async def test_frame_over_max_frame_closes_with_1009(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A frame of exactly max_frame bytes is processed; one byte more closes with 1009."""
    with trio.fail_after(10):
        async with running_server() as h:
            client = await h.login("alice")
            await client.send_raw("x" * MAX_FRAME)
            assert (await client.recv())["code"] == "badRequest"
            await client.send_raw("x" * (MAX_FRAME + 1))
            assert await client.expect_close() == 1009


async def test_invalid_utf8_in_text_frame_closes_with_1007(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A text frame that is not valid UTF-8 closes the connection with 1007."""
    with trio.fail_after(10):
        async with running_server() as h:
            _, (alice, bob) = await h.open_room("alice", "bob")
            await bob.send_frame(0x1, b'{"type": "typing", "x": "\xff\xfe"}')
            assert await bob.expect_close() == 1007
            left = await alice.recv()
            assert (left["type"], left["aid"], left["reason"]) == (
                "userLeft",
                "bob",
                "disconnected",
            )


async def test_a_fragmented_message_is_taken_whole_and_what_follows_still_is(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message in three fragments with a ping among them, then a whole frame: all in order."""
    with trio.fail_after(10):
        async with running_server() as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            message = b'{"type": "message", "roomId": "%s", "ciphertext": "aGk="}' % room.encode()
            await bob.send_frame(0x1, message[:10], fin=False)
            await bob.send_frame(0x9, b"still here")  # a control frame between fragments
            await bob.send_frame(0x0, message[10:20], fin=False)
            await bob.send_frame(0x0, message[20:])
            await bob.send({"type": "message", "roomId": room, "ciphertext": "Ynll"})
            for client in (alice, bob):
                for expected_seq, ciphertext in ((1, "aGk="), (2, "Ynll")):
                    got = await client.recv()
                    assert (got["type"], got["seq"], got["ciphertext"]) == (
                        "newMessage",
                        expected_seq,
                        ciphertext,
                    )
            assert bob.pongs == 1


async def test_cbor_and_json_members_see_the_same_blob_bytes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Blobs sent by a JSON member reach a CBOR member as the same bytes, and back."""
    blob = bytes(range(256))
    key = b"\x00public-key\xff"
    with trio.fail_after(10):
        async with running_server() as h:
            alice = await h.login("alice")
            room = (await alice.request({"type": "createChatroom"}))["roomId"]
            bob = await h.login("bob", codec="roomd.v1.cbor")
            assert bob.subprotocol == "roomd.v1.cbor"
            joined = await bob.request({"type": "joinChatroom", "roomId": room, "publicKey": key})
            assert joined["members"][1] == {"aid": "bob", "publicKey": key}
            assert base64.b64decode((await alice.recv())["publicKey"]) == key
            await alice.send(
                {"type": "message", "roomId": room, "ciphertext": base64.b64encode(blob).decode()}
            )
            assert (await bob.recv())["ciphertext"] == blob
            assert base64.b64decode((await alice.recv())["ciphertext"]) == blob
            await bob.send({"type": "message", "roomId": room, "ciphertext": blob[::-1]})
            assert base64.b64decode((await alice.recv())["ciphertext"]) == blob[::-1]
            assert (await bob.recv())["ciphertext"] == blob[::-1]


async def test_anything_but_auth_before_auth_is_unauthenticated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before authOk even a malformed or unknown message gets unauthenticated, with its id."""
    with trio.fail_after(30):
        async with running_server() as h:
            client = await h.connect()
            for frame in ({"type": "message", "id": "m"}, {"type": "nope", "id": 7}, {"id": 8}):
                reply = await client.request(frame)
                assert (reply["code"], reply["id"]) == ("unauthenticated", frame["id"])
            bad_auth = await client.request({"type": "auth", "id": "a"})
            assert (bad_auth["code"], bad_auth["id"]) == ("badRequest", "a")


async def test_max_frame_counts_bytes_not_characters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A text frame under max_frame in characters but over it in UTF-8 bytes closes 1009."""
    with trio.fail_after(30):
        async with running_server(max_frame=1024) as h:
            client = await h.login("alice")
            await client.send_raw('{"type":"typing","x":"' + "\u20ac" * 400 + '"}')  # 1,200+ bytes
            assert await client.expect_close() == 1009


async def test_a_client_close_code_is_not_taken_for_roomd_s_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client closing with 4002 has simply disconnected: the room hears `disconnected`."""
    with trio.fail_after(30):
        async with running_server() as h:
            _, (alice, bob) = await h.open_room("alice", "bob")
            await bob.close(4002)
            left = await alice.recv_type("userLeft")
            assert (left["aid"], left["reason"]) == ("bob", "disconnected")
            assert h.stats.closes[4002] == 0
