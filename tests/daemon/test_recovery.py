"""Protocol 1.1 through the trio shell: history, recovery on join, key epochs, bans, batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.store import Batch
from roomd.store.memory import MemoryRoomStore

from ..harness import Client, running_server

QUIET = {"heartbeat_interval": 3600.0, "heartbeat_timeout": 7200.0, "rate": 1e4, "burst": 1e4}


def mock_wall() -> Callable[[], int]:
    """Return a wall clock (Unix ms) that moves with trio's (mock) clock."""
    base = 1_700_000_000_000 - int(trio.current_time() * 1000)
    return lambda: base + int(trio.current_time() * 1000)


def message(room: str, n: int, **extra: Any) -> dict[str, Any]:
    """Return the `n`th test message for `room` (ciphertext "m<n>" in base64)."""
    ciphertext = {0: "bTA=", 1: "bTE=", 2: "bTI="}.get(n % 3, "bTM=")
    return {
        "type": "message",
        "roomId": room,
        "ciphertext": ciphertext,
        "clientMsgId": f"c{n}",
        **extra,
    }


async def seqs_until(client: Client, last: int) -> list[int]:
    """Return the seqs of every newMessage `client` gets until it has seen `last`."""
    seen: list[int] = []
    while not seen or seen[-1] < last:
        seen.append((await client.recv_type("newMessage"))["seq"])
    return seen


class CountingStore(MemoryRoomStore):
    """A memory store that records the size of every batch it commits."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    async def commit(self, batch: Batch) -> None:
        """Commit `batch` as the memory store does, counting its messages."""
        self.batches.append(len(batch.messages))
        await super().commit(batch)


async def test_a_recovery_while_messages_keep_coming_sees_each_seq_once_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """bob drops after seq 5, comes back with since while alice keeps sending: 6..40 once each."""
    store = MemoryRoomStore()
    with trio.fail_after(60):
        async with running_server(store=store, **QUIET) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            for n in range(1, 6):
                await alice.send(message(room, n))
            assert await seqs_until(bob, 5) == [1, 2, 3, 4, 5]
            epoch = h.registry.live[room].room.epoch
            await bob.abort()
            for n in range(6, 21):
                await alice.send(message(room, n))
            back = await h.login("bob")

            async def keep_sending() -> None:
                for n in range(21, 41):
                    await alice.send(message(room, n))
                    await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(keep_sending)
                since = {"epoch": epoch, "seq": 5}
                await back.send({"type": "joinChatroom", "roomId": room, "since": since})
                joined = await back.recv()
                assert (joined["type"], joined["recovered"]) == ("joinSuccess", True)
                seen = await seqs_until(back, 40)
            assert seen == list(range(6, 41))
            # Each was stored before anyone got it: history holds them all, in order.
            assert [stored.seq for stored in store.histories[room]] == list(range(1, 41))


async def test_replayed_messages_are_exactly_as_first_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The replay carries the same messageId, from, ts and blobs as the live newMessage."""
    with trio.fail_after(60):
        async with running_server(**QUIET) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            await alice.send(message(room, 1, iv="aXY="))
            live = await bob.recv_type("newMessage")
            epoch = h.registry.live[room].room.epoch
            carol = await h.login("carol")
            since = {"epoch": epoch, "seq": 0}
            await carol.send({"type": "joinChatroom", "roomId": room, "since": since})
            assert (await carol.recv())["recovered"] is True
            assert await carol.recv() == live


