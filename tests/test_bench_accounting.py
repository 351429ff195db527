"""The load generator's accounting detects lost, duplicated and reordered messages."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jwt
import orjson
import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from bench.accounting import RoomView, Totals
from bench.client import Target
from bench.scenarios import fanout
from bench.session import Run

SECRET = "bench-test-secret-of-at-least-32-bytes"


def feed(seqs: list[int], last_seq: int = 0, final: int | None = None) -> RoomView:
    """Return a view fed `seqs` (sender 0, sender seq = room seq - last_seq), settled."""
    view = RoomView.after_join(last_seq)
    for seq in seqs:
        view.receive(seq, 0, seq - last_seq)
    view.settle(final if final is not None else max([last_seq, *seqs]))
    return view


@pytest.mark.parametrize(
    ("seqs", "final", "lost", "duplicated", "reordered"),
    [
        ([1, 2, 3, 4], 4, 0, 0, 0),
        ([1, 2, 4], 4, 1, 0, 0),
        ([1, 2, 3], 5, 2, 0, 0),
        ([1, 2, 2, 3], 3, 0, 1, 0),
        ([1, 3, 2, 4], 4, 0, 0, 1),
        ([2, 1], 2, 0, 0, 1),
        ([1, 3, 3, 2], 3, 0, 1, 1),
        ([1, 4, 2], 4, 1, 0, 1),
        ([], 3, 3, 0, 0),
    ],
)
def test_room_view_classifies(
    seqs: list[int], final: int, lost: int, duplicated: int, reordered: int
) -> None:
    """Gaps left at the end and a missing tail are lost; repeats duplicated; late ones reordered."""
    view = feed(seqs, final=final)
    assert (view.lost, view.duplicated, view.reordered) == (lost, duplicated, reordered)


def test_view_starts_after_join_last_seq() -> None:
    """A member that joined at lastSeq 7 expects 8 next and owes nothing before it."""
    view = feed([8, 9], last_seq=7, final=9)
    assert (view.lost, view.duplicated, view.reordered) == (0, 0, 0)


def test_sender_sequence_checks() -> None:
    """Per sender, sequence numbers must rise by one, and every message sent must arrive."""
    view = RoomView.after_join(0)
    view.receive(1, 0, 1)
    view.receive(2, 1, 1)
    view.receive(3, 0, 3)  # sender 0 skipped its 2nd message
    assert view.sender_breaks == 1
    assert view.missing_from({0: 3, 1: 2}) == 2


def test_totals_sum_views_and_count_unsettled_gaps() -> None:
    """Totals add up settled views; an unsettled view's open gaps still count as lost."""
    settled = feed([1, 1, 3], final=3)
    open_view = RoomView.after_join(0)
    open_view.receive(2, 0, 2)
    totals = Totals.of([settled, open_view])
    assert (totals.lost, totals.duplicated, totals.unsettled, totals.received) == (2, 1, 1, 4)


# -- the generator against a fake server that injects one fault ------------------


Fault = Callable[[int, int, list[bytes]], list[bytes]]


class FakeRoomServer:
    """A tiny protocol server (wsproto, 127.0.0.1) with one room and a fault in one stream.

    `fault(member, seq, frames)` may rewrite the frames one member gets for `seq`.
    """

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.members: list[tuple[int, trio.SocketStream, WSConnection, trio.Lock]] = []
        self.seq = 0
        self.held: dict[int, list[bytes]] = {}

    async def send(self, member: int, frames: list[bytes]) -> None:
        _, stream, _, lock = self.members[member]
        if frames:
            async with lock:
                await stream.send_all(b"".join(frames))

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            await self.serve(stream)

    async def serve(self, stream: trio.SocketStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        lock = trio.Lock()
        me = -1

        async def reply(message: dict[str, Any]) -> None:
            async with lock:
                await stream.send_all(ws.send(TextMessage(data=orjson.dumps(message).decode())))

        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    await stream.send_all(
                        ws.send(AcceptConnection(subprotocol=event.subprotocols[0]))
                    )
                    await reply({"type": "hello", "protocol": "roomd.v1"})
                elif isinstance(event, Ping):
                    await stream.send_all(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await stream.send_all(ws.send(event.response()))
                    return
                elif isinstance(event, TextMessage):
                    message = orjson.loads(event.data)
                    kind, rid = message["type"], message.get("id")
                    if kind == "auth":
                        aid = jwt.decode(message["token"], SECRET, algorithms=["HS256"])["sub"]
                        await reply({"type": "authOk", "aid": aid, "expiresAt": 0, "id": rid})
                    elif kind in ("createChatroom", "joinChatroom"):
                        me = len(self.members)
                        self.members.append((me, stream, ws, lock))
                        joined = {"type": "joinSuccess", "roomId": "r1", "lastSeq": self.seq}
                        await reply({**joined, "id": rid})
                    elif kind == "message":
                        await self.broadcast(me, message)

    async def broadcast(self, sender: int, message: dict[str, Any]) -> None:
        self.seq += 1
        event = {
            "type": "newMessage",
            "roomId": "r1",
            "seq": self.seq,
            "messageId": f"m{self.seq}",
            "from": f"a{sender}",
            "ciphertext": message["ciphertext"],
            "ts": 0,
        }
        for member, _, ws, _ in list(self.members):
            frame = ws.send(TextMessage(data=orjson.dumps(event).decode()))
            await self.send(member, self.fault(member, self.seq, [frame]))


def drop(member: int, seq: int, frames: list[bytes]) -> list[bytes]:
    return [] if (member, seq) == (2, 5) else frames


def duplicate(member: int, seq: int, frames: list[bytes]) -> list[bytes]:
    return frames * 2 if (member, seq) == (2, 5) else frames


def make_swap() -> Fault:
    held: list[bytes] = []

    def swap(member: int, seq: int, frames: list[bytes]) -> list[bytes]:
        if (member, seq) == (2, 5):
            held.extend(frames)
            return []
        if (member, seq) == (2, 6):
            return frames + held
        return frames

    return swap


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (lambda: lambda m, s, f: f, (0, 0, 0)),
        (lambda: drop, (1, 0, 0)),
        (lambda: duplicate, (0, 1, 0)),
        (make_swap, (0, 0, 1)),
    ],
    ids=["clean", "drop", "duplicate", "swap"],
)
async def test_generator_detects_injected_fault(
    fault: Callable[[], Fault], expected: tuple[int, int, int]
) -> None:
    """The fanout client code, against a server faulting one member's seq 5, counts it."""
    server = FakeRoomServer(fault())
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1")
            listeners = await nursery.start(serve)
            port = listeners[0].socket.getsockname()[1]
            run = Run(
                name="test",
                target=Target("127.0.0.1", port),
                secret=SECRET,
                drain=5.0,
                concurrency=1,
                quiet=True,
            )
            result = await fanout(run, members=4, mode="blast", count=10, window=3)
            nursery.cancel_scope.cancel()
    totals = result["totals"]
    assert (totals["lost"], totals["duplicated"], totals["reordered"]) == expected
    assert totals["received"] == 4 * 10 - expected[0] + expected[1]
    assert result["extra"]["missing_from_senders"] == expected[0]
