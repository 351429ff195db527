"""roomd under abuse, end to end against a real `roomd serve` on loopback (PROTOCOL.md 1.1 §1, §2).

Every loop here is bounded in count and time, and every socket targets 127.0.0.x.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socket
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import CloseConnection, Message, Ping, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol, Opcode

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
        # The flood of refusals is one log line (then a count a minute), not thousands.
        refused = [line for line in roomd.logs().splitlines() if "refused" in line]
        assert len(refused) == 1 and "per_ip_limit" in refused[0], refused
    finally:
        for sock in stalled:
            sock.close()


def open_fds(roomd: RoomdProcess) -> int:
    """Return how many file descriptors the roomd process holds."""
    return len(os.listdir(f"/proc/{roomd.proc.pid}/fd"))


def settled_fds(roomd: RoomdProcess, baseline: int, timeout: float = 5.0) -> int:
    """Wait (bounded) for roomd's descriptors to fall back to `baseline`; return the count."""
    deadline = time.monotonic() + timeout
    while (count := open_fds(roomd)) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


class RawClient:
    """A WebSocket client on a plain socket (wsproto), able to end in a TCP reset."""

    def __init__(self, roomd: RoomdProcess) -> None:
        self.sock = socket.create_connection(address(roomd), timeout=5)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target="/v1")))
        self.inbox: list[dict[str, object]] = []

    def send(self, message: dict[str, object]) -> None:
        """Send one JSON message."""
        self.sock.sendall(self.ws.send(Message(data=json.dumps(message))))

    def recv(self) -> dict[str, object]:
        """Return the next message (5 s at most)."""
        while not self.inbox:
            data = self.sock.recv(65536)
            assert data, "roomd closed the connection"
            self.ws.receive_data(data)
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.inbox.append(json.loads(event.data))
        return self.inbox.pop(0)

    def reset(self) -> None:
        """Drop the connection with a TCP RST (SO_LINGER 0), as a crashed peer does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        """Close cleanly: a close frame, then wait for roomd's, then the socket."""
        self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        with contextlib.suppress(OSError):
            while self.sock.recv(65536):
                pass
        self.sock.close()


def test_after_a_thousand_lifecycles_the_descriptors_are_back_at_baseline(
    start_roomd: Start,
) -> None:
    """1,000 connect-auth-join-message-leave-close lifecycles, a tenth in RST, leak nothing."""
    roomd = start_roomd("--max-conns-per-ip", "0", "--rate", "1000", "--burst", "1000")
    host = WsClient(roomd.url)
    host.login("host")
    room_id = host.request({"type": "createChatroom"})["roomId"]
    baseline = open_fds(roomd)
    secret_token = token("guest")
    for index in range(1000):
        client = RawClient(roomd)
        assert client.recv()["type"] == "hello"
        client.send({"type": "auth", "token": secret_token})
        client.send({"type": "joinChatroom", "roomId": room_id})
        client.send({"type": "message", "roomId": room_id, "ciphertext": "aGk="})
        assert [client.recv()["type"] for _ in range(3)] == ["authOk", "joinSuccess", "newMessage"]
        if index % 10 == 9:
            client.reset()
        else:
            client.send({"type": "leaveChatroom", "roomId": room_id})
            assert client.recv()["type"] == "leftChatroom"
            client.close()
        # The host sees the guest come, speak and go (reason disconnected after a reset).
        assert host.recv_type("userJoined")["aid"] == "guest"
        assert host.recv_type("newMessage")["seq"] == index + 1
        left = host.recv_type("userLeft")
        assert left["reason"] == ("disconnected" if index % 10 == 9 else "left")
    assert settled_fds(roomd, baseline) == baseline
    host.close()


# Where the garbage goes: before the request, after the upgrade, after auth.
STAGES = ("handshake", "upgraded", "authenticated")