async def test_a_join_from_another_epoch_or_too_far_back_is_not_recovered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Another epoch, a seq beyond lastSeq or over recovery_limit missed: nothing replayed."""
    with trio.fail_after(60):
        async with running_server(recovery_limit=3, **QUIET) as h:
            room, (alice,) = await h.open_room("alice")
            for n in range(1, 6):
                await alice.send(message(room, n))
            await seqs_until(alice, 5)
            epoch = h.registry.live[room].room.epoch
            for since, expected in (
                ({"epoch": "other-epoch", "seq": 4}, False),
                ({"epoch": epoch, "seq": 6}, False),
                ({"epoch": epoch, "seq": 1}, False),  # 4 missed > recovery_limit 3
                ({"epoch": epoch, "seq": 2}, True),  # exactly 3
            ):
                client = await h.login("bob")
                await client.send({"type": "joinChatroom", "roomId": room, "since": since})
                joined = await client.recv()
                assert joined["recovered"] is expected, since
                replayed = [e["seq"] for e in await client.drain() if e["type"] == "newMessage"]
                assert replayed == ([3, 4, 5] if expected else []), since
                await client.close()


async def test_get_history_pages_back_through_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """getHistory gives the newest `limit` before `before`, oldest first, with `more`."""
    with trio.fail_after(60):
        async with running_server(**QUIET) as h:
            room, (alice,) = await h.open_room("alice")
            assert alice.hello["features"] == ["history", "keyEpochs"]
            limits = alice.hello["limits"]
            assert (limits["historySize"], limits["recoveryLimit"]) == (1000, 500)
            for n in range(1, 8):
                await alice.send(message(room, n))
            await seqs_until(alice, 7)
            page = await alice.request({"type": "getHistory", "roomId": room, "limit": 3, "id": 1})
            assert [e["seq"] for e in page["messages"]] == [5, 6, 7]
            assert (page["more"], page["id"]) == (True, 1)
            assert "type" not in page["messages"][0] and "roomId" not in page["messages"][0]
            page = await alice.request(
                {"type": "getHistory", "roomId": room, "before": 5, "limit": 100}
            )
            assert ([e["seq"] for e in page["messages"]], page["more"]) == ([1, 2, 3, 4], False)
            bad = await alice.request({"type": "getHistory", "roomId": room, "limit": 101})
            assert bad["code"] == "badRequest"
            outsider = await h.login("eve")
            refused = await outsider.request({"type": "getHistory", "roomId": room})
            assert refused["code"] == "notMember"


async def test_with_history_off_hello_says_so_and_pages_are_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """--history-size 0: hello lists no "history", getHistory is empty, recovery is refused."""
    with trio.fail_after(60):
        async with running_server(history_size=0, **QUIET) as h:
            room, (alice,) = await h.open_room("alice")
            await alice.send(message(room, 1))
            await seqs_until(alice, 1)
            page = await alice.request({"type": "getHistory", "roomId": room})
            assert (page["messages"], page["more"]) == ([], False)
            epoch = h.registry.live[room].room.epoch
            bob = await h.login("bob")
            since = {"epoch": epoch, "seq": 0}
            joined = await bob.request({"type": "joinChatroom", "roomId": room, "since": since})
            assert joined["recovered"] is False
            assert bob.hello["features"] == ["keyEpochs"]
            assert bob.hello["limits"]["historySize"] == 0


async def test_messages_of_many_rooms_in_one_turn_are_stored_in_one_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Twenty rooms' messages sent in one write reach the store in one or two transactions."""
    store = CountingStore()
    with trio.fail_after(60):
        async with running_server(store=store, max_rooms_per_conn=32, **QUIET) as h:
            alice = await h.login("alice")
            rooms = []
            for _ in range(20):
                rooms.append((await alice.request({"type": "createChatroom"}))["roomId"])
            store.batches.clear()
            await alice.send_together(*(message(room, 1) for room in rooms))
            got = [await alice.recv_type("newMessage") for _ in rooms]
            assert sorted(e["roomId"] for e in got) == sorted(rooms)
            assert sum(store.batches) == 20 and len(store.batches) <= 2, store.batches


