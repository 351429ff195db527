"""The benchmark scenarios: fanout, rooms, idle and churn.

Each scenario is an async function of a `Run` (one worker's share) and its
settings, returning `shard_result(...)`. Rooms are never split across workers
except in `fanout` (one room), where worker 0 creates the room and sends, and
every worker joins its share of the members. All are bounded in time and count.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from bench.client import Client, HandshakeError
from bench.measure import percentile, proc_rss_bytes
from bench.session import Run, Window, shard_result

Scenario = Callable[..., Awaitable[dict[str, Any]]]
CONNECT_ERRORS = (HandshakeError, ConnectionError, OSError, trio.TooSlowError)


async def _login_all(
    run: Run, nursery: trio.Nursery, indices: list[int], room: str | None
) -> list[Client]:
    """Log in and join `room` with every member in `indices`, `run.concurrency` at a time."""
    clients: list[Client] = []
    limiter = trio.CapacityLimiter(run.concurrency)

    async def one(index: int) -> None:
        async with limiter:
            client = await run.login(nursery, index)
            if room is not None:
                await run.join(client, room)
            clients.append(client)

    async with trio.open_nursery() as starting:
        for index in indices:
            starting.start_soon(one, index)
    return clients


async def _close_all(run: Run, clients: list[Client]) -> None:
    limiter = trio.CapacityLimiter(max(run.concurrency, 500))

    async def one(client: Client) -> None:
        async with limiter:
            await client.close()

    async with trio.open_nursery() as closing:
        for client in clients:
            closing.start_soon(one, client)


async def fanout(
    run: Run,
    *,
    members: int = 500,
    mode: str = "blast",
    count: int = 2000,
    deliveries_per_s: float = 20_000.0,
    duration: float = 10.0,
    window: int = 500,
) -> dict[str, Any]:
    """One room of `members`; member 0 sends `count` messages (blast) or a paced load.

    Blast: as fast as the sender's echo allows, at most `window` messages not yet
    echoed back to it. Paced: `deliveries_per_s / members` messages a second for
    `duration` seconds.
    """
    coord = run.coord
    rate = deliveries_per_s / members
    if mode == "paced":
        count = max(1, round(rate * duration))
    async with trio.open_nursery() as nursery:
        sender: Client | None = None
        if coord.leader:
            sender = await run.login(nursery, 0)
            room = await run.join(sender, None)
            coord.put("room", room)
        else:
            room = await coord.get("room")
        mine = [i for i in range(1, members) if i % coord.count == coord.shard]
        clients = await _login_all(run, nursery, mine, room)
        if sender is not None:
            clients.append(sender)
        await coord.sync()
        run.say(f"{members} members joined; sending {count} messages ({mode})")
        measured = Window(run)
        measured.start()
        if sender is not None:
            if mode == "blast":
                await _blast(run, sender, room, count, window)
            else:
                await _paced(run, sender, room, count, rate)
        complete = await run.settle_when_complete({room: count}, clients)
        measured.stop(until_last_message=mode == "blast")
        missing = sum(c.views[room].missing_from({0: count}) for c in clients if room in c.views)
        run.say(f"delivered {run.sink.new_messages} messages (complete: {complete})")
        await coord.sync()
        await _close_all(run, clients)
        nursery.cancel_scope.cancel()
    return shard_result(
        run, measured, missing_from_senders=missing, offered_msgs_per_s=rate, count=count
    )


async def _blast(run: Run, sender: Client, room: str, count: int, window: int) -> None:
    sent = 0
    while sent < count:
        room_for = min(count - sent, window - (sent - sender.echoed))
        if room_for <= 0:
            await sender.wait_echo(sent - window + 1)
            if sender.closed.is_set():
                return
            continue
        batch = [run.message(sender, room, sent + k + 1) for k in range(room_for)]
        await sender.send_bytes(b"".join(batch))
        sent += room_for


async def _paced(run: Run, sender: Client, room: str, count: int, rate: float) -> None:
    start = trio.current_time()
    for k in range(count):
        await trio.sleep_until(start + k / rate)
        await sender.send_bytes(run.message(sender, room, k + 1))


async def rooms(
    run: Run,
    *,
    rooms: int = 200,
    size: int = 10,
    rate: float = 1.0,
    duration: float = 15.0,
) -> dict[str, Any]:
    """`rooms` rooms of `size` members, each member acting `rate` times a second.

    The mix per action: 60% `message`, 25% `typing` (on or off), 15% `reaction`
    to the last message the member received (a message when there is none yet).
    """
    coord = run.coord
    mine = [r for r in range(rooms) if r % coord.count == coord.shard]
    by_room: dict[str, list[Client]] = {}
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(max(1, run.concurrency // size))

        async def open_room(r: int) -> None:
            async with limiter:
                host = await run.login(nursery, r * size)
                room = await run.join(host, None)
                others = await _login_all(
                    run, nursery, [r * size + k for k in range(1, size)], room
                )
                by_room[room] = [host, *others]

        async with trio.open_nursery() as opening:
            for r in mine:
                opening.start_soon(open_room, r)
        await coord.sync()
        run.say(f"{rooms * size} members in {rooms} rooms; acting {rate}/s each for {duration}s")
        sent: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
        measured = Window(run)
        measured.start()
        end = trio.current_time() + duration
        await _act_all(run, by_room, rate, end, sent)
        finals = {room: sum(per_sender.values()) for room, per_sender in sent.items()}
        clients = [c for members in by_room.values() for c in members]
        complete = await run.settle_when_complete(finals, clients)
        measured.stop()
        missing = missing_from_senders(by_room, sent)
        run.say(f"{sum(finals.values())} messages sent, complete: {complete}")
        await coord.sync()
        await _close_all(run, clients)
        nursery.cancel_scope.cancel()
    return shard_result(run, measured, missing_from_senders=missing)


def missing_from_senders(by_room: dict[str, list[Client]], sent: dict[str, dict[int, int]]) -> int:
    """Return how many of the messages each sender sent its room some member never saw."""
    return sum(
        c.views[room].missing_from(sent[room])
        for room, members in by_room.items()
        for c in members
        if room in c.views
    )


async def lifecycle(run: Run, index: int, room: str, sent: dict[str, int]) -> bool:
    """Run one client lifecycle into `room`: connect, auth, join, message, leave, close.

    Counts its message in `sent[room]`; returns False (the error counted) when
    it could not connect or took over 30 s.
    """
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as own:
                client = await run.login(own, index)
                await run.join(client, room)
                sent[room] += 1
                await client.send_bytes(run.message(client, room, 1))
                await client.wait_echo(1)
                reply = await client.request({"type": "leaveChatroom", "roomId": room})
                if reply["type"] != "leftChatroom":
                    run.sink.errors[f"leave: {reply.get('code')}"] += 1
                await client.close()
    except CONNECT_ERRORS as exc:
        run.sink.errors[f"lifecycle: {type(exc).__name__}"] += 1
        return False
    return True


# The pacer wakes at most this often: the members due meanwhile act together.
PACER_QUANTUM = 0.002


@attrs.define(eq=False)
class _Actor:
    client: Client
    room: str
    rng: random.Random
    seq: int = 0


async def _act_all(
    run: Run, by_room: dict[str, list[Client]], rate: float, end: float, sent: dict[str, Any]
) -> None:
    """Make every member act `rate` times a second until `end`, from one task.

    A task per member sleeping until its next action cost the generator a
    cancel scope and a task switch per action: it then used more CPU than the
    server it measured. Each member's actions keep their own phase; one acts
    at most PACER_QUANTUM late, and its message is stamped when it is sent.
    """
    due: list[tuple[float, int, _Actor]] = []
    start = trio.current_time()
    for room, members in by_room.items():
        for client in members:
            rng = random.Random(client.index)
            due.append((start + rng.random() / rate, client.index, _Actor(client, room, rng)))
    heapq.heapify(due)
    while due:
        when = due[0][0]
        if when >= end:
            return
        await trio.sleep_until(max(when, trio.current_time() + PACER_QUANTUM))
        now = trio.current_time()
        while due and due[0][0] <= now:
            when, index, actor = heapq.heappop(due)
            client = actor.client
            if client.closed.is_set():
                continue
            frame = _next_action(run, actor, sent[actor.room])
            try:
                client.send_soon(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                continue
            if when + 1 / rate < end:
                heapq.heappush(due, (when + 1 / rate, index, actor))


def _next_action(run: Run, actor: _Actor, sent: dict[int, int]) -> bytes:
    """Return the frame of `actor`'s next action: 60% message, 25% typing, 15% reaction."""
    client, room, rng = actor.client, actor.room, actor.rng
    roll = rng.random()
    last = client.last_message_id.get(room)
    if roll < 0.25:
        return client.encode({"type": "typing", "roomId": room, "isTyping": roll < 0.15})
    if roll < 0.40 and last is not None:
        emoji = rng.choice(("👍", "❤️", "😂", "🎉"))
        return client.encode(
            {"type": "reaction", "roomId": room, "messageId": last, "emoji": emoji}
        )
    actor.seq += 1
    sent[client.index] = actor.seq
    return run.message(client, room, actor.seq)


