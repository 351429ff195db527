"""The server shell: handshake admission, subprotocol choice and graceful shutdown."""

from __future__ import annotations

import trio
import trio.testing

from ..harness import running_server


async def test_wrong_path_is_rejected_with_404(autojump_clock: trio.testing.MockClock) -> None:
    """A handshake for any path but /v1 gets HTTP 404; /v1 with a query string is accepted."""
    with trio.fail_after(5):
        async with running_server() as h:
            client = await h.connect(path="/v2")
            assert client.reject_status == 404
            assert b"/v1" in client.reject_body
            client = await h.connect(path="/v1?client=web")
            assert client.subprotocol == "roomd.v1.json"


async def test_no_subprotocol_gets_json_and_no_header(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client offering no known subprotocol gets JSON and no Sec-WebSocket-Protocol header."""
    with trio.fail_after(5):
        async with running_server() as h:
            client = await h.connect(codec=None)  # `connect` already read `hello` as JSON
            assert client.subprotocol is None
            reply = await client.request({"type": "createChatroom"})
            assert reply["code"] == "unauthenticated"
            client = await h.connect(codec="roomd.v2.msgpack")
            assert client.subprotocol is None
            client = await h.connect(codec="roomd.v1.cbor")
            assert client.subprotocol == "roomd.v1.cbor"


async def test_sixth_connection_from_one_ip_gets_429_until_one_closes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With max_conns_per_ip=5 the 6th handshake from an IP gets 429; after a close it is let in."""
    with trio.fail_after(5):
        async with running_server(max_conns_per_ip=5) as h:
            clients = [await h.connect() for _ in range(5)]
            assert all(c.reject_status is None for c in clients)
            sixth = await h.connect()
            assert sixth.reject_status == 429
            await clients[0].close()
            await trio.testing.wait_all_tasks_blocked()
            again = await h.connect()
            assert again.reject_status is None and again.subprotocol == "roomd.v1.json"
            assert (await h.connect()).reject_status == 429


async def test_origin_outside_allow_list_gets_403(autojump_clock: trio.testing.MockClock) -> None:
    """With allowed_origins set, another Origin (or none) gets HTTP 403; a listed one gets in."""
    allowed = "https://chat.example"
    with trio.fail_after(5):
        async with running_server(allowed_origins=frozenset({allowed})) as h:
            evil = await h.connect(headers=[(b"Origin", b"https://evil.example")])
            assert evil.reject_status == 403
            assert (await h.connect()).reject_status == 403
            good = await h.connect(headers=[(b"Origin", allowed.encode())])
            assert good.reject_status is None and good.subprotocol == "roomd.v1.json"


async def test_shutdown_closes_every_client_with_1001_and_run_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """shutdown() closes each client with 1001, ends every room loop, and Server.run returns."""
    with trio.fail_after(10):
        async with running_server() as h:
            _, clients = await h.open_room("alice", "bob")
            clients.append(await h.connect())  # not authenticated
            h.shutdown()
            for client in clients:
                assert await client.expect_close() == 1001
            await h.stopped.wait()
            assert h.sessions == set()
            assert h.registry.live == {}  # the room stays, dormant (and stored)
            assert h.admission.open_connections() == 0
            assert not h.registry.nursery.child_tasks


async def test_handshake_during_drain_gets_503(autojump_clock: trio.testing.MockClock) -> None:
    """While the server drains, a new handshake gets 503; a client that never answers is cut off."""
    with trio.fail_after(10):
        async with running_server() as h:
            deaf = await h.login("deaf")  # never reads again: it holds the drain open
            h.shutdown()
            late = await h.connect()
            assert late.reject_status == 503
            start = trio.current_time()
            await h.stopped.wait()
            assert trio.current_time() - start <= h.config.close_timeout + 1
            assert deaf.close_code is None
            assert await deaf.expect_close() == 1001