def test_random_bytes_at_every_stage_never_hurt_roomd_or_an_honest_room(
    start_roomd: Start,
) -> None:
    """Random bytes, then EOF, at every stage: each connection closes, nothing leaks or is lost."""
    # A high rate: alice speaks once per example, and her bucket is not under test here.
    roomd = start_roomd(
        "--max-conns-per-ip", "0", "--handshake-timeout", "2", "--rate", "1000", "--burst", "1000"
    )
    alice, bob = WsClient(roomd.url), WsClient(roomd.url)
    alice.login("alice")
    room_id = alice.request({"type": "createChatroom"})["roomId"]
    bob.login("bob")
    assert bob.request({"type": "joinChatroom", "roomId": room_id})["type"] == "joinSuccess"
    assert alice.recv_type("userJoined")["aid"] == "bob"
    baseline = open_fds(roomd)
    last_seq = 0

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(stage=st.sampled_from(STAGES), garbage=st.binary(min_size=1, max_size=2048))
    def attack(stage: str, garbage: bytes) -> None:
        nonlocal last_seq
        client = RawClient(roomd)
        if stage != "handshake":
            assert client.recv()["type"] == "hello"
            if stage == "authenticated":
                client.send({"type": "auth", "token": token("mallory")})
                assert client.recv()["type"] == "authOk"
        else:  # garbage instead of a request: start over on a bare socket
            client.sock.close()
            client.sock = socket.create_connection(address(roomd), timeout=5)
        with contextlib.suppress(OSError):
            client.sock.sendall(garbage)
            client.sock.shutdown(socket.SHUT_WR)  # EOF: nothing more is coming
        client.sock.settimeout(3)
        with contextlib.suppress(ConnectionResetError):
            while client.sock.recv(65536):
                pass  # roomd answers, then closes: recv returns b"" (or a reset)
        client.sock.close()
        assert roomd.proc.poll() is None
        alice.send({"type": "message", "roomId": room_id, "ciphertext": "aGk="})
        seq = bob.recv_type("newMessage")["seq"]
        assert seq == last_seq + 1, "the honest room lost or reordered a message"
        last_seq = seq

    attack()
    assert settled_fds(roomd, baseline) == baseline
    alice.close()
    bob.close()


def test_a_ping_flood_ends_in_4004_while_an_honest_room_stays_fast(start_roomd: Start) -> None:
    """20,000 pings over 32 s get only what the bucket allows, then 4004; p99 stays < 100 ms."""
    roomd = start_roomd()
    alice, bob = WsClient(roomd.url), WsClient(roomd.url)
    alice.login("alice")
    room_id = alice.request({"type": "createChatroom"})["roomId"]
    bob.login("bob")
    assert bob.request({"type": "joinChatroom", "roomId": room_id})["type"] == "joinSuccess"
    flooder = RawClient(roomd)
    assert flooder.recv()["type"] == "hello"
    flooder.send({"type": "auth", "token": token("flooder")})
    assert flooder.recv()["type"] == "authOk"
    ping = flooder.ws.send(Ping(b"flood"))
    outcome: dict[str, object] = {}

    def flood() -> None:
        frames = FrameProtocol(client=True, extensions=[])
        pongs, code, sent = 0, None, 0
        flooder.sock.settimeout(0.001)
        start = time.monotonic()
        while code is None and time.monotonic() - start < 40 and sent < 40_000:
            with contextlib.suppress(OSError):
                flooder.sock.sendall(ping * 25)
                sent += 25
            time.sleep(0.035)
            try:
                data = flooder.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            frames.receive_bytes(data)
            for frame in frames.received_frames():
                if frame.opcode is Opcode.PONG:
                    pongs += 1
                elif frame.opcode is Opcode.CLOSE:
                    code = frame.payload[0]
        outcome.update(pongs=pongs, code=code, sent=sent, seconds=time.monotonic() - start)

    flooding = threading.Thread(target=flood)
    flooding.start()
    latencies = []
    while flooding.is_alive() and len(latencies) < 400:
        sent_at = time.monotonic()
        alice.send({"type": "message", "roomId": room_id, "ciphertext": "aGk="})
        assert bob.recv_type("newMessage")["type"] == "newMessage"
        latencies.append(time.monotonic() - sent_at)
        assert alice.recv_type("newMessage")["type"] == "newMessage"
        time.sleep(0.1)
    flooding.join(15)
    flooder.sock.close()
    assert outcome["code"] == 4004, outcome
    assert isinstance(outcome["sent"], int) and outcome["sent"] >= 20_000
    seconds = outcome["seconds"]
    assert isinstance(seconds, float) and isinstance(outcome["pongs"], int)
    assert outcome["pongs"] <= 30 + 10 * seconds + 5  # burst, then the drain rate
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99) - 1] < 0.1, latencies[-5:]
    alice.close()
    bob.close()


