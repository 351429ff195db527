"""What one Redis round trip costs redis-server, alone, at a given rate: the floor under a call.

`bench cluster` divides redis-server's CPU by the function calls the nodes
made. Under that figure lies what redis-server spends on any request that
travels alone (reading it, answering it, going back to sleep), whatever the
request does. This measures it with no roomd in it: one client, one request
per round trip, paced at the rate the load's calls came at, first `PING`,
then `FCALL` of a function that does nothing. redis-server's CPU (user +
system, from /proc) over the calls, divided by their number, is the floor.
"""

from __future__ import annotations

from typing import Any

import coredis
import trio

from bench.measure import proc_cpu_seconds

NO_OP_LIBRARY = """#!lua name=roomd_bench_floor
redis.register_function('roomd_bench_no_op', function(keys, args) return 1 end)
"""
# At least this many calls per figure: redis-server's CPU is counted in 10 ms ticks.
MIN_CALLS = 500


async def _lone_calls(
    redis: coredis.Redis[bytes], pid: int, rate: float, count: int, fcall: bool
) -> float:
    start = trio.current_time()
    cpu0 = proc_cpu_seconds(pid)
    for index in range(count):
        if fcall:
            await redis.fcall("roomd_bench_no_op", keys=["roomd:bench"], args=[])
        else:
            await redis.ping()
        await trio.sleep_until(start + (index + 1) / rate)
    return (proc_cpu_seconds(pid) - cpu0) * 1e6 / count


def measure(port: int, pid: int, rate: float, seconds: float) -> dict[str, Any]:
    """Return redis-server's CPU per lone `PING` and per lone no-op `FCALL` at `rate` calls/s.

    Each figure takes `seconds` (more when that is under `MIN_CALLS` calls).
    The Redis at `port` (process `pid`) must be otherwise idle.
    """
    count = max(MIN_CALLS, round(rate * seconds))

    async def run() -> dict[str, Any]:
        redis = coredis.Redis(host="127.0.0.1", port=port)
        async with redis:
            await redis.function_load(NO_OP_LIBRARY, replace=True)
            ping = await _lone_calls(redis, pid, rate, count, fcall=False)
            no_op = await _lone_calls(redis, pid, rate, count, fcall=True)
        return {
            "calls_per_s": round(rate, 1),
            "calls": count,
            "ping_us": round(ping, 1),
            "no_op_fcall_us": round(no_op, 1),
        }

    return trio.run(run)
