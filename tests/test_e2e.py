"""End to end: a real `roomd serve` process on 127.0.0.1, real clients over loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.exceptions import ConnectionClosed, InvalidStatus
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Message, Request

from .e2e_support import (
    CBOR,
    JSON,
    SECRET,
    RoomdProcess,
    Silent,
    TrioClient,
    WsClient,
    b64,
    clean_env,
    roomd_processes,
    token,
)

pytestmark = pytest.mark.e2e

Start = Callable[..., RoomdProcess]


@pytest.fixture
def start_roomd(tmp_path: Path) -> Iterator[Start]:
    """Start `roomd serve` processes on demand; SIGTERM each one at teardown."""
    yield from roomd_processes(tmp_path)


@pytest.fixture
def roomd(start_roomd: Start) -> RoomdProcess:
    """A roomd process with default settings."""
    return start_roomd()


def create_room(client: WsClient | TrioClient, **fields: Any) -> dict[str, Any]:
    """Create a room as `client` and return its `joinSuccess`."""
    joined = client.request({"type": "createChatroom", **fields})
    assert joined["type"] == "joinSuccess", joined
    return joined


def rejection_status(url: str) -> int:
    """Return the HTTP status of a handshake to `url` that must be rejected."""
    with pytest.raises(InvalidStatus) as caught:
        WsClient(url)
    return caught.value.response.status_code


def test_sixth_connection_from_one_ip_is_rejected_until_one_closes(roomd: RoomdProcess) -> None:
    """A sixth connection from one IP gets HTTP 429; once one closes, a new one is accepted."""
    clients = [WsClient(roomd.url) for _ in range(5)]
    for client in clients:
        client.expect_hello()
    assert rejection_status(roomd.url) == 429
    clients.pop().close()
    # The server frees the slot when its connection task ends, just after the close.
    deadline = time.monotonic() + 5
    while True:
        try:
            clients.append(WsClient(roomd.url))
            break
        except InvalidStatus as exc:
            assert exc.response.status_code == 429
            assert time.monotonic() < deadline, "the closed connection's slot was never freed"
            time.sleep(0.05)
    clients[-1].expect_hello()
    for client in clients:
        client.close()


def test_rate_limit_answers_once_drops_the_rest_then_recovers(start_roomd: Start) -> None:
    """Over the burst, one `rateLimited` with retryAfter, the rest dropped; later it sends again."""
    roomd = start_roomd("--rate", "1", "--burst", "3")
    host = WsClient(roomd.url)
    host.login("host")
    room = create_room(host)["roomId"]
    sender = WsClient(roomd.url)
    sender.expect_hello()
    # auth, join and six messages in one go: the bucket (3) admits auth, join and message 0.
    sender.send({"type": "auth", "token": token("sender")})
    sender.send({"type": "joinChatroom", "roomId": room})
    for n in range(6):
        sender.send(
            {"type": "message", "roomId": room, "ciphertext": b64(b"x"), "clientMsgId": str(n)}
        )
    assert sender.recv()["type"] == "authOk"
    # The error is the connection's own reply: it may overtake what the room answers
    # (joinSuccess, message 0's broadcast), which comes through the room's loop.
    replies = {reply["type"]: reply for reply in (sender.recv(), sender.recv(), sender.recv())}
    assert set(replies) == {"joinSuccess", "newMessage", "error"}, replies
    assert replies["newMessage"]["clientMsgId"] == "0", replies
    limited = replies["error"]
    assert limited["code"] == "rateLimited", limited
    assert 0 < limited["retryAfter"] <= 1.5, limited
    # The wait for the bucket to drain doubles as the check that the rest were dropped.
    try:
        extra = sender.recv(timeout=limited["retryAfter"] + 0.1)
    except Silent:
        pass
    else:
        raise AssertionError(f"a dropped message was answered: {extra}")
    sender.send({"type": "message", "roomId": room, "ciphertext": b64(b"y"), "clientMsgId": "late"})
    assert sender.recv()["clientMsgId"] == "late"
    assert host.recv()["type"] == "userJoined"
    assert [host.recv()["clientMsgId"] for _ in range(2)] == ["0", "late"]
    host.assert_silent(0.1)
    host.close()
    sender.close()


def test_cbor_and_json_members_see_the_same_blob_bytes(roomd: RoomdProcess) -> None:
    """A CBOR and a JSON member each get the right subprotocol and the same blob bytes."""
    cbor = WsClient(roomd.url, CBOR)
    json = WsClient(roomd.url, JSON)
    assert (cbor.ws.subprotocol, json.ws.subprotocol) == (CBOR, JSON)
    cbor.login("carol")
    json.login("jason")
    room = create_room(cbor, publicKey=b"carol-pk")["roomId"]
    assert json.request({"type": "joinChatroom", "roomId": room})["type"] == "joinSuccess"
    assert cbor.recv()["type"] == "userJoined"
    blobs = {
        "carol": (b"\x00\xffcbor ciphertext\x80", b"\x01" * 12),
        "jason": (b"json \xfe\x00 ciphertext", b"\x02" * 12),
    }
    cbor.send(
        {
            "type": "message",
            "roomId": room,
            "ciphertext": blobs["carol"][0],
            "iv": blobs["carol"][1],
        }
    )
    json.send(
        {
            "type": "message",
            "roomId": room,
            "ciphertext": b64(blobs["jason"][0]),
            "iv": b64(blobs["jason"][1]),
        }
    )
    for client in (cbor, json):
        for _ in blobs:
            got = client.recv()
            assert got["type"] == "newMessage", got
            blob, iv = got["ciphertext"], got["iv"]
            if client is json:
                blob, iv = (
                    base64.b64decode(blob, validate=True),
                    base64.b64decode(iv, validate=True),
                )
            assert isinstance(blob, bytes) and (blob, iv) == blobs[got["from"]]
    cbor.close()
    json.close()


def test_three_racing_senders_get_one_contiguous_order(start_roomd: Start) -> None:
    """150 messages raced by three senders reach every member with seq 1..150 in one order."""
    roomd = start_roomd("--rate", "1000", "--burst", "1000")
    names = ["ann", "ben", "cat"]
    clients = [WsClient(roomd.url) for _ in names]
    for client, name in zip(clients, names, strict=True):
        client.login(name)
    room = create_room(clients[0])["roomId"]
    for client in clients[1:]:
        assert client.request({"type": "joinChatroom", "roomId": room})["type"] == "joinSuccess"
    # Drain presence events so that every client's next 150 messages are the race.
    assert [clients[0].recv()["aid"] for _ in range(2)] == ["ben", "cat"]
    assert clients[1].recv()["aid"] == "cat"
    start = threading.Barrier(len(clients), timeout=10)
    received: dict[str, list[tuple[int, str, str]]] = {}
    errors: list[BaseException] = []

    def race(client: WsClient, name: str) -> None:
        try:
            start.wait()
            for n in range(50):
                client.send(
                    {
                        "type": "message",
                        "roomId": room,
                        "ciphertext": b64(f"{name}{n}".encode()),
                        "clientMsgId": f"{name}-{n}",
                    }
                )
            events = [client.recv(timeout=10) for _ in range(150)]
            received[name] = [(e["seq"], e["from"], e["clientMsgId"]) for e in events]
            assert all(e["type"] == "newMessage" for e in events)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=race, args=pair, daemon=True)
        for pair in zip(clients, names, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a sender never finished"
    assert not errors, errors
    order = received["ann"]
    assert [seq for seq, _, _ in order] == list(range(1, 151))
    assert received["ben"] == order and received["cat"] == order
    for name in names:
        assert [cid for _, sender, cid in order if sender == name] == [
            f"{name}-{n}" for n in range(50)
        ]
    for client in clients:
        client.close()


def test_tls_listener_serves_wss_to_a_client_trusting_its_ca(
    start_roomd: Start, tmp_path: Path
) -> None:
    """With --tls-cert/--tls-key roomd announces wss:// and a client trusting the CA joins."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    roomd = start_roomd("--tls-cert", str(cert_path), "--tls-key", str(key_path))
    assert roomd.url.startswith("wss://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    client = WsClient(roomd.url, ssl_context=context)
    client.login("tess")
    joined = create_room(client)
    assert (joined["you"], joined["host"], joined["lastSeq"]) == ("tess", "tess", 0)
    client.close()


def test_api_tls_serves_https_to_a_client_trusting_its_ca(
    start_roomd: Start, tmp_path: Path
) -> None:
    """With --api-tls-cert/--api-tls-key the API line reads https:// and the API answers there."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "api.pem", tmp_path / "api.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    roomd = start_roomd("--api-tls-cert", str(cert_path), "--api-tls-key", str(key_path))
    assert roomd.api_url is not None and roomd.api_url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with urllib.request.urlopen(f"{roomd.api_url}/healthz", context=context, timeout=5) as reply:
        assert json.loads(reply.read()) == {"status": "ok"}
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(roomd.api_url.replace("https", "http") + "/healthz", timeout=5)
    assert "without TLS" not in roomd.logs()


def test_sigterm_closes_every_client_with_1001_and_exits_0(roomd: RoomdProcess) -> None:
    """On SIGTERM every client gets close 1001 and the process exits 0 within 5 s."""
    clients = [WsClient(roomd.url) for _ in range(2)]
    for client, name in zip(clients, ["ann", "ben"], strict=True):
        client.login(name)
    create_room(clients[0])
    began = time.monotonic()
    roomd.terminate()
    for client in clients:
        with pytest.raises(ConnectionClosed) as caught:
            client.recv()
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1001
    assert roomd.proc.wait(5) == 0
    assert time.monotonic() - began < 5


def test_logs_carry_no_token_secret_or_blob(start_roomd: Start) -> None:
    """Even at DEBUG, roomd's logs hold no token, token secret, key, ciphertext or payload."""
    roomd = start_roomd("--log-level", "DEBUG")
    blobs = [
        b"SENTINEL-encryptedRoomKey-4e1a",
        b"SENTINEL-publicKey-alice-77c0",
        b"SENTINEL-publicKey-bob-9d2e",
        b"SENTINEL-ciphertext-a3f5",
        b"SENTINEL-iv-50b1",
        b"SENTINEL-payload-c88d",
        b"SENTINEL-rotatedRoomKey-1f07",
    ]
    room_key, alice_pk, bob_pk, ciphertext, iv, payload, rotated = blobs
    forged = token("alice", secret="not-the-server-secret-0123456789abcdef")
    tokens = [token("alice"), token("bob"), forged]
    alice, bob = WsClient(roomd.url), WsClient(roomd.url, CBOR)
    alice.expect_hello()
    assert alice.request({"type": "auth", "token": forged})["code"] == "unauthenticated"
    assert alice.request({"type": "auth", "token": tokens[0]})["type"] == "authOk"
    bob.expect_hello()
    assert bob.request({"type": "auth", "token": tokens[1]})["type"] == "authOk"
    room = create_room(alice, encryptedRoomKey=b64(room_key), publicKey=b64(alice_pk))["roomId"]
    assert (
        bob.request({"type": "joinChatroom", "roomId": room, "publicKey": bob_pk})[
            "encryptedRoomKey"
        ]
        == room_key
    )
    message = {"type": "message", "roomId": room, "ciphertext": b64(ciphertext), "iv": b64(iv)}
    alice.send(message)
    alice.send({"type": "signal", "roomId": room, "to": "bob", "payload": b64(payload)})
    alice.send({"type": "updateRoomKey", "roomId": room, "encryptedRoomKey": b64(rotated)})
    alice.send({"type": "message", "roomId": room, "ciphertext": "SENTINEL-not-base64!"})
    # The error is a direct reply and may overtake the room's broadcasts.
    own = {event["type"]: event for event in [alice.recv() for _ in range(4)]}
    assert set(own) == {"userJoined", "newMessage", "roomKeyUpdated", "error"}, own
    assert own["error"]["code"] == "badRequest"
    received = [bob.recv() for _ in range(3)]
    assert [event["type"] for event in received] == ["newMessage", "signal", "roomKeyUpdated"]
    assert received[1]["payload"] == payload
    alice.close()
    bob.close()
    assert roomd.stop() == 0
    logs = roomd.logs()
    assert "auth aid=alice" in logs and "auth aid=bob" in logs
    leaks = [SECRET, *tokens, "SENTINEL"]
    for blob in blobs:
        leaks += [b64(blob), blob.hex(), blob.decode()]
    assert [leak for leak in leaks if leak in logs] == []


def test_trio_websocket_client_shares_a_room_with_a_websockets_client(
    roomd: RoomdProcess,
) -> None:
    """A trio-websocket member and a websockets member see presence, events and host moves."""
    alice = WsClient(roomd.url)
    alice.login("alice")
    alice_pk, bob_pk = b64(b"alice public key"), b64(b"bob public key")
    room = create_room(alice, publicKey=alice_pk)["roomId"]
    bob = TrioClient(roomd.url)
    try:
        assert bob.negotiated == JSON
        bob.login("bob")
        joined = bob.request({"type": "joinChatroom", "roomId": room, "publicKey": bob_pk})
        assert isinstance(joined.get("epoch"), str) and 8 <= len(joined["epoch"]) <= 32
        assert joined == {
            "type": "joinSuccess",
            "roomId": room,
            "you": "bob",
            "host": "alice",
            "encryptedRoomKey": None,
            "members": [
                {"aid": "alice", "publicKey": alice_pk},
                {"aid": "bob", "publicKey": bob_pk},
            ],
            "lastSeq": 0,
            "epoch": joined["epoch"],
            "keyEpoch": 0,
        }
        assert alice.recv() == {
            "type": "userJoined",
            "roomId": room,
            "aid": "bob",
            "publicKey": bob_pk,
        }

        bob.send({"type": "message", "roomId": room, "ciphertext": b64(b"hi"), "clientMsgId": "c1"})
        for client in (alice, bob):
            got = client.recv()
            assert (got["type"], got["seq"], got["from"], got["clientMsgId"]) == (
                "newMessage",
                1,
                "bob",
                "c1",
            )
            assert got["ciphertext"] == b64(b"hi")
        message_id = got["messageId"]

        alice.send({"type": "typing", "roomId": room, "isTyping": True})
        assert bob.recv() == {"type": "typing", "roomId": room, "aid": "alice", "isTyping": True}
        bob.send({"type": "reaction", "roomId": room, "messageId": message_id, "emoji": "👍"})
        reaction = {"roomId": room, "messageId": message_id, "aid": "bob", "emoji": "👍"}
        # alice's next event is the reaction: she was not sent her own typing.
        for client in (alice, bob):
            assert client.recv() == {"type": "reaction", **reaction, "remove": False}
        alice.send({"type": "signal", "roomId": room, "to": "bob", "payload": b64(b"offer")})
        assert bob.recv() == {
            "type": "signal",
            "roomId": room,
            "from": "alice",
            "payload": b64(b"offer"),
        }
        bob.send({"type": "signal", "roomId": room, "to": "alice", "payload": b64(b"answer")})
        assert alice.recv() == {
            "type": "signal",
            "roomId": room,
            "from": "bob",
            "payload": b64(b"answer"),
        }

        # The host leaves: bob, present longest, becomes host.
        left = alice.request({"type": "leaveChatroom", "roomId": room, "id": "bye"})
        assert left == {"type": "leftChatroom", "roomId": room, "reason": "left", "id": "bye"}
        assert sorted([bob.recv(), bob.recv()], key=lambda event: event["type"]) == [
            {"type": "hostUpdated", "roomId": room, "host": "bob"},
            {"type": "userLeft", "roomId": room, "aid": "alice", "reason": "left"},
        ]
        rejoined = alice.request({"type": "joinChatroom", "roomId": room})
        assert (rejoined["host"], [m["aid"] for m in rejoined["members"]]) == (
            "bob",
            ["bob", "alice"],
        )
        assert bob.recv() == {
            "type": "userJoined",
            "roomId": room,
            "aid": "alice",
            "publicKey": None,
        }
    finally:
        bob.close()
    # bob's connection goes: alice hears he left and that she is host again.
    assert sorted([alice.recv(), alice.recv()], key=lambda event: event["type"]) == [
        {"type": "hostUpdated", "roomId": room, "host": "alice"},
        {"type": "userLeft", "roomId": room, "aid": "bob", "reason": "disconnected"},
    ]
    alice.close()


def roomd_cli(*args: str) -> str:
    """Run `roomd ARGS` (no ROOMD_* variables set) and return what it printed."""
    printed = subprocess.run(
        [sys.executable, "-m", "roomd", *args],
        env=clean_env(None),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return printed.stdout.strip()


def test_token_printed_by_the_cli_is_accepted_by_a_server_on_the_same_data_dir(
    start_roomd: Start, tmp_path: Path
) -> None:
    """`roomd token` and `roomd serve` share the data dir's secret, stored with mode 0600."""
    data_dir = tmp_path / "data"
    cli_token = roomd_cli("token", "alice", "--data-dir", str(data_dir))
    assert stat.S_IMODE(os.stat(data_dir / "token-secret").st_mode) == 0o600
    roomd = start_roomd(secret=None, data_dir=data_dir)
    client = WsClient(roomd.url)
    client.expect_hello()
    assert client.request({"type": "auth", "token": token("alice")})["code"] == "unauthenticated"
    reply = client.request({"type": "auth", "token": cli_token})
    assert (reply["type"], reply["aid"]) == ("authOk", "alice")
    client.close()


def test_handshake_on_another_path_is_rejected_with_404(roomd: RoomdProcess) -> None:
    """A WebSocket handshake on a path other than /v1 gets HTTP 404."""
    assert rejection_status(roomd.base + "/other") == 404


def test_peer_reset_mid_session_is_a_plain_disconnect(roomd: RoomdProcess) -> None:
    """A client whose TCP connection is reset (RST) just leaves: the others see userLeft."""
    host = WsClient(roomd.url)
    host.login("alice")
    room_id = host.request({"type": "createChatroom"})["roomId"]
    address = roomd.url.removeprefix("ws://").removesuffix("/v1")
    ip, port = address.rsplit(":", 1)
    raw = socket.create_connection((ip, int(port)), timeout=5)
    ws = WSConnection(ConnectionType.CLIENT)
    raw.sendall(ws.send(Request(host=ip, target="/v1")))
    accepted = False
    while not accepted:
        data = raw.recv(65536)
        assert data, "server closed during the handshake"
        ws.receive_data(data)
        accepted = any(isinstance(event, AcceptConnection) for event in ws.events())
    auth = {"type": "auth", "token": token("bob")}
    join = {"type": "joinChatroom", "roomId": room_id}
    for message in (auth, join):
        raw.sendall(ws.send(Message(data=json.dumps(message))))
    assert host.recv_type("userJoined")["aid"] == "bob"
    # SO_LINGER 0: close() sends RST instead of FIN.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    left = host.recv_type("userLeft")
    assert (left["aid"], left["reason"]) == ("bob", "disconnected")
    host.close()


def test_api_key_printed_by_the_cli_opens_the_server_api(
    start_roomd: Start, tmp_path: Path
) -> None:
    """`roomd api-key` prints the key the running server's API accepts (and only that key)."""
    roomd = start_roomd(data_dir=tmp_path)
    key = roomd_cli("api-key", "--data-dir", str(tmp_path))
    assert roomd.api_url is not None

    def list_rooms(api_key: str) -> int:
        request = urllib.request.Request(
            f"{roomd.api_url}/v1/rooms", headers={"Authorization": f"Bearer {api_key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            error.close()
            return error.code

    assert list_rooms(key) == 200
    assert list_rooms(key + "x") == 401