def rss_kib(roomd: RoomdProcess) -> int:
    """Return the resident memory of the roomd process, in KiB."""
    status = Path(f"/proc/{roomd.proc.pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1])


def create_and_leave(client: RawClient, count: int) -> list[str]:
    """Create `count` rooms as `client` and leave each at once; return their ids.

    32 creations to a write, then 32 leaves: a connection is in 32 rooms at most.
    """
    made: list[str] = []
    while len(made) < count:
        batch = min(32, count - len(made))
        creates = [{"type": "createChatroom", "id": n} for n in range(batch)]
        client.sock.sendall(b"".join(client.ws.send(Message(json.dumps(m))) for m in creates))
        ids = []
        while len(ids) < batch:
            reply = client.recv()
            assert reply["type"] in {"joinSuccess", "hostUpdated"}, reply
            if reply["type"] == "joinSuccess":
                ids.append(str(reply["roomId"]))
        leaves = [{"type": "leaveChatroom", "roomId": room_id} for room_id in ids]
        client.sock.sendall(b"".join(client.ws.send(Message(json.dumps(m))) for m in leaves))
        left = 0
        while left < batch:
            left += client.recv()["type"] == "leftChatroom"
        made += ids
    return made


def seed_empty_rooms(data_dir: Path, count: int) -> list[str]:
    """Add `count` empty rooms to the SQLite store of `data_dir`, as roomd stores them."""
    now_ms = int(time.time() * 1000)
    rows = [
        (f"seeded-{n:05}", f"aid-{n % 500}", os.urandom(120), now_ms, now_ms, 7)
        for n in range(count)
    ]
    with contextlib.closing(sqlite3.connect(data_dir / "rooms.sqlite3")) as db, db:
        db.executemany(
            "INSERT INTO rooms (room_id, host, encrypted_room_key, created_at, empty_since,"
            " seq_reserved) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
    return [row[0] for row in rows]


def test_twenty_thousand_empty_rooms_cost_at_most_20_mb_and_come_back_on_join(
    start_roomd: Start, tmp_path: Path
) -> None:
    """Empty rooms cost under 1 KiB each, made over WebSocket or restored, and wake on join."""
    data_dir = tmp_path / "rooms"
    data_dir.mkdir()
    roomd = start_roomd(
        "--max-rooms-per-aid", "0", "--rate", "1e6", "--burst", "1e6", data_dir=data_dir
    )
    creator = RawClient(roomd)
    assert creator.recv()["type"] == "hello"
    creator.send({"type": "auth", "token": token("creator")})
    assert creator.recv()["type"] == "authOk"
    baseline = rss_kib(roomd)
    create_and_leave(creator, 256)  # warm-up: the first rooms grow the process's pools
    before = rss_kib(roomd)
    made = create_and_leave(creator, 2016)
    assert rss_kib(roomd) - before <= 2016, (before, rss_kib(roomd))  # 1 KiB a room
    creator.close()
    roomd.stop()
    seeded = seed_empty_rooms(data_dir, 20_000 - 256 - 2016)
    roomd = start_roomd(data_dir=data_dir)
    guest = WsClient(roomd.url)
    guest.login("guest")
    assert rss_kib(roomd) - baseline <= 20 * 1024, (baseline, rss_kib(roomd))
    # Back on join, where each left off: a made room never spoke, a seeded one had 7.
    for room_id, last_seq in ((made[-1], 0), (seeded[-1], 7)):
        joined = guest.request({"type": "joinChatroom", "roomId": room_id})
        assert (joined["type"], joined["lastSeq"]) == ("joinSuccess", last_seq), joined
        guest.send({"type": "message", "roomId": room_id, "ciphertext": "aGk="})
        assert guest.recv_type("newMessage")["seq"] == last_seq + 1
    guest.close()