async def test_a_rotation_race_and_a_stale_message_get_conflict(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two updates for epoch 1: the first wins; a message sealed with epoch 0 then is refused."""
    with trio.fail_after(60):
        async with running_server(**QUIET) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            update = {"type": "updateRoomKey", "roomId": room, "keyEpoch": 1}
            await alice.send_together(
                {**update, "encryptedRoomKey": "azE=", "id": "first"},
                {**update, "encryptedRoomKey": "azI=", "id": "second"},
            )
            rotated = await bob.recv_type("roomKeyUpdated")
            assert (rotated["encryptedRoomKey"], rotated["keyEpoch"]) == ("azE=", 1)
            refused = await alice.recv_type("error")
            assert (refused["code"], refused["keyEpoch"], refused["id"]) == (
                "conflict",
                1,
                "second",
            )
            stale = await bob.request(message(room, 1, keyEpoch=0, id="m"))
            assert (stale["code"], stale["keyEpoch"]) == ("conflict", 1)
            await bob.send(message(room, 2, keyEpoch=1))
            sent = await bob.recv_type("newMessage")
            assert (sent["seq"], sent["keyEpoch"]) == (1, 1)  # the refused one took no seq
            # alice's own roomKeyUpdated came before the error (read past above).
            assert await bob.drain() == []
            assert [e["type"] for e in await alice.drain()] == ["newMessage"]


async def test_a_ban_outlives_a_restart_until_the_host_unbans(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """kick {ban} keeps bob out, across a restart on the same store; unban lets him back."""
    store = MemoryRoomStore()
    with trio.fail_after(60):
        async with running_server(store=store, stop=True, **QUIET) as h:
            room, (alice, bob) = await h.open_room("alice", "bob")
            await alice.send({"type": "kick", "roomId": room, "aid": "bob", "ban": True})
            assert (await bob.recv_type("leftChatroom"))["reason"] == "kicked"
            again = await bob.request({"type": "joinChatroom", "roomId": room})
            assert again["code"] == "forbidden"
        async with running_server(store=store, **QUIET) as h:
            alice, bob = await h.login("alice"), await h.login("bob")
            assert (await bob.request({"type": "joinChatroom", "roomId": room}))["code"] == (
                "forbidden"
            )
            await alice.request({"type": "joinChatroom", "roomId": room})
            reply = await alice.request({"type": "unban", "roomId": room, "aid": "bob", "id": 9})
            reply = reply if reply["type"] == "unbanned" else await alice.recv_type("unbanned")
            assert (reply["aid"], reply["id"]) == ("bob", 9)
            assert (await bob.request({"type": "joinChatroom", "roomId": room}))["type"] == (
                "joinSuccess"
            )


async def test_a_signal_batch_costs_one_token_and_arrives_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a bucket of 3, one frame of 3 signals after 2 frames is still accepted, in order."""
    with trio.fail_after(60):
        async with running_server(
            rate=0.01, burst=4, heartbeat_interval=3600, heartbeat_timeout=7200
        ) as h:
            room, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            signals = [
                {"to": "bob", "payload": "YQ=="},
                {"to": "carol", "payload": "Yg=="},
                {"to": "bob", "payload": "Yw=="},
            ]
            await alice.send({"type": "signal", "roomId": room, "signals": signals})
            got = [(await bob.recv_type("signal"))["payload"] for _ in range(2)]
            assert got == ["YQ==", "Yw=="]
            assert (await carol.recv_type("signal"))["payload"] == "Yg=="
            absent = [*signals, {"to": "zed", "payload": "ZA=="}]
            refused = await alice.request({"type": "signal", "roomId": room, "signals": absent})
            assert refused["code"] == "notFound"
            assert await bob.drain() == [] and await carol.drain() == []


# -- against a model ---------------------------------------------------------------

AIDS = ("a0", "a1", "a2")
STEPS = st.lists(
    st.tuples(st.sampled_from(["send", "send", "drop", "rejoin"]), st.sampled_from(AIDS)),
    max_size=40,
)


@attrs.define
class Reader:
    """One member as the model sees it: its live connection and every seq it saw."""

    client: Client | None
    seen: list[int]


async def _recovery_scenario(steps: list[tuple[str, str]]) -> None:
    with trio.fail_after(600):
        async with running_server(**QUIET) as h:
            room, clients = await h.open_room(*AIDS)
            epoch = h.registry.live[room].room.epoch
            readers = {aid: Reader(client, []) for aid, client in zip(AIDS, clients, strict=True)}
            last_seq = 0

            async def read_all() -> None:
                for reader in readers.values():
                    if reader.client is not None:
                        events = await reader.client.drain()
                        reader.seen += [e["seq"] for e in events if e["type"] == "newMessage"]

            for kind, aid in [*steps, *(("rejoin", aid) for aid in AIDS)]:
                reader = readers[aid]
                if kind == "send" and reader.client is not None:
                    await reader.client.send(message(room, last_seq + 1))
                    last_seq += 1
                elif kind == "drop" and reader.client is not None:
                    await reader.client.abort()
                    reader.client = None
                elif kind == "rejoin" and reader.client is None:
                    reader.client = await h.login(aid)
                    position = reader.seen[-1] if reader.seen else 0
                    since = {"epoch": epoch, "seq": position}
                    await reader.client.send(
                        {"type": "joinChatroom", "roomId": room, "since": since}
                    )
                    joined = await reader.client.recv_type("joinSuccess")
                    assert joined["recovered"] is True, (aid, since, joined)
                await trio.testing.wait_all_tasks_blocked()
                await read_all()
            for aid, reader in readers.items():
                # Every seq exactly once, in order, from the member's first join on.
                assert reader.seen == list(range(1, last_seq + 1)), (aid, reader.seen)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(STEPS)
def test_members_that_drop_and_rejoin_with_since_see_every_seq_once_in_order(
    steps: list[tuple[str, str]],
) -> None:
    """Random sends, drops and rejoins: each member ends up with 1..lastSeq, once, in order."""
    trio.run(_recovery_scenario, steps, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_history_forgets_messages_past_the_ttl_and_with_an_expired_room(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Messages older than history_ttl leave pages and the store; an expired room takes the rest."""
    store = MemoryRoomStore()
    wall = mock_wall()
    with trio.fail_after(10 * 24 * 3600):
        async with running_server(store=store, wall_ms=wall, history_ttl=600, **QUIET) as h:
            room, (alice,) = await h.open_room("alice", ttl=10 * 24 * 3600)
            await alice.send(message(room, 1))
            await trio.sleep(400)
            await alice.send(message(room, 2))
            await seqs_until(alice, 2)
            await trio.sleep(300)  # the first is 700 s old now, the second 300 s
            page = await alice.request({"type": "getHistory", "roomId": room})
            assert [e["seq"] for e in page["messages"]] == [2]
            await trio.sleep(60)  # the sweep runs at least every ttl / 10
            assert [m.seq for m in store.histories[room]] == [2]
            await alice.request({"type": "leaveChatroom", "roomId": room})
            await trio.sleep(h.config.room_ttl + 1)
            assert room not in h.registry and room not in store.histories
