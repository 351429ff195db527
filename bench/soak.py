"""The soak scenario: chat and churn together for minutes, watching the server's resources.

Not in the standard suite (`just bench soak`; `--duration` to change its 10
minutes). Chat rooms act as in `rooms`, lifecycles run as in `churn` into rooms
of their own, and every `sample_every` seconds the server's RSS and open file
descriptors are read: flat after warm-up means nothing accumulates.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import trio

from bench.client import Client
from bench.measure import proc_rss_bytes
from bench.scenarios import _act_all, _close_all, _login_all, lifecycle, missing_from_senders
from bench.session import Run, Window, shard_result


def proc_fd_count(pid: int) -> int:
    """Return how many file descriptors process `pid` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


async def soak(
    run: Run,
    *,
    duration: float = 600.0,
    rooms: int = 50,
    size: int = 10,
    rate: float = 0.5,
    churn_rate: float = 20.0,
    churn_rooms: int = 10,
    sample_every: float = 30.0,
) -> dict[str, Any]:
    """`rooms` chat rooms and `churn_rate` lifecycles a second for `duration` s, sampled."""
    coord = run.coord
    pid = run.server_pid if coord.leader else None
    base = 2_000_000 + 1_000_000 * coord.shard
    sent: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    churned: dict[str, int] = defaultdict(int)
    samples: list[dict[str, float]] = []
    lifecycles = 0
    async with trio.open_nursery() as nursery:
        members: dict[str, list[Client]] = {}
        for r in (r for r in range(rooms) if r % coord.count == coord.shard):
            host = await run.login(nursery, r * size)
            room = await run.join(host, None)
            others = await _login_all(run, nursery, [r * size + k for k in range(1, size)], room)
            members[room] = [host, *others]
        anchors, anchored = [], []
        for r in range(max(1, churn_rooms // coord.count)):
            anchor = await run.login(nursery, base + r)
            anchored.append(await run.join(anchor, None))
            anchors.append(anchor)
        await coord.sync()
        run.say(f"soak: {rooms} rooms x {size} chatting, {churn_rate}/s lifecycles, {duration}s")
        measured = Window(run)
        measured.start()
        start = trio.current_time()
        end = start + duration

        async def sample() -> None:
            while pid and trio.current_time() < end:
                elapsed = trio.current_time() - start
                rss, fds = proc_rss_bytes(pid), proc_fd_count(pid)
                samples.append({"t": round(elapsed, 1), "rss": rss, "fds": fds})
                run.say(f"soak t={elapsed:.0f}s rss={rss / 2**20:.1f} MiB fds={fds}")
                await trio.sleep(sample_every)

        async def one_lifecycle(k: int) -> None:
            nonlocal lifecycles
            if await lifecycle(run, base + 1000 + k, anchored[k % len(anchored)], churned):
                lifecycles += 1

        async with trio.open_nursery() as load:
            load.start_soon(sample)
            load.start_soon(_act_all, run, members, rate, end, sent)
            my_rate = churn_rate / coord.count
            k = 0
            while start + k / my_rate < end:
                await trio.sleep_until(start + k / my_rate)
                load.start_soon(one_lifecycle, k)
                k += 1
        finals = {room: sum(per_sender.values()) for room, per_sender in sent.items()}
        finals.update(churned)
        everyone = [c for clients in members.values() for c in clients] + anchors
        complete = await run.settle_when_complete(finals, everyone)
        measured.stop()
        missing = missing_from_senders(members, sent)
        run.say(f"soak: {lifecycles}/{k} lifecycles, complete: {complete}")
        await coord.sync()
        await _close_all(run, everyone)
        nursery.cancel_scope.cancel()
    return shard_result(
        run,
        measured,
        missing_from_senders=missing,
        soak_samples=samples,
        soak_lifecycles=lifecycles,
    )
