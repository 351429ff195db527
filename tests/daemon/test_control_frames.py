"""Control frames pay the bucket too (PROTOCOL.md 1.1 §6), through the trio shell."""

from __future__ import annotations

import trio
import trio.testing
from wsproto.events import Ping

from ..harness import running_server

RATE, BURST = 10.0, 30.0
FLOOD_SECONDS = 40.0


async def test_a_ping_flood_gets_only_what_the_bucket_allows_and_ends_in_4004(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Pings past the bucket get no pong; keeping it full closes 4004; a room loses nothing."""
    with trio.fail_after(120):
        async with running_server(rate=RATE, burst=BURST) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            flooder = await h.login("flooder")
            burst_of_pings = flooder.ws.send(Ping(b"x")) * 20
            start = trio.current_time()
            sent = 0
            close_code = None

            async def flood() -> None:
                nonlocal sent
                while close_code is None and trio.current_time() - start < FLOOD_SECONDS:
                    try:
                        await flooder.stream.send_all(burst_of_pings)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                    sent += 20
                    await trio.sleep(0.02)

            async def chat() -> None:
                for _ in range(35):
                    await alice.send({"type": "message", "roomId": room, "ciphertext": "aGk="})
                    await trio.sleep(1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(flood)
                nursery.start_soon(chat)
                close_code = await flooder.expect_close()
                elapsed = trio.current_time() - start
            assert close_code == 4004
            assert 30 <= elapsed < 32
            assert sent >= 20_000
            assert flooder.pongs <= BURST + RATE * elapsed + 1
            assert flooder.pongs >= BURST
            seqs = [m["seq"] for m in await bob.drain() if m["type"] == "newMessage"]
            assert seqs == list(range(1, 36))
