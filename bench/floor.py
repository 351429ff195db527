"""`python -m bench floor`: what trio itself costs on this machine, with no roomd in it.

Two stand-in servers, each the least a task-per-connection trio server can do
for one of the everyday loads, so that roomd's figures can be read against a
floor (README, Performance):

- `relay`: rooms of 10 by accept order; each connection is one task that
  waits for its socket, reads, and writes the bytes read, as they are, to the
  other nine members (one `os.write` each: no parsing, no JSON, no outbox).
  The client is paced like the `rooms` scenario: every connection sends a
  200-byte frame once a second.
- `heartbeat`: each connection is one task that waits for its socket and
  reads; one ticker task writes a 2-byte ping to every connection once a
  second, in 1/16 s slots (as roomd's timekeeper does), and the client
  answers each ping with a 6-byte pong at once.
- `heartbeat-reactor`: the same, but with no task per connection: every
  socket is in one level-triggered epoll set that one task polls and reads
  from (as the bench's own generator reads). What a different design than
  roomd's, with the trio wake per pong gone, would start from.

The server runs in a child process and reports its own CPU (user + system)
over the measured window; the client is plain `select.epoll`, in this process.
Loopback only.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from bench.measure import machine, raise_open_file_limit, versions

# Each run's figures, with the machine and versions (`--no-write` skips it).
RESULT = Path(__file__).parent / "results" / "floor.json"
KINDS = ("relay", "heartbeat", "heartbeat-reactor")
ROOM_SIZE = 10
# A masked text frame of 200 bytes, like the chat mix's messages.
MESSAGE = b"\x81\xfe\x00\xc4" + b"\x01\x02\x03\x04" + bytes(196)
PING = b"\x89\x00"
PONG = b"\x8a\x80\x01\x02\x03\x04"
SLOTS = 16
WARM_UP = 2.0


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


async def _relay_reader(fd: int, room: list[int], counter: list[int]) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        data = os.read(fd, 65536)
        if not data:
            return
        for other in room:
            if other != fd:
                os.write(other, data)
                counter[0] += 1


async def _ping_reader(fd: int, counter: list[int]) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        if not os.read(fd, 65536):
            return
        counter[0] += 1


async def _react(poller: select.epoll, counter: list[int]) -> None:
    """Read every socket of `poller` that has bytes, from this one task, until cancelled."""
    while True:
        await trio.lowlevel.wait_readable(poller.fileno())
        for fd, _ in poller.poll(0):
            if os.read(fd, 65536):
                counter[0] += 1


async def _ping_all(conns: list[trio.socket.SocketType], until: float) -> int:
    """Ping every connection once a second, a sixteenth of them per slot; return pings sent."""
    start = trio.current_time()
    per_slot = math.ceil(len(conns) / SLOTS)
    sent = slot = 0
    while trio.current_time() < until:
        await trio.sleep_until(start + (slot + 1) / SLOTS)
        first = (slot % SLOTS) * per_slot
        for conn in conns[first : first + per_slot]:
            os.write(conn.fileno(), PING)
            sent += 1
        slot += 1
    return sent


async def serve(kind: str, port: int, connections: int, seconds: float) -> dict[str, Any]:
    """Accept `connections`, run the `kind` floor for `seconds`; return its CPU figures."""
    listener = trio.socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    print("listening", flush=True)
    conns: list[trio.socket.SocketType] = []
    counter = [0]
    poller = select.epoll()
    async with trio.open_nursery() as nursery:
        if kind == "heartbeat-reactor":
            nursery.start_soon(_react, poller, counter)
        while len(conns) < connections:
            conn, _ = await listener.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
            if kind == "relay":
                if len(conns) % ROOM_SIZE == 1:
                    room: list[int] = []
                room.append(conn.fileno())
                nursery.start_soon(_relay_reader, conn.fileno(), room, counter)
            elif kind == "heartbeat-reactor":
                poller.register(conn.fileno(), select.EPOLLIN)
            else:
                nursery.start_soon(_ping_reader, conn.fileno(), counter)
        if kind == "relay":
            await trio.sleep(WARM_UP)
            before, counted = _cpu(), counter[0]
            await trio.sleep(seconds)
            after, events = _cpu(), counter[0] - counted
        else:
            await _ping_all(conns, trio.current_time() + WARM_UP)
            before, counted = _cpu(), counter[0]
            events = await _ping_all(conns, trio.current_time() + seconds)
            await trio.sleep(0.5)  # the last slot's pongs
            after = _cpu()
        nursery.cancel_scope.cancel()
    poller.close()
    user, system = after[0] - before[0], after[1] - before[1]
    return {"events": events, "user_s": round(user, 3), "system_s": round(system, 3)}


def _connect(port: int, connections: int) -> list[socket.socket]:
    conns = []
    for _ in range(connections):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.setblocking(False)
        conns.append(conn)
    return conns


def drive(kind: str, conns: list[socket.socket], server: subprocess.Popen[str]) -> None:
    """Play the client side of `kind` until the server exits."""
    poller = select.epoll()
    for conn in conns:
        poller.register(conn.fileno(), select.EPOLLIN)
    rng = random.Random(0)
    now = time.monotonic()
    due = [(now + rng.random(), conn.fileno()) for conn in conns] if kind == "relay" else []
    heapq.heapify(due)
    while server.poll() is None:
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, fd = heapq.heappop(due)
            os.write(fd, MESSAGE)
            heapq.heappush(due, (when + 1.0, fd))
        wait = 0.05 if not due else max(0.0, min(0.002, due[0][0] - time.monotonic()))
        for fd, _ in poller.poll(wait):
            try:
                data = os.read(fd, 65536)
            except ConnectionError:
                return
            if not data:
                poller.unregister(fd)
            elif kind != "relay":
                os.write(fd, PONG * data.count(PING))


def run(kind: str, connections: int, seconds: float, port: int) -> dict[str, Any]:
    """Run one floor: the server in a child process, the client here; return the figures."""
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.floor", "--serve", kind, "--port", str(port),
         "--connections", str(connections), "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert server.stdout is not None
    try:
        if server.stdout.readline().strip() != "listening":
            raise SystemExit(f"the {kind} floor server did not start")
        conns = _connect(port, connections)
        drive(kind, conns, server)
        figures: dict[str, Any] = json.loads(server.stdout.read())
    finally:
        server.kill()
        server.wait()
    for conn in conns:
        conn.close()
    cpu = figures["user_s"] + figures["system_s"]
    unit = "delivery" if kind == "relay" else "ping cycle"
    figures.update(kind=kind, connections=connections, seconds=seconds, per=unit)
    figures["us_per_event"] = round(cpu / max(1, figures["events"]) * 1e6, 1)
    figures["system_us_per_event"] = round(figures["system_s"] / max(1, figures["events"]) * 1e6, 1)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the relay and heartbeat floors (or serve one, as the child); print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench floor", description=__doc__)
    parser.add_argument("kinds", nargs="*", help=f"any of {', '.join(KINDS)} (default: all)")
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--connections", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULT.name}")
    args = parser.parse_args(argv)
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown floor: {', '.join(sorted(unknown))}")
    raise_open_file_limit()
    if args.serve:
        figures = trio.run(serve, args.serve, args.port, args.connections, args.seconds)
        print(json.dumps(figures), flush=True)
        return 0
    results = []
    for kind in args.kinds or KINDS:
        connections = args.connections or (2000 if kind == "relay" else 3000)
        with socket.socket() as probe:  # a free loopback port for the child
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        figures = run(kind, connections, args.seconds, port)
        print(
            f"{kind} floor: {connections} connections, {figures['events']} events in"
            f" {args.seconds:g} s: {figures['us_per_event']} us of server CPU per"
            f" {figures['per']} ({figures['system_us_per_event']} us of it in the kernel)"
        )
        results.append(figures)
    if not args.no_write:
        document = {"machine": machine(), "versions": versions(), "results": results}
        RESULT.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
