"""The per-worker state of one scenario run: clients, counters and the window.

A scenario shard gets a `Run`: it logs clients in (`login`), opens a measured
window (`Window`), and hands back a plain dict of what it counted. The parent
merges the dicts of all workers (`bench.report.merge`).
"""

from __future__ import annotations

import gc
import secrets
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import attrs
import jwt
import trio

from bench.accounting import Totals
from bench.client import Client, HandshakeError, Sink, Target, connect
from bench.coord import Coordinator
from bench.measure import proc_cpu_seconds, proc_rss_bytes, self_cpu_seconds
from bench.payload import Stamper

TOKEN_TTL = 6 * 3600
_POLL = 0.02


@attrs.define(eq=False)
class Run:
    """One worker's part of one scenario variant."""

    name: str
    target: Target
    secret: str
    coord: Coordinator = attrs.field(factory=Coordinator)
    server_pid: int | None = None
    # A cluster: the other nodes (connections go round-robin over all targets) and
    # the other processes whose CPU counts as the server's (the other nodes, Redis).
    more_targets: tuple[Target, ...] = ()
    more_pids: tuple[int, ...] = ()
    size: int = 120
    drain: float = 15.0
    concurrency: int = 100
    tag: str = attrs.field(factory=lambda: secrets.token_hex(3))
    sink: Sink = attrs.field(factory=Sink)
    stamper: Stamper = attrs.field(init=False)
    started: float = attrs.field(factory=time.perf_counter)
    quiet: bool = False

    def __attrs_post_init__(self) -> None:
        self.stamper = Stamper(self.size)

    def say(self, text: str) -> None:
        """Print one progress line (the leader only, unless something is wrong)."""
        if self.coord.leader and not self.quiet:
            elapsed = time.perf_counter() - self.started
            print(f"  [{self.name} {elapsed:6.1f}s] {text}", file=sys.stderr, flush=True)

    def aid(self, index: int) -> str:
        """Return the AID of member `index` in this run."""
        return f"bench-{self.tag}-{index}"

    def token(self, index: int) -> str:
        """Return an HS256 token for member `index`, signed with the server's secret."""
        now = int(time.time())
        claims = {"sub": self.aid(index), "iat": now, "exp": now + TOKEN_TTL}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    async def login(self, nursery: trio.Nursery, index: int) -> Client:
        """Connect member `index`, start its reader in `nursery` and authenticate it.

        Raises `HandshakeError` or `ConnectionError` (counted in the sink's errors).
        """
        try:
            targets = (self.target, *self.more_targets)
            client = await connect(targets[index % len(targets)], self.sink, index)
        except (HandshakeError, OSError) as exc:
            self.sink.errors[f"connect: {exc}"[:60]] += 1
            raise
        nursery.start_soon(client.run)
        try:
            reply = await client.request({"type": "auth", "token": self.token(index)})
        except BaseException:
            await trio.aclose_forcefully(client.stream)
            raise
        if reply["type"] != "authOk":
            await client.close()
            raise ConnectionError(f"auth refused: {reply}")
        return client

    async def join(self, client: Client, room: str | None) -> str:
        """Create a room (`room` None) or join `room`; return its id."""
        message = (
            {"type": "createChatroom"} if room is None else {"type": "joinChatroom", "roomId": room}
        )
        reply = await client.request(message)
        if reply["type"] != "joinSuccess":
            raise ConnectionError(f"join refused: {reply}")
        return str(reply["roomId"])

    def message(self, client: Client, room: str, sender_seq: int) -> bytes:
        """Return the frame of `client`'s `sender_seq`-th message to `room`, stamped now."""
        ciphertext = self.stamper.ciphertext(client.index, sender_seq, time.time_ns())
        return client.encode({"type": "message", "roomId": room, "ciphertext": ciphertext})

    async def settle_when_complete(self, finals: dict[str, int], clients: Iterable[Client]) -> bool:
        """Wait (up to `drain` s) until every client's view of each room reaches its final seq.

        Returns whether everything arrived; the views are then settled against
        `finals` (whatever did not arrive counts as lost).
        """
        clients = list(clients)
        complete = False
        with trio.move_on_after(self.drain):
            while True:
                if all(
                    view.high_seq >= finals.get(room, 0)
                    for client in clients
                    for room, view in client.views.items()
                    if not client.closed.is_set()
                ):
                    complete = True
                    break
                await trio.sleep(_POLL)
        for client in clients:
            for room, view in client.views.items():
                view.settle(finals.get(room) if not client.closed.is_set() else None)
        return complete


@attrs.define(eq=False)
class Window:
    """The measured interval of a scenario: deliveries, CPU of both sides, latencies."""

    run: Run
    t0: float = 0.0
    cpu0: float = 0.0
    server_cpu0: float | None = None
    frames0: int = 0
    messages0: int = 0
    start_ns: int = 0
    result: dict[str, Any] = attrs.field(factory=dict)

    def start(self) -> None:
        """Open the window: snapshot counters and CPU times, record latencies from now on."""
        sink = self.run.sink
        self.frames0 = sink.frames
        self.messages0 = sink.new_messages
        self.cpu0 = self_cpu_seconds()
        if self.run.coord.leader and self.run.server_pid:
            self.server_cpu0 = self._server_cpu()
        self.t0 = time.perf_counter()
        self.start_ns = time.time_ns()
        # The set-up's objects (clients, views) are moved out of the collector's
        # reach: a full collection over them is a pause every member would feel
        # as latency, and it is the generator's, not the server's.
        gc.collect()
        gc.freeze()
        sink.measuring = True

    def stop(self, *, until_last_message: bool = False) -> dict[str, Any]:
        """Close the window and return its figures.

        With `until_last_message`, the wall time ends at the last `newMessage`
        received (a blast's end), not at the moment the drain loop noticed it.
        """
        sink = self.run.sink
        sink.measuring = False
        wall = time.perf_counter() - self.t0
        if until_last_message and sink.last_message_ns > self.start_ns:
            wall = min(wall, (sink.last_message_ns - self.start_ns) / 1e9)
        self.result = {
            "wall_s": wall,
            "generator_cpu_s": self_cpu_seconds() - self.cpu0,
            "deliveries": sink.frames - self.frames0,
            "messages": sink.new_messages - self.messages0,
        }
        if self.server_cpu0 is not None and self.run.server_pid:
            pid = self.run.server_pid
            self.result["server_cpu_s"] = self._server_cpu() - self.server_cpu0
            self.result["server_rss_bytes"] = proc_rss_bytes(pid)
        return self.result

    def _server_cpu(self) -> float:
        pids = [pid for pid in (self.run.server_pid, *self.run.more_pids) if pid]
        return sum(proc_cpu_seconds(pid) for pid in pids)


def shard_result(run: Run, window: Window, **extra: Any) -> dict[str, Any]:
    """Return everything a worker counted in `run`, for `bench.report.merge`."""
    sink = run.sink
    totals = Totals.of(sink.views)
    return {
        "shard": run.coord.shard,
        "window": window.result,
        "totals": attrs.asdict(totals),
        "errors": dict(sink.errors),
        "closes": dict(sink.closes),
        "by_type": dict(Counter({"newMessage": sink.new_messages}) + sink.by_type),
        "foreign": sink.foreign,
        "unexpected_room": sink.unexpected_room,
        "protocol_errors": sink.protocol_errors,
        "latencies_ns": sink.latencies_ns.tobytes(),
        "extra": extra,
    }
