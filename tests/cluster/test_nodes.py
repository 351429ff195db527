"""Several real `roomd serve --cluster` nodes and a real redis-server: CLUSTER.md's guarantees.

Each test starts a redis-server on a free loopback port in a temp dir, and 2
or 3 nodes pointed at it, every one on its own free ports. Clients connect to
different nodes and must see exactly what they would see on one node.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from ..e2e_support import SECRET, RoomdProcess, WsClient, b64, clean_env
from .conftest import API_KEY, RedisServer, free_port

Start = Callable[..., RoomdProcess]


def client(node: RoomdProcess, aid: str) -> WsClient:
    """Return a client of `node`, authenticated as `aid`."""
    ws = WsClient(node.url)
    ws.login(aid)
    return ws


def create(ws: WsClient, key: bytes = b"room-key") -> str:
    """Create a room as `ws`; return its id (its creator is in it, as host)."""
    ws.send({"type": "createChatroom", "encryptedRoomKey": b64(key)})
    joined = ws.recv_type("joinSuccess")
    return str(joined["roomId"])


def join(ws: WsClient, room_id: str, **fields: Any) -> dict[str, Any]:
    """Join `room_id` as `ws`; return the `joinSuccess`."""
    ws.send({"type": "joinChatroom", "roomId": room_id, **fields})
    return ws.recv_type("joinSuccess")


def send(ws: WsClient, room_id: str, text: bytes) -> None:
    """Send one message to `room_id` as `ws`."""
    ws.send({"type": "message", "roomId": room_id, "ciphertext": b64(text)})


def api(node: RoomdProcess, method: str, path: str, body: object = None) -> int:
    """Call `node`'s server API; return the HTTP status."""
    assert node.api_url is not None
    data = None if body is None else orjson.dumps(body)
    request = urllib.request.Request(
        node.api_url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_members_on_different_nodes_see_each_other_and_every_message(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """alice on node 0, bob on node 1: presence, messages and seq as on one node."""
    a, b = nodes(2)
    alice, bob = client(a, "alice"), client(b, "bob")
    room_id = create(alice)
    joined = join(bob, room_id)
    assert joined["host"] == "alice"
    assert [member["aid"] for member in joined["members"]] == ["alice", "bob"]
    assert alice.recv_type("userJoined")["aid"] == "bob"
    alice.send({"type": "message", "roomId": room_id, "ciphertext": b64(b"hi bob")})
    for ws in (alice, bob):
        message = ws.recv_type("newMessage")
        assert (message["seq"], message["from"]) == (1, "alice")
    bob.send({"type": "typing", "roomId": room_id, "isTyping": True})
    assert alice.recv_type("typing")["aid"] == "bob"


def test_racing_senders_on_three_nodes_see_one_contiguous_seq_order(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """Three members on three nodes send 30 messages each at once: one order, seqs 1..90."""
    n0, n1, n2 = nodes(3, "--rate", "1000", "--burst", "1000")
    members = [client(n0, "a"), client(n1, "b"), client(n2, "c")]
    room_id = create(members[0])
    for ws in members[1:]:
        join(ws, room_id)
    for k in range(30):
        for index, ws in enumerate(members):
            send(ws, room_id, f"{index}-{k}".encode())
    seen = []
    for ws in members:
        messages = [ws.recv_type("newMessage") for _ in range(90)]
        texts = [base64.b64decode(message["ciphertext"]).decode() for message in messages]
        seen.append([(message["seq"], text) for message, text in zip(messages, texts, strict=True)])
    assert [seq for seq, _ in seen[0]] == list(range(1, 91))
    assert seen[0] == seen[1] == seen[2]
    for index in range(3):  # each sender's own order is kept
        mine = [int(text.split("-")[1]) for _, text in seen[0] if text.startswith(f"{index}-")]
        assert mine == list(range(30))


def test_an_aid_on_two_nodes_is_present_once_until_its_last_connection_leaves(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """userJoined for alice's first connection anywhere, userLeft for her last (guarantee 3)."""
    n0, n1 = nodes(2)
    carol = client(n0, "carol")
    room_id = create(carol)
    alice_here, alice_there = client(n0, "alice"), client(n1, "alice")
    join(alice_here, room_id)
    assert carol.recv_type("userJoined")["aid"] == "alice"
    joined = join(alice_there, room_id)
    assert [member["aid"] for member in joined["members"]] == ["carol", "alice"]
    alice_here.send({"type": "leaveChatroom", "roomId": room_id})
    assert alice_here.recv_type("leftChatroom")["reason"] == "left"
    send(carol, room_id, b"still here?")
    # Nothing came before the message: no second userJoined, no userLeft.
    assert carol.recv()["type"] == "newMessage"
    assert alice_there.recv_type("newMessage")["seq"] == 1
    alice_there.close()
    left = carol.recv_type("userLeft")
    assert (left["aid"], left["reason"]) == ("alice", "disconnected")


def test_host_moves_across_nodes_and_max_members_holds_for_the_cluster(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """The host on node 0 leaves: bob on node 1 hosts. A third AID on node 2 finds it full."""
    n0, n1, n2 = nodes(3, "--max-members", "2")
    alice, bob, carol = client(n0, "alice"), client(n1, "bob"), client(n2, "carol")
    room_id = create(alice)
    join(bob, room_id)
    carol.send({"type": "joinChatroom", "roomId": room_id, "id": 7})
    refused = carol.recv_type("error")
    assert (refused["code"], refused["id"]) == ("roomFull", 7)
    alice.close()
    assert bob.recv_type("userLeft")["aid"] == "alice"
    assert bob.recv_type("hostUpdated")["host"] == "bob"
    assert join(carol, room_id)["host"] == "bob"


def test_a_host_on_one_node_kicks_and_bans_a_member_on_another(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """Kick with ban over WebSocket reaches bob's node; bob cannot come back (guarantee 4)."""
    n0, n1 = nodes(2)
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    alice.send({"type": "kick", "roomId": room_id, "aid": "bob", "ban": True})
    assert bob.recv_type("leftChatroom")["reason"] == "kicked"
    assert alice.recv_type("userLeft")["reason"] == "kicked"
    bob.send({"type": "joinChatroom", "roomId": room_id})
    assert bob.recv_type("error")["code"] == "forbidden"


def test_the_api_of_a_node_without_members_kicks_and_deletes(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """Node 2 has no member in the room; its API kicks bob (node 1) and deletes the room."""
    n0, n1, n2 = nodes(3)
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    assert api(n2, "POST", f"/v1/rooms/{room_id}/kick", {"aid": "bob"}) == 204
    assert bob.recv_type("leftChatroom")["reason"] == "kicked"
    assert alice.recv_type("userLeft")["aid"] == "bob"
    assert api(n2, "DELETE", f"/v1/rooms/{room_id}") == 204
    assert alice.recv_type("roomDeleted")["reason"] == "deleted"
    assert api(n0, "GET", f"/v1/rooms/{room_id}") == 404
    alice.send({"type": "joinChatroom", "roomId": room_id})
    assert alice.recv_type("error")["code"] == "notFound"


def test_a_client_recovers_on_another_node_with_since(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """bob drops from node 0, rejoins on node 1 with since: the messages he missed, in order."""
    n0, n1 = nodes(2)
    alice, bob = client(n0, "alice"), client(n0, "bob")
    room_id = create(alice)
    joined = join(bob, room_id)
    send(alice, room_id, b"one")
    assert bob.recv_type("newMessage")["seq"] == 1
    bob.close()
    for text in (b"two", b"three"):
        send(alice, room_id, text)
    bob = client(n1, "bob")
    back = join(bob, room_id, since={"epoch": joined["epoch"], "seq": 1})
    assert back["recovered"] is True
    replayed = [bob.recv_type("newMessage") for _ in range(2)]
    assert [(m["seq"], m["ciphertext"]) for m in replayed] == [(2, b64(b"two")), (3, b64(b"three"))]
    send(alice, room_id, b"four")
    assert bob.recv_type("newMessage")["seq"] == 4


def shard_subscribers(redis_port: int, room_id: str) -> int:
    """Return how many nodes are subscribed to `room_id`'s channel (PUBSUB SHARDNUMSUB)."""
    channel = f"roomd:{{{room_id}}}".encode()
    with socket.create_connection(("127.0.0.1", redis_port), timeout=5) as conn:
        conn.sendall(b"PUBSUB SHARDNUMSUB " + channel + b"\r\n")
        reply = b""
        while reply.count(b"\r\n") < 4:
            reply += conn.recv(4096)
    return int(reply.split(b"\r\n")[3].lstrip(b":"))


def metric(node: RoomdProcess, name: str) -> float:
    """Return the value of metric `name` on `node`'s /metrics."""
    assert node.api_url is not None
    request = urllib.request.Request(
        node.api_url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_only_nodes_with_members_in_a_room_are_subscribed_to_it(
    nodes: Callable[..., list[RoomdProcess]], redis_port: int
) -> None:
    """Node 2 never subscribes; node 1 unsubscribes within 1 s of its last member leaving."""
    n0, n1, _ = nodes(3)
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    assert shard_subscribers(redis_port, room_id) == 2
    assert metric(n1, "roomd_cluster_subscriptions") == 1
    send(alice, room_id, b"hello")
    bob.recv_type("newMessage")
    events_before = metric(n1, "roomd_cluster_events_in_total")
    assert events_before >= 2  # bob's own join, then the message
    bob.send({"type": "leaveChatroom", "roomId": room_id})
    bob.recv_type("leftChatroom")
    deadline = time.monotonic() + 1.0
    while shard_subscribers(redis_port, room_id) != 1:
        assert time.monotonic() < deadline, "node 1 still subscribed 1 s after its last member left"
        time.sleep(0.05)
    assert metric(n1, "roomd_cluster_subscriptions") == 0
    send(alice, room_id, b"not for node 1")
    alice.recv_type("newMessage")
    assert metric(n1, "roomd_cluster_events_in_total") == events_before + 1  # the leave only


def test_a_cluster_node_refuses_to_start_without_shared_secrets(
    roomd: Start, redis_port: int, tmp_path: Path
) -> None:
    """No ROOMD_API_KEY in the environment: the node exits and says why."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "roomd",
            "serve",
            "--port",
            "0",
            "--api-port",
            "0",
            "--data-dir",
            str(tmp_path),
            "--cluster",
            f"redis://127.0.0.1:{redis_port}/0",
        ],
        env=clean_env(SECRET),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode != 0
    assert b"ROOMD_API_KEY" in done.stderr and b"every node" in done.stderr
    assert not (tmp_path / "api-key").exists()


def test_when_a_node_is_killed_its_members_leave_and_the_host_moves(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """kill -9 of bob's node: within 2 x heartbeat_timeout alice sees bob leave and hosts."""
    timeout = 2.0
    n0, n1 = nodes(2, "--heartbeat-timeout", str(timeout), "--heartbeat-interval", "1")
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    alice.send({"type": "transferHost", "roomId": room_id, "to": "bob"})
    assert alice.recv_type("hostUpdated")["host"] == "bob"
    killed = time.monotonic()
    n1.proc.kill()
    left = alice.recv_type("userLeft", timeout=2 * timeout + 1)
    took = time.monotonic() - killed
    assert (left["aid"], left["reason"]) == ("bob", "disconnected")
    assert took <= 2 * timeout, took
    assert alice.recv_type("hostUpdated")["host"] == "alice"
    send(alice, room_id, b"alone now")
    assert alice.recv_type("newMessage")["seq"] == 1


def test_while_redis_is_down_operations_are_refused_and_service_comes_back(
    nodes: Callable[..., list[RoomdProcess]], redis_server: RedisServer
) -> None:
    """Redis stops: `unavailable` with retryAfter, connections kept. It restarts empty:
    the room is restored with a new epoch, its members rejoin, seq goes on (guarantee 8)."""
    n0, n1 = nodes(
        2, "--cluster-timeout", "1", "--heartbeat-timeout", "2", "--heartbeat-interval", "1"
    )
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    joined = join(bob, room_id)
    send(alice, room_id, b"before")
    assert bob.recv_type("newMessage")["seq"] == 1
    redis_server.stop()
    asked = time.monotonic()
    alice.send({"type": "message", "roomId": room_id, "ciphertext": b64(b"lost?"), "id": 5})
    refused = alice.recv_type("error")
    assert (refused["code"], refused["id"]) == ("unavailable", 5)
    assert refused["retryAfter"] > 0
    assert time.monotonic() - asked < 1.5
    assert api(n1, "GET", f"/v1/rooms/{room_id}") == 503  # SERVER_API.md: `unavailable`
    redis_server.start()
    # The nodes notice the empty Redis, restore the room and close their members 1012.
    for ws in (alice, bob):
        with pytest.raises(Exception):  # noqa: B017 - websockets' ConnectionClosed
            while True:
                ws.recv(timeout=10)
        assert ws.ws.close_code == 1012
    alice, bob = client(n0, "alice"), client(n1, "bob")
    since = {"epoch": joined["epoch"], "seq": 1}
    back = join(alice, room_id, since=since)
    assert back["recovered"] is False and back["epoch"] != joined["epoch"]
    assert back["lastSeq"] >= 1 and back["host"] == "alice"
    join(bob, room_id, since=since)
    send(bob, room_id, b"after")
    assert alice.recv_type("newMessage")["seq"] == back["lastSeq"] + 1


def test_an_empty_room_expires_once_whichever_nodes_are_up(
    nodes: Callable[..., list[RoomdProcess]],
) -> None:
    """Empty for room_ttl cluster-wide: deleted once (one node logs it), gone on every node."""
    n0, n1 = nodes(2, "--room-ttl", "2")
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    alice.close()
    time.sleep(2.5)  # real processes: the TTL runs on their clocks
    assert api(n0, "GET", f"/v1/rooms/{room_id}") == 200  # bob is still in it
    bob.close()
    deadline = time.monotonic() + 5
    while api(n1, "GET", f"/v1/rooms/{room_id}") != 404:
        assert time.monotonic() < deadline, "the room outlived room_ttl by 3 s"
        time.sleep(0.1)
    assert api(n0, "GET", f"/v1/rooms/{room_id}") == 404
    logs = n0.logs() + n1.logs()
    assert logs.count("deleted (expired)") == 1


def test_rooms_spread_over_two_redis_instances_and_quotas_count_them_all(
    roomd: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Two nodes, each given both Redis: rooms land on both, work across nodes, and
    --max-rooms counts the rooms of both Redis instances."""
    second = RedisServer(free_port(), tmp_path / "second")
    second.directory.mkdir()
    second.start()
    try:
        urls = [f"redis://127.0.0.1:{port}/0" for port in (redis_server.port, second.port)]
        started = []
        for index in range(2):
            data_dir = tmp_path / f"node{index}"
            data_dir.mkdir()
            started.append(
                roomd(
                    "--cluster",
                    urls[0],
                    "--cluster",
                    urls[1],
                    "--node-id",
                    f"n{index}",
                    "--max-rooms",
                    str(SPREAD_ROOMS),
                    data_dir=data_dir,
                    env={"ROOMD_API_KEY": API_KEY},
                )
            )
        n0, n1 = started
        alice, bob = client(n0, "alice"), client(n1, "bob")
        rooms = [create(alice) for _ in range(SPREAD_ROOMS)]
        for room_id in rooms:
            join(bob, room_id)
            send(bob, room_id, room_id.encode())
            message = alice.recv_type("newMessage")
            assert (message["roomId"], message["seq"]) == (room_id, 1)
        counts = [redis_count(port) for port in (redis_server.port, second.port)]
        assert sum(counts) == SPREAD_ROOMS and min(counts) >= 1, counts
        alice.send({"type": "createChatroom", "id": 9})
        refused = alice.recv_type("error")
        assert (refused["code"], refused["id"]) == ("tooManyRooms", 9)
    finally:
        second.stop()


# All landing on one of the two Redis has a chance of 2 / 2**12; more rooms would take
# bob (a join and a message each) past the rate limit's burst of 30.
SPREAD_ROOMS = 12


def redis_count(port: int) -> int:
    """Return how many rooms the Redis on `port` holds (ZCARD roomd:rooms)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"ZCARD roomd:rooms\r\n")
        return int(conn.recv(64).strip().lstrip(b":"))


@attrs.define
class CuttableProxy:
    """A TCP proxy to Redis on a loopback port, that a test can cut (one node's link)."""

    target: int
    port: int = attrs.field(factory=free_port)
    _listener: socket.socket | None = None
    _open: list[socket.socket] = attrs.field(factory=list)
    _cut: threading.Event = attrs.field(factory=threading.Event)

    def start(self) -> None:
        """Accept connections and pump bytes both ways until `cut`."""
        listener = self._listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while not self._cut.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._open += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        """Drop every connection and refuse new ones: the node behind it is cut off."""
        self._cut.set()
        if self._listener is not None:
            # Shut down first: close() alone does not wake the thread blocked in accept().
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def test_a_node_cut_off_from_redis_closes_its_clients_and_the_others_remove_them(
    roomd: Start, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Node 1 loses Redis (its link cut), node 0 does not: node 1 closes bob 1012 after
    heartbeat_timeout, and alice on node 0 sees bob leave (guarantee 7)."""
    timeout = 2.0
    proxy = CuttableProxy(redis_server.port)
    proxy.start()
    flags = [
        "--heartbeat-timeout",
        str(timeout),
        "--heartbeat-interval",
        "1",
        "--cluster-timeout",
        "0.5",
    ]
    started = []
    for index, port in enumerate((redis_server.port, proxy.port)):
        data_dir = tmp_path / f"node{index}"
        data_dir.mkdir()
        started.append(
            roomd(
                "--cluster",
                f"redis://127.0.0.1:{port}/0",
                "--node-id",
                f"n{index}",
                *flags,
                data_dir=data_dir,
                env={"ROOMD_API_KEY": API_KEY},
            )
        )
    n0, n1 = started
    alice, bob = client(n0, "alice"), client(n1, "bob")
    room_id = create(alice)
    join(bob, room_id)
    cut = time.monotonic()
    proxy.cut()
    with pytest.raises(Exception):  # noqa: B017 - websockets' ConnectionClosed
        while True:
            bob.recv(timeout=3 * timeout)
    assert bob.ws.close_code == 1012
    assert time.monotonic() - cut >= timeout * 0.75  # not before its key could expire
    left = alice.recv_type("userLeft", timeout=3 * timeout)
    assert (left["aid"], left["reason"]) == ("bob", "disconnected")
