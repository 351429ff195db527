"""The SDK on a cluster: encrypted rooms across nodes; `retryAfter` honoured while Redis is away."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest

from roomd.client.events import Gap
from roomd.client.secure import SecureClient, connect_secure
from roomd.client.secure_room import Admitted, Message

from ..e2e_support import RoomdProcess, token
from .conftest import RedisServer

pytestmark = pytest.mark.e2e

WAIT = 20.0


async def next_of(client: SecureClient, kind: type, test: Callable[..., bool] = bool) -> object:
    """Return the next event of `kind` on `client` passing `test`, within `WAIT`."""
    with anyio.fail_after(WAIT):
        while True:
            event = await client.next_event(kind)
            if test(event):
                return event


async def test_a_message_sent_while_redis_is_away_arrives_once_it_is_back(
    nodes: Callable[..., list[RoomdProcess]], redis_server: RedisServer
) -> None:
    """Encrypted across two nodes; Redis stops: the SDK retries after `retryAfter` and through
    the restore's reconnect, and the message arrives once, readable, after a Gap."""
    n0, n1 = nodes(2, "--cluster-timeout", "1")
    async with (
        connect_secure(n0.url, token=token("alice")) as alice,
        connect_secure(n1.url, token=token("bob")) as bob,
    ):
        room = await alice.create_room()
        await bob.join(alice.invite_link(room))
        await next_of(alice, Admitted)
        await alice.send(room, "before")
        assert (await next_of(bob, Message)).text == "before"
        redis_server.stop()
        async with anyio.create_task_group() as tasks:
            sent: list[Message] = []

            async def send() -> None:
                sent.append(await alice.send(room, "during the outage"))

            tasks.start_soon(send)
            await anyio.sleep(1.5)  # real processes: the outage lasts a while on their clocks
            assert not sent, "a message was ordered while Redis was down"
            await anyio.to_thread.run_sync(redis_server.start)
        gap = await next_of(bob, Gap)
        assert gap.room_id == room
        got = await next_of(bob, Message, lambda m: m.text == "during the outage")
        assert got.seq == sent[0].seq
