"""The SDK on a cluster: encrypted rooms across nodes; `retryAfter` honoured while Redis is away."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import anyio
import pytest

from roomd.client.events import Gap
from roomd.client.secure import SecureClient, connect_secure
from roomd.client.secure_room import Admitted, Message

from ..e2e_support import RoomdProcess, token
from .conftest import RedisServer

pytestmark = pytest.mark.e2e

WAIT = 20.0
E = TypeVar("E")


async def next_of(client: SecureClient, kind: type[E], test: Callable[[E], bool] = bool) -> E:
    """Return the next event of `kind` on `client` passing `test`, within `WAIT`."""
    with anyio.fail_after(WAIT):
        while True:
            event = await client.next_event(kind)
            assert isinstance(event, kind)
            if test(event):
                return event


@contextlib.asynccontextmanager
async def conversation(
    n0: RoomdProcess, n1: RoomdProcess
) -> AsyncIterator[tuple[SecureClient, SecureClient, str]]:
    """Yield alice on `n0` hosting an encrypted room, and bob on `n1` admitted and reading it."""
    async with (
        connect_secure(n0.url, token=token("alice")) as alice,
        connect_secure(n1.url, token=token("bob")) as bob,
    ):
        room = await alice.create_room()
        await bob.join(alice.invite_link(room))
        await next_of(alice, Admitted)
        await alice.send(room, "before")
        assert (await next_of(bob, Message)).text == "before"
        yield alice, bob, room


async def test_a_message_sent_while_redis_is_away_arrives_once_it_is_back(
    nodes: Callable[..., list[RoomdProcess]], redis_server: RedisServer
) -> None:
    """Encrypted across two nodes; Redis stops: the SDK retries after `retryAfter` and through
    the restore's reconnect; bob gets a Gap and reads the message once: live, or in the history
    the Gap tells him to page when it was ordered before his rejoin."""
    n0, n1 = nodes(2, "--cluster-timeout", "1")
    async with conversation(n0, n1) as (alice, bob, room):
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
        # Ordered before bob's rejoin, the message is one the Gap names: the application pages
        # for it. Ordered after, it arrives live. Either way bob reads it, under alice's seq.
        if sent[0].seq <= gap.last_seq:
            page, _ = await bob.history(room)
            got = [m for m in page if isinstance(m, Message) and m.text == "during the outage"]
            assert [m.seq for m in got] == [sent[0].seq]
        else:
            live = await next_of(bob, Message, lambda m: m.text == "during the outage")
            assert live.seq == sent[0].seq


async def test_a_message_ordered_while_a_member_is_cut_off_is_in_the_history_its_gap_names(
    nodes: Callable[..., list[RoomdProcess]], redis_server: RedisServer
) -> None:
    """Redis restarts while bob's node is frozen: the room is restored and alice's message
    ordered before bob can rejoin, so his Gap covers it and the history he pages holds it."""
    n0, n1 = nodes(2, "--cluster-timeout", "1")
    async with conversation(n0, n1) as (alice, bob, room):
        redis_server.stop()
        n1.proc.send_signal(signal.SIGSTOP)
        try:
            await anyio.to_thread.run_sync(redis_server.start)
            with anyio.fail_after(WAIT):
                sent = await alice.send(room, "while bob is cut off")
        finally:
            n1.proc.send_signal(signal.SIGCONT)
        gap = await next_of(bob, Gap)
        assert (gap.room_id, gap.last_seen) == (room, 1)
        assert gap.last_seq >= sent.seq
        page, _ = await bob.history(room)
        assert [(m.seq, m.text) for m in page if isinstance(m, Message)] == [
            (sent.seq, "while bob is cut off")
        ]
