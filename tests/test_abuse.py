"""roomd under abuse, end to end against a real `roomd serve` on loopback (PROTOCOL.md 1.1 §1, §2).

Every loop here is bounded in count and time, and every socket targets 127.0.0.x.
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request
from wsproto.frame_protocol import FrameProtocol

from .e2e_support import RoomdProcess, WsClient, roomd_processes, token

pytestmark = pytest.mark.e2e

Start = Callable[..., RoomdProcess]
STALLED = 2000


@pytest.fixture
def start_roomd(tmp_path: Path) -> Iterator[Start]:
    """Start `roomd serve` processes on demand; SIGTERM each one at teardown."""
    yield from roomd_processes(tmp_path)


def address(roomd: RoomdProcess) -> tuple[str, int]:
    """Return the (host, port) roomd listens on."""
    host, port = roomd.url.removeprefix("ws://").removesuffix("/v1").rsplit(":", 1)
    return host, int(port)


def read_upgraded(sock: socket.socket, count: int) -> tuple[bytes, list[dict[str, object]]]:
    """Return roomd's response head and the first `count` messages after it (5 s at most)."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"roomd closed during the handshake: {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    frames = FrameProtocol(client=True, extensions=[])
    messages: list[dict[str, object]] = []
    while True:
        frames.receive_bytes(rest)
        messages += [json.loads(frame.payload) for frame in frames.received_frames()]
        if len(messages) >= count:
            return head, messages
        rest = sock.recv(65536)
        assert rest, f"roomd closed after {messages}"


def test_frames_pipelined_behind_the_upgrade_request_are_processed(start_roomd: Start) -> None:
    """A raw client sending request, auth and joinChatroom in one sendall is authed and joined."""
    roomd = start_roomd()
    host = WsClient(roomd.url)
    host.login("alice")
    room_id = host.request({"type": "createChatroom"})["roomId"]
    request = WSConnection(ConnectionType.CLIENT).send(
        Request(host="127.0.0.1", target="/v1", subprotocols=["roomd.v1.json"])
    )
    framer = FrameProtocol(client=True, extensions=[])
    auth = {"type": "auth", "token": token("bob"), "id": 1}
    join = {"type": "joinChatroom", "roomId": room_id, "id": 2}
    frames = b"".join(framer.send_data(json.dumps(m), fin=True) for m in (auth, join))
    with socket.create_connection(address(roomd), timeout=5) as sock:
        sock.sendall(request + frames)
        head, (hello, auth_ok, joined) = read_upgraded(sock, 3)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert hello["type"] == "hello"
    assert (auth_ok["type"], auth_ok["aid"], auth_ok["id"]) == ("authOk", "bob", 1)
    assert (joined["type"], joined["roomId"], joined["id"]) == ("joinSuccess", room_id, 2)
    assert host.recv_type("userJoined")["aid"] == "bob"
    host.close()


def test_a_stalled_handshake_is_closed_at_the_handshake_deadline(start_roomd: Start) -> None:
    """A request that never completes is dropped after --handshake-timeout, unanswered."""
    roomd = start_roomd("--handshake-timeout", "0.5")
    with socket.create_connection(address(roomd), timeout=5) as sock:
        sock.sendall(b"GET /v1 HTTP/1.1\r\nHost: x\r\n")
        start = time.monotonic()
        assert sock.recv(65536) == b""
        elapsed = time.monotonic() - start
    assert 0.3 <= elapsed <= 3, elapsed


def test_max_connections_answers_503(start_roomd: Start) -> None:
    """Past --max-connections open WebSocket connections, a handshake gets HTTP 503."""
    roomd = start_roomd("--max-connections", "2")
    clients = [WsClient(roomd.url) for _ in range(2)]
    for client in clients:
        client.expect_hello()
    with socket.create_connection(address(roomd), timeout=5) as sock:
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host="127.0.0.1", target="/v1")))
        assert sock.recv(65536).startswith(b"HTTP/1.1 503 ")
    for client in clients:
        client.close()


def test_slowloris_from_one_ip_holds_at_most_its_limit_and_others_get_in(
    start_roomd: Start,
) -> None:
    """2,000 stalled partial handshakes from one IP keep 5 slots; 127.0.0.2 still joins at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard >= STALLED + 200, f"this test needs {STALLED + 200} file descriptors"
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, STALLED + 200), hard))
    roomd = start_roomd("--handshake-timeout", "30")
    host, port = address(roomd)
    stalled: list[socket.socket] = []
    try:
        for _ in range(STALLED):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"GET /v1 HTTP/1.1\r\n")
            stalled.append(sock)
        deadline = time.monotonic() + 10
        answered = 0
        for sock in stalled:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                reply = sock.recv(65536)
            except TimeoutError:
                continue  # still held: one of the IP's slots
            assert reply.startswith(b"HTTP/1.1 429 "), reply[:40]
            answered += 1
            if answered == STALLED - 5:
                break
        assert answered == STALLED - 5
        start = time.monotonic()
        other = WsClient(roomd.url, source_address=("127.0.0.2", 0))
        other.login("carol")
        assert other.request({"type": "createChatroom"})["type"] == "joinSuccess"
        assert time.monotonic() - start < 2
        other.close()
    finally:
        for sock in stalled:
            sock.close()
