"""Dormant rooms: an empty room holds no task, expires on the one server timer, wakes on join."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roomd.core.room import RoomRecord
from roomd.daemon.registry import HEAP_SLACK
from roomd.daemon.server import wall_clock_ms
from roomd.store.memory import MemoryRoomStore

from ..harness import Client, Harness, running_server

TTL = 24 * 3600.0


def message(room: str) -> dict[str, object]:
    """Return a `message` for `room`."""
    return {"type": "message", "roomId": room, "ciphertext": "aGk="}


def rooms_tasks(h: Harness) -> int:
    """Return how many tasks the rooms nursery runs (one per live room)."""
    return len(h.registry.nursery.child_tasks)


async def test_an_emptied_room_holds_no_task_and_a_join_wakes_it_where_it_was(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The last leave makes the room dormant; the next joiner hosts it and seq goes on."""
    with trio.fail_after(60):
        async with running_server() as h:
            room, (alice,) = await h.open_room("alice")
            for _ in range(3):
                await alice.send(message(room))
            assert [(await alice.recv_type("newMessage"))["seq"] for _ in range(3)] == [1, 2, 3]
            await alice.request({"type": "leaveChatroom", "roomId": room})
            await trio.testing.wait_all_tasks_blocked()
            assert room in h.registry.dormant and room not in h.registry.live
            assert rooms_tasks(h) == 0
            bob = await h.login("bob")
            joined = await bob.request({"type": "joinChatroom", "roomId": room})
            assert (joined["type"], joined["host"], joined["lastSeq"]) == ("joinSuccess", "bob", 3)
            assert room in h.registry.live and room not in h.registry.dormant
            assert rooms_tasks(h) == 1
            await bob.send(message(room))
            assert (await bob.recv_type("newMessage"))["seq"] == 4


@attrs.define
class SlowCommits(MemoryRoomStore):
    """A memory store whose commits wait for `gate` while one is set: a slow disk."""

    gate: trio.Event | None = None

    async def commit(self, batch: Any) -> None:
        if self.gate is not None:
            await self.gate.wait()
        await super().commit(batch)


async def test_a_join_that_comes_while_the_emptied_room_is_made_durable_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The last leave's commit is slow; a join queued meanwhile gets joinSuccess, not notFound."""
    with trio.fail_after(60):
        store = SlowCommits()
        async with running_server(store=store) as h:
            room, (alice,) = await h.open_room("alice")
            bob = await h.login("bob")
            store.gate = gate = trio.Event()
            await alice.send({"type": "leaveChatroom", "roomId": room})
            await trio.sleep(1)  # the room is empty and waits for its commit
            assert alice.pending() == []
            await bob.send({"type": "joinChatroom", "roomId": room})
            await trio.sleep(1)
            assert bob.pending() == [] and room in h.registry.live
            store.gate = None
            gate.set()
            assert (await alice.recv())["type"] == "leftChatroom"
            joined = await bob.recv()
            assert (joined["type"], joined["roomId"]) == ("joinSuccess", room)
            assert [member["aid"] for member in joined["members"]] == ["bob"]


async def test_twenty_thousand_empty_rooms_expire_on_time_without_a_task_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Rooms created in four waves, 100 s apart, each go exactly room_ttl after creation."""
    waves, per_wave = 4, 5000
    store = MemoryRoomStore()
    with trio.fail_after(3 * TTL):
        async with running_server(store=store, max_rooms=waves * per_wave) as h:
            created: list[list[str]] = []
            for _ in range(waves):
                wave = []
                for _ in range(per_wave):
                    room = await h.registry.create(host="api", encrypted_room_key=None, by_api=True)
                    assert room is not None
                    wave.append(room.room_id)
                created.append(wave)
                await trio.sleep(100)
            assert len(h.registry.dormant) == waves * per_wave
            assert rooms_tasks(h) == 0
            start = trio.current_time() - waves * 100
            for index, wave in enumerate(created):
                due = start + index * 100 + TTL
                await trio.sleep_until(due - 0.001)
                assert all(room in h.registry for room in wave)
                await trio.sleep_until(due + 0.001)
                assert not any(room in h.registry for room in wave)
                assert not any(room in store.records for room in wave)
            assert len(h.registry) == 0 and store.records == {}
            assert h.registry.quota.rooms == 0  # every expiry gave its quota back
            bob = await h.login("bob", ttl=3 * TTL)
            reply = await bob.request({"type": "joinChatroom", "roomId": created[0][0]})
            assert reply["code"] == "notFound"


async def test_joins_racing_into_one_dormant_room_share_one_wake(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Five joins sent in one scheduler turn all land in the same woken room, in order."""
    with trio.fail_after(60):
        async with running_server() as h:
            room = await h.registry.create(host=None, encrypted_room_key=None, by_api=True)
            assert room is not None
            clients = [await h.login(f"user{n}") for n in range(5)]
            for client in clients:
                await client.send({"type": "joinChatroom", "roomId": room.room_id})
            replies = [await client.recv_type("joinSuccess") for client in clients]
            assert [len(reply["members"]) for reply in replies] == [1, 2, 3, 4, 5]
            assert list(h.registry.live[room.room_id].room.members) == [
                f"user{n}" for n in range(5)
            ]
            assert rooms_tasks(h) == 1