async def idle(
    run: Run, *, connections: int = 10_000, size: int = 10, hold: float = 20.0
) -> dict[str, Any]:
    """Hold `connections` authenticated clients, in rooms of `size`, for `hold` seconds.

    Clients answer the server's pings. The server's RSS is read before the ramp
    and with everything held; the ramp gives connects + joins per second.
    """
    coord = run.coord
    room_count = -(-connections // size)
    mine = [r for r in range(room_count) if r % coord.count == coord.shard]
    clients: list[Client] = []
    pid = run.server_pid if coord.leader else None
    await coord.sync()
    rss_before = proc_rss_bytes(pid) if pid else None
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(max(1, run.concurrency // 2))
        done = 0

        async def open_room(r: int) -> None:
            nonlocal done
            indices = [i for i in range(r * size, min(connections, (r + 1) * size))]
            async with limiter:
                try:
                    host = await run.login(nursery, indices[0])
                    room = await run.join(host, None)
                    clients.append(host)
                    for index in indices[1:]:
                        client = await run.login(nursery, index)
                        clients.append(client)
                        await run.join(client, room)
                except CONNECT_ERRORS as exc:
                    run.sink.errors[f"ramp: {type(exc).__name__}"] += 1
                done += len(indices)
                if done % 2000 < len(indices):
                    run.say(f"ramp: {done} connections")

        ramp_start = time.perf_counter()
        async with trio.open_nursery() as opening:
            for r in mine:
                opening.start_soon(open_room, r)
        ramp = time.perf_counter() - ramp_start
        await coord.sync()
        run.say(f"{connections} connections held ({ramp:.1f}s ramp); holding {hold}s")
        await trio.sleep(1.0)
        rss_held = proc_rss_bytes(pid) if pid else None
        measured = Window(run)
        measured.start()
        pings_before = run.sink.by_type["ping"]
        await trio.sleep(hold)
        measured.stop()
        open_at_end = sum(1 for c in clients if not c.closed.is_set())
        for client in clients:
            for view in client.views.values():
                view.settle(None if client.closed.is_set() else view.high_seq)
        run.say(f"{open_at_end} still open; closing")
        await coord.sync()
        await _close_all(run, clients)
        nursery.cancel_scope.cancel()
    return shard_result(
        run,
        measured,
        connections=len(clients),
        open_at_end=open_at_end,
        ramp_s=ramp,
        rss_before=rss_before,
        rss_held=rss_held,
        pings=run.sink.by_type["ping"] - pings_before,
    )


async def churn(
    run: Run,
    *,
    rate: float = 100.0,
    duration: float = 10.0,
    rooms: int = 20,
    max_in_flight: int = 1000,
) -> dict[str, Any]:
    """Start `rate` client lifecycles a second for `duration` s, into `rooms` anchored rooms.

    A lifecycle: connect, `auth`, `joinChatroom`, one `message` (waiting for its
    echo), `leaveChatroom`, close. One anchor member per room stays all along
    and checks the room's stream end to end.
    """
    coord = run.coord
    base = 1_000_000 * coord.shard
    my_rooms = max(1, rooms // coord.count)
    my_rate = rate / coord.count
    total = round(my_rate * duration)
    cycle_ns: list[int] = []
    sent: dict[str, int] = defaultdict(int)
    async with trio.open_nursery() as nursery:
        anchors = []
        room_ids = []
        for r in range(my_rooms):
            anchor = await run.login(nursery, base + r)
            room_ids.append(await run.join(anchor, None))
            anchors.append(anchor)
        await coord.sync()
        run.say(f"{rate:.0f} lifecycles/s for {duration}s into {rooms} rooms")
        in_flight = trio.CapacityLimiter(max_in_flight)

        async def one_lifecycle(k: int) -> None:
            started = time.perf_counter_ns()
            try:
                if await lifecycle(run, base + my_rooms + k, room_ids[k % my_rooms], sent):
                    cycle_ns.append(time.perf_counter_ns() - started)
            finally:
                in_flight.release_on_behalf_of(k)

        measured = Window(run)
        measured.start()
        start = trio.current_time()
        async with trio.open_nursery() as cycles:
            for k in range(total):
                await trio.sleep_until(start + k / my_rate)
                await in_flight.acquire_on_behalf_of(k)
                cycles.start_soon(one_lifecycle, k)
                if k and k % 500 == 0:
                    run.say(f"{k} lifecycles started, {len(cycle_ns)} done")
        complete = await run.settle_when_complete(dict(sent), anchors)
        measured.stop()
        run.say(f"{len(cycle_ns)} of {total} lifecycles done (anchors complete: {complete})")
        await coord.sync()
        await _close_all(run, anchors)
        nursery.cancel_scope.cancel()
    cycle_ns.sort()
    return shard_result(
        run,
        measured,
        lifecycles=len(cycle_ns),
        lifecycles_started=total,
        lifecycle_p50_ms=(percentile(cycle_ns, 0.5) or 0) / 1e6,
        lifecycle_p99_ms=(percentile(cycle_ns, 0.99) or 0) / 1e6,
    )