async def test_a_dormant_room_deleted_by_the_api_is_gone_with_its_quota(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Deleting a room nobody is in removes it from the store at once and frees its quota."""
    store = MemoryRoomStore()
    with trio.fail_after(60):
        async with running_server(store=store, max_rooms=1) as h:
            control = h.bound.running.control
            room = await control.create_room(room_id="gone", host="alice", encrypted_room_key=None)
            assert room is not None and "gone" in h.registry.dormant
            await control.delete_room("gone")
            assert "gone" not in h.registry and "gone" not in store.records
            assert rooms_tasks(h) == 0
            again = await control.create_room(room_id="next", host=None, encrypted_room_key=None)
            assert again is not None  # max_rooms 1: the deleted room's place is free


async def test_join_and_leave_churn_keeps_the_expiry_index_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1,500 join-leave cycles keep the expiry index bounded; expiry counts from the last leave."""
    with trio.fail_after(3 * TTL):
        async with running_server(
            rate=1e6, burst=1e6, heartbeat_interval=10 * TTL, heartbeat_timeout=20 * TTL
        ) as h:
            room, (alice,) = await h.open_room("alice", ttl=3 * TTL)
            await alice.request({"type": "leaveChatroom", "roomId": room})  # due at TTL
            await trio.sleep(TTL / 2)
            for _ in range(1500):
                await alice.request({"type": "joinChatroom", "roomId": room})
                await alice.request({"type": "leaveChatroom", "roomId": room})
                assert len(h.registry.expiries) <= 2 * len(h.registry.dormant) + HEAP_SLACK
            await trio.sleep(TTL / 2 + 1)  # past the first leave's deadline: that entry is stale
            assert room in h.registry.dormant
            await trio.sleep(TTL / 2 - 2)
            assert room in h.registry.dormant
            await trio.sleep(2)
            assert room not in h.registry


async def test_a_room_emptied_twice_expires_from_the_second_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first emptying's deadline is forgotten once the room is joined again."""
    with trio.fail_after(3 * TTL):
        async with running_server(heartbeat_interval=10 * TTL, heartbeat_timeout=20 * TTL) as h:
            room, (alice,) = await h.open_room("alice", ttl=3 * TTL)
            await alice.request({"type": "leaveChatroom", "roomId": room})  # due at TTL
            await trio.sleep(TTL / 2)
            await alice.request({"type": "joinChatroom", "roomId": room})
            await alice.request({"type": "leaveChatroom", "roomId": room})  # due at 1.5 TTL
            await trio.sleep(TTL / 2 + 1)
            assert room in h.registry.dormant
            await trio.sleep(TTL / 2 - 2)
            assert room in h.registry.dormant
            await trio.sleep(2)
            assert room not in h.registry


async def test_rooms_restored_at_start_are_dormant_and_come_back_on_join(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a clean stop every stored room starts dormant; a join numbers on from its last seq."""
    store = MemoryRoomStore()
    with trio.fail_after(60):
        async with running_server(store=store, stop=True) as h:
            room, (alice,) = await h.open_room("alice")
            for _ in range(5):
                await alice.send(message(room))
            assert (await alice.recv_type("newMessage"))["seq"] == 1
            await alice.listen(1)
        stored = store.records[room]
        assert (stored.empty_since, stored.seq_reserved) != (None, 0)
        now_ms = wall_clock_ms()
        store.records["other"] = RoomRecord("other", "carol", b"key", now_ms, now_ms, 0)
        async with running_server(store=store) as h:
            assert sorted(h.registry.dormant) == sorted([room, "other"])
            assert rooms_tasks(h) == 0
            bob = await h.login("bob")
            joined = await bob.request({"type": "joinChatroom", "roomId": room})
            assert (joined["type"], joined["lastSeq"]) == ("joinSuccess", 5)
            await bob.send(message(room))
            assert (await bob.recv_type("newMessage"))["seq"] == 6
            assert "other" in h.registry.dormant  # untouched by the other room's wake


# -- against a model ---------------------------------------------------------------

AIDS = ("a0", "a1", "a2")
ROOMS = ("r0", "r1")
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["join", "leave", "send"]), st.sampled_from(AIDS), st.sampled_from(ROOMS)
    )
    | st.tuples(st.just("advance"), st.sampled_from([1, 1000, 40_000, 86_399, 86_401]), st.none()),
    max_size=24,
)


@attrs.define
class ModelRoom:
    """What a room should be: its members, its last seq, when it became empty."""

    members: set[str] = attrs.field(factory=set)
    seq: int = 0
    empty_since: float | None = None


async def _model_scenario(operations: list[tuple[str, Any, Any]]) -> None:
    store = MemoryRoomStore()
    with trio.fail_after(100 * TTL):
        async with running_server(
            store=store,
            rate=1e6,
            burst=1e6,
            heartbeat_interval=100 * TTL,
            heartbeat_timeout=200 * TTL,
        ) as h:
            clients: dict[str, Client] = {aid: await h.login(aid, ttl=100 * TTL) for aid in AIDS}
            model: dict[str, ModelRoom] = {}
            for room_id in ROOMS:
                await h.registry.create(
                    room_id=room_id, host=None, encrypted_room_key=None, by_api=True
                )
                model[room_id] = ModelRoom(empty_since=trio.current_time())
            for kind, who, room_id in operations:
                expected: set[str] = set()
                if kind == "advance":
                    await trio.sleep(who)
                else:
                    expected = await _apply(clients, model, kind, who, room_id)
                await trio.testing.wait_all_tasks_blocked()
                for aid, client in clients.items():
                    seqs = [e["seq"] for e in await client.drain() if e["type"] == "newMessage"]
                    # Every other member got the message, once; nobody else got any.
                    assert seqs == ([model[room_id].seq] if aid in expected else []), (aid, seqs)
                await trio.testing.wait_all_tasks_blocked()
                now = trio.current_time()
                for rid, room in list(model.items()):
                    if room.empty_since is not None and room.empty_since + TTL <= now:
                        del model[rid]
                busy = {rid for rid, room in model.items() if room.members}
                assert set(h.registry.live) == busy
                assert set(h.registry.dormant) == set(model) - busy
                assert set(store.records) == set(model)
                assert rooms_tasks(h) == len(busy)


async def _apply(
    clients: dict[str, Client], model: dict[str, ModelRoom], kind: str, aid: str, room_id: str
) -> set[str]:
    """Carry out one operation, checking its answer; return who else gets a message."""
    client, room = clients[aid], model.get(room_id)
    if kind == "join" and (room is None or aid not in room.members):
        reply = await client.request({"type": "joinChatroom", "roomId": room_id})
        if room is None:
            assert reply["code"] == "notFound", reply
            return set()
        assert (reply["type"], reply["lastSeq"]) == ("joinSuccess", room.seq), reply
        room.members.add(aid)
        room.empty_since = None
    elif kind == "leave" and room is not None and aid in room.members:
        reply = await client.request({"type": "leaveChatroom", "roomId": room_id})
        assert reply["type"] == "leftChatroom", reply
        room.members.discard(aid)
        if not room.members:
            room.empty_since = trio.current_time()
    elif kind == "send" and room is not None and aid in room.members:
        await client.send(message(room_id))
        echo = await client.recv_type("newMessage")
        room.seq += 1
        assert (echo["roomId"], echo["seq"]) == (room_id, room.seq), echo
        return room.members - {aid}
    return set()


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPERATIONS)
def test_random_joins_leaves_messages_and_time_match_a_model(
    operations: list[tuple[str, Any, Any]],
) -> None:
    """Live rooms are exactly those with members, dormant ones the rest; expiry and seq hold."""
    trio.run(_model_scenario, operations, clock=trio.testing.MockClock(autojump_threshold=0))
