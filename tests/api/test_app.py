"""The REST server API of SERVER_API.md against an in-process server on the real clock.

Requests go over real loopback sockets to hypercorn (raw h11 on a trio stream, so a
test controls framing: chunked bodies, a declared length never sent). WebSocket
members are the harness's in-process `Client`s, so the tests can watch an API
call reach them through the event bus.

The client reads every response to the server's EOF before it closes: hypercorn
0.18's trio backend logs `BusyResourceError` ("Error in ASGI Framework") when a
client hangs up right after a response sent before the request body was read
(our early 413), because its `_close` sends EOF without taking the send lock.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import urlencode, urlsplit

import attrs
import h11
import orjson
import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from starlette.routing import Route

from roomd.api.app import build_app
from roomd.api.openapi import OPENAPI
from roomd.api.service import RoomService
from roomd.core.stats import LiveCounts, Stats

from ..harness import API_KEY, Client, Harness, running_api_server

TIMEOUT = 10
MAX_BODY = 64 * 1024
ERROR_CODES = {
    "badRequest",
    "unauthenticated",
    "forbidden",
    "notFound",
    "notMember",
    "roomFull",
    "tooManyRooms",
    "tooLarge",
    "rateLimited",
    "internal",
    "conflict",
}
GUARDED = [
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/rooms"),
    ("GET", "/v1/rooms"),
    ("GET", "/v1/rooms/lobby"),
    ("DELETE", "/v1/rooms/lobby"),
    ("GET", "/v1/rooms/lobby/messages"),
    ("POST", "/v1/rooms/lobby/kick"),
    ("DELETE", "/v1/rooms/lobby/bans/alice"),
    ("POST", "/v1/tokens"),
]
# A room whose host joins it first (a hostless room's first joiner gets hostUpdated too).
LOBBY = {"roomId": "lobby", "host": "alice"}
# Routes that read a JSON body (the kick targets the room `lobby`).
BODY_ROUTES = ["/v1/rooms", "/v1/rooms/lobby/kick", "/v1/tokens"]
_NO_BODY = object()


@attrs.frozen
class Reply:
    """One HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON, checking the content type says so."""
        assert self.headers["content-type"] == "application/json", self.headers
        return orjson.loads(self.body)

    @property
    def error_code(self) -> str:
        """Return `error.code` of an error body, checking the SERVER_API.md error shape."""
        body = self.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        code = body["error"]["code"]
        assert code in ERROR_CODES, code
        return str(code)


async def http(
    h: Harness,
    method: str,
    target: str,
    json: object = _NO_BODY,
    *,
    raw: bytes | None = None,
    chunks: Sequence[bytes] | None = None,
    finish: bool = True,
    key: str | None = API_KEY,
    authorization: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """Send one request to the server API on a new connection and return the response.

    The body is `json` encoded, or `raw` bytes, or `chunks` sent chunked; with
    `finish=False` the request body is left unfinished (the server must answer
    from what it has). `authorization` replaces the `Bearer <key>` header.
    """
    assert h.api_url is not None
    url = urlsplit(h.api_url)
    assert url.hostname is not None and url.port is not None
    request_headers = [("Host", url.netloc), ("Connection", "close"), *headers]
    if authorization is None and key is not None:
        authorization = f"Bearer {key}"
    if authorization is not None:
        request_headers.append(("Authorization", authorization))
    if json is not _NO_BODY:
        raw = orjson.dumps(json)
        request_headers.append(("Content-Type", "application/json"))
    if chunks is not None:
        request_headers.append(("Transfer-Encoding", "chunked"))
    elif raw is not None:
        request_headers.append(("Content-Length", str(len(raw))))
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method=method, target=target, headers=request_headers)) or b""
    for chunk in [raw] if raw else chunks or []:
        out += conn.send(h11.Data(data=chunk)) or b""
    if finish:
        out += conn.send(h11.EndOfMessage()) or b""
    stream = await trio.open_tcp_stream(url.hostname, url.port)
    async with stream:
        await stream.send_all(out)
        status, response_headers, body = 0, {}, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        # Hang up only once the server has (it was asked to): closing first races
        # hypercorn's own close of the connection (see the module docstring).
        while await stream.receive_some(65536):
            pass
    return Reply(status, response_headers, bytes(body))


def b64(data: bytes) -> str:
    """Return `data` as padded standard base64."""
    return base64.b64encode(data).decode("ascii")


def metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of a Prometheus text page as {(name, labels): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def scrape(h: Harness) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return the samples of `GET /metrics`."""
    reply = await http(h, "GET", "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain"), reply.headers
    return metrics(reply.body.decode())


async def until_gone(client: Client) -> None:
    """Read until the server hung up, which it does after forgetting the session."""
    while await client.stream.receive_some(65536):
        pass


async def join(h: Harness, aid: str, room_id: str, public_key: bytes | None = None) -> Client:
    """Log `aid` in on a new connection and join `room_id`; return the client."""
    client = await h.login(aid)
    request: dict[str, Any] = {"type": "joinChatroom", "roomId": room_id}
    if public_key is not None:
        request["publicKey"] = b64(public_key)
    reply = await client.request(request)
    assert reply["type"] == "joinSuccess", reply
    return client


# -- serving, auth and the document -------------------------------------------------


async def test_healthz_answers_ok_without_a_key() -> None:
    """GET /healthz needs no API key and answers 200 {"status": "ok"} while serving."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            for key in (None, "wrong", API_KEY):
                reply = await http(h, "GET", "/healthz", key=key)
                assert reply.status == 200
                assert reply.json() == {"status": "ok"}


@pytest.mark.parametrize(("method", "path"), GUARDED)
async def test_guarded_route_refuses_missing_wrong_or_non_bearer_key(
    method: str, path: str
) -> None:
    """Every route but /healthz answers 401 without `Bearer <key>`, and does nothing."""
    bad = [
        None,
        "",
        "Bearer",
        "Bearer wrong-key",
        f"Bearer {API_KEY}x",
        f"Bearer {API_KEY[:-1]}",
        f"Basic {API_KEY}",
        f"Token {API_KEY}",
        API_KEY,
    ]
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            assert (await http(h, "POST", "/v1/rooms", LOBBY)).status == 201
            alice = await join(h, "alice", "lobby")
            for authorization in bad:
                reply = await http(
                    h,
                    method,
                    path,
                    {"aid": "alice"},
                    key=None,
                    authorization=authorization,
                )
                assert reply.status == 401, (authorization, reply)
                assert reply.error_code == "unauthenticated"
                assert reply.headers["www-authenticate"] == "Bearer"
            # Nothing happened: the room and its member are still there, no room was added.
            assert h.registry.room_ids() == ["lobby"]
            assert list(h.registry.live["lobby"].room.members) == ["alice"]
            assert alice.pending() == []


async def test_openapi_document_is_served_and_lists_every_route_and_status() -> None:
    """GET /openapi.json returns the OpenAPI 3 document with every route and status of the API."""
    documented = {
        ("post", "/v1/rooms"): {"201", "400", "401", "409", "413", "429"},
        ("get", "/v1/rooms"): {"200", "400", "401"},
        ("get", "/v1/rooms/{roomId}"): {"200", "401", "404"},
        ("delete", "/v1/rooms/{roomId}"): {"204", "401", "404"},
        ("get", "/v1/rooms/{roomId}/messages"): {"200", "400", "401", "404"},
        ("post", "/v1/rooms/{roomId}/kick"): {"204", "400", "401", "404", "413"},
        ("delete", "/v1/rooms/{roomId}/bans/{aid}"): {"204", "400", "401", "404"},
        ("post", "/v1/tokens"): {"201", "400", "401", "413"},
        ("get", "/healthz"): {"200", "503"},
        ("get", "/metrics"): {"200", "401"},
        ("get", "/openapi.json"): {"200", "401"},
    }
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "GET", "/openapi.json")
            assert reply.status == 200
            document = reply.json()
    assert document == orjson.loads(orjson.dumps(OPENAPI))
    assert document["openapi"].startswith("3.")
    operations = {
        (method, path): set(operation["responses"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert operations == documented
    assert document["paths"]["/healthz"]["get"]["security"] == []


class _NoRooms:
    """Just enough of a `RoomService` to build the app and read its routes."""

    def live_counts(self) -> LiveCounts:
        return LiveCounts(0, 0, 0)


def test_openapi_document_has_exactly_the_routes_the_app_serves() -> None:
    """Every route of the app is an operation of the document, with its path parameters."""
    app = build_app(
        cast(RoomService, _NoRooms()), Stats(), api_key=API_KEY, token_secret="s", wall_ms=int
    )
    names = {"room_id": "roomId", "aid": "aid"}
    served = set()
    for route in app.routes:
        assert isinstance(route, Route)
        path = re.sub(r"\{(\w+)(:\w+)?\}", lambda match: f"{{{names[match[1]]}}}", route.path)
        served |= {(method.lower(), path) for method in route.methods or () if method != "HEAD"}
    paths = OPENAPI["paths"]
    documented = {
        (method, path) for path, item in paths.items() for method in item if method != "parameters"
    }
    assert served == documented
    for path, item in paths.items():
        declared = {
            parameter["name"]
            for parameter in item.get("parameters", [])
            if parameter["in"] == "path" and parameter["required"]
        }
        assert declared == set(re.findall(r"\{(\w+)\}", path)), path


async def test_unknown_route_is_404_in_the_error_shape() -> None:
    """A path the API does not have answers 404 notFound in the JSON error shape."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            for path in ("/v2/rooms", "/v1/rooms/a/b", "/"):
                reply = await http(h, "GET", path)
                assert reply.status == 404
                assert reply.error_code == "notFound"


# -- POST /v1/rooms ------------------------------------------------------------------


async def test_created_room_is_listed_and_joinable_with_its_key_and_host() -> None:
    """POST /v1/rooms answers 201 {roomId, host, createdAt}; members then join with its key."""
    key = b"\x00sealed room key\xff" * 10
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            before = time.time_ns() // 1_000_000
            body = {"roomId": "team-42_A", "host": "alice", "encryptedRoomKey": b64(key)}
            reply = await http(h, "POST", "/v1/rooms", body)
            after = time.time_ns() // 1_000_000
            assert reply.status == 201
            created = reply.json()
            assert set(created) == {"roomId", "host", "createdAt"}
            assert (created["roomId"], created["host"]) == ("team-42_A", "alice")
            assert before <= created["createdAt"] <= after
            room = (await http(h, "GET", "/v1/rooms/team-42_A")).json()
            epoch = room.pop("epoch")
            assert re.fullmatch(r"[A-Za-z0-9_-]{8,32}", epoch), epoch
            assert room == {
                "roomId": "team-42_A",
                "host": "alice",
                "members": [],
                "lastSeq": 0,
                "createdAt": created["createdAt"],
                "emptySince": created["createdAt"],
                "keyEpoch": 0,
            }
            alice = await h.login("alice")
            joined = await alice.request({"type": "joinChatroom", "roomId": "team-42_A"})
            assert joined["type"] == "joinSuccess"
            assert joined["host"] == "alice"
            assert joined["encryptedRoomKey"] == b64(key)
            assert joined["lastSeq"] == 0
            assert (joined["epoch"], joined["keyEpoch"]) == (epoch, 0)


async def test_room_created_without_a_body_gets_a_fresh_unguessable_id() -> None:
    """POST /v1/rooms with no body or `{}` makes a room with a new URL-safe id and no host."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            ids = []
            for body in (_NO_BODY, {}, {"roomId": None, "host": None}):
                reply = await http(h, "POST", "/v1/rooms", body)
                assert reply.status == 201
                created = reply.json()
                assert created["host"] is None
                assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", created["roomId"]), created
                ids.append(created["roomId"])
            assert len(set(ids)) == 3
            assert sorted(ids) == h.registry.room_ids()
            # Nobody joined them: they hold no task, only their expiry.
            assert sorted(h.registry.dormant) == sorted(ids)
            assert not h.registry.nursery.child_tasks


async def test_creating_an_existing_room_id_is_409_conflict_and_changes_nothing() -> None:
    """POST /v1/rooms with the id of a room (API- or WebSocket-made) answers 409 conflict."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            assert (await http(h, "POST", "/v1/rooms", {"roomId": "dup"})).status == 201
            reply = await http(h, "POST", "/v1/rooms", {"roomId": "dup", "host": "mallory"})
            assert reply.status == 409
            assert reply.error_code == "conflict"
            ws_room, (alice,) = await h.open_room("alice")
            reply = await http(h, "POST", "/v1/rooms", {"roomId": ws_room, "host": "mallory"})
            assert reply.status == 409
            assert reply.error_code == "conflict"
            assert (await http(h, "GET", "/v1/rooms/dup")).json()["host"] is None
            assert (await http(h, "GET", f"/v1/rooms/{ws_room}")).json()["host"] == "alice"
            assert alice.pending() == []


async def test_creating_past_max_rooms_is_429_but_not_past_the_per_aid_quota() -> None:
    """The API is bound by --max-rooms (429 tooManyRooms) but may give a host more rooms."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(max_rooms=2, max_rooms_per_aid=1) as h:
            for room_id in ("one", "two"):
                body = {"roomId": room_id, "host": "alice"}
                assert (await http(h, "POST", "/v1/rooms", body)).status == 201
            reply = await http(h, "POST", "/v1/rooms", {"roomId": "three"})
            assert (reply.status, reply.error_code) == (429, "tooManyRooms")
            assert (await http(h, "GET", "/v1/rooms/three")).status == 404
            assert (await http(h, "DELETE", "/v1/rooms/one")).status == 204
            assert (await http(h, "POST", "/v1/rooms", {"roomId": "three"})).status == 201


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "not JSON"),
        (b'{"roomId": "a"', "truncated JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[]", "an array"),
        (b'"room"', "a string"),
        (b"null", "null"),
        (b"42", "a number"),
        (b'{"roomId": 5}', "roomId not a string"),
        (b'{"roomId": ""}', "empty roomId"),
        (b'{"roomId": "has space"}', "roomId with a space"),
        (b'{"roomId": "a/b"}', "roomId with a slash"),
        (b'{"roomId": "caf\xc3\xa9"}', "roomId not URL-safe"),
        (b'{"roomId": "' + b"r" * 129 + b'"}', "roomId over 128 characters"),
        (b'{"roomId": ["a"]}', "roomId an array"),
        (b'{"host": 7}', "host not a string"),
        (b'{"host": ""}', "empty host"),
        (b'{"host": "bad\\u0000aid"}', "host not printable"),
        (b'{"host": "' + b"h" * 129 + b'"}', "host over 128 characters"),
        (b'{"encryptedRoomKey": 5}', "key not a string"),
        (b'{"encryptedRoomKey": "not base64!"}', "key not base64"),
        (b'{"encryptedRoomKey": "QUI"}', "key without padding"),
        (b'{"encryptedRoomKey": "QU-_"}', "key in URL-safe base64"),
        (b'{"encryptedRoomKey": "aGlh="}', "key with excess padding"),
        (b'{"encryptedRoomKey": "' + b64(bytes(4097)).encode() + b'"}', "key over 4 KiB"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_create_room_with_a_bad_body_is_400_and_creates_nothing(raw: bytes, why: str) -> None:
    """POST /v1/rooms with bad JSON, a non-object or a field of the wrong type or form is 400."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "POST", "/v1/rooms", raw=raw)
            assert reply.status == 400, (why, reply)
            assert reply.error_code in {"badRequest", "tooLarge"}
            assert h.registry.room_ids() == []


async def test_largest_room_key_and_body_of_exactly_64_kib_are_accepted() -> None:
    """A 4 KiB encryptedRoomKey in a body of exactly 64 KiB is accepted: limits are inclusive."""
    key = bytes(range(256)) * 16
    body = orjson.dumps({"roomId": "edge", "encryptedRoomKey": b64(key)})
    body = body[:-1] + b" " * (MAX_BODY - len(body)) + b"}"
    assert len(body) == MAX_BODY
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "POST", "/v1/rooms", raw=body)
            assert reply.status == 201
            stored = await h.registry.read("edge")
            assert stored is not None
            assert stored.encrypted_room_key == key


@pytest.mark.parametrize("path", BODY_ROUTES)
async def test_body_over_64_kib_is_413(path: str) -> None:
    """A body over 64 KiB, declared by Content-Length or sent chunked, is refused with 413."""
    padded = (b'{"aid": "alice"' + b" " * MAX_BODY)[: MAX_BODY + 1]
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            assert (
                await http(h, "POST", "/v1/rooms", {"roomId": "lobby", "host": "alice"})
            ).status == 201
            await join(h, "alice", "lobby")
            rooms = h.registry.room_ids()
            declared = [("Content-Length", str(MAX_BODY + 1))]
            reply = await http(h, "POST", path, headers=declared, finish=False)
            assert reply.status == 413
            assert reply.error_code == "tooLarge"
            chunks = [padded[i : i + 16384] for i in range(0, MAX_BODY + 1, 16384)]
            assert sum(map(len, chunks)) == MAX_BODY + 1
            reply = await http(h, "POST", path, chunks=chunks, finish=False)
            assert reply.status == 413
            assert reply.error_code == "tooLarge"
            assert h.registry.room_ids() == rooms
            assert list(h.registry.live["lobby"].room.members) == ["alice"]


# -- GET /v1/rooms -------------------------------------------------------------------


async def test_room_list_pages_through_every_room_once_in_room_id_order() -> None:
    """GET /v1/rooms pages by roomId: following `next` yields every room exactly once, sorted."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            made = {"m-05", "A-01", "z_9", "0000", "b"}
            for room_id in made:
                assert (await http(h, "POST", "/v1/rooms", {"roomId": room_id})).status == 201
            for _ in range(3):
                made.add((await http(h, "POST", "/v1/rooms")).json()["roomId"])
            ws_room, _clients = await h.open_room("alice", "bob")
            made.add(ws_room)
            assert len(made) == 9
            for limit in (1, 2, 4, 8, 9, 10):
                seen: list[str] = []
                pages = 0
                after: str | None = ""
                while after is not None:
                    query = urlencode({"limit": limit, **({"after": after} if after else {})})
                    reply = await http(h, "GET", f"/v1/rooms?{query}")
                    assert reply.status == 200
                    page = reply.json()
                    assert set(page) == {"rooms", "next"}
                    assert len(page["rooms"]) <= limit
                    ids = [room["roomId"] for room in page["rooms"]]
                    if page["next"] is not None:
                        assert page["next"] == ids[-1]
                    seen += ids
                    after = page["next"]
                    pages += 1
                assert seen == sorted(made), limit
                assert pages == -(-len(made) // limit), limit
            everything = (await http(h, "GET", "/v1/rooms")).json()
            assert everything["next"] is None
            by_id = {room["roomId"]: room for room in everything["rooms"]}
            assert list(by_id) == sorted(made)
            assert by_id[ws_room]["memberCount"] == 2
            assert by_id[ws_room]["emptySince"] is None
            assert by_id[ws_room]["host"] == "alice"
            assert by_id["b"]["memberCount"] == 0
            assert by_id["b"]["emptySince"] == by_id["b"]["createdAt"]
            tail = (await http(h, "GET", "/v1/rooms?after=zzz")).json()
            assert tail == {"rooms": [], "next": None}


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "abc", "1.5", "", "\u00b3", "1" * 5000])
async def test_room_list_with_a_bad_limit_is_400(limit: str) -> None:
    """GET /v1/rooms with a limit that is not an integer in 1..1000 answers 400."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "GET", "/v1/rooms?" + urlencode({"limit": limit}))
            assert reply.status == 400
            assert reply.error_code == "badRequest"
            for good in ("1", "1000", "007"):
                assert (await http(h, "GET", f"/v1/rooms?limit={good}")).status == 200


# -- GET /v1/rooms/{roomId} ------------------------------------------------------------


async def test_room_shows_live_members_with_public_keys_and_last_seq() -> None:
    """GET /v1/rooms/{id} lists present AIDs in join order with their publicKey, and lastSeq."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            alice = await h.login("alice")
            created = await alice.request({"type": "createChatroom", "publicKey": b64(b"pk-a")})
            room_id = created["roomId"]
            bob = await join(h, "bob", room_id, public_key=b"\x00pk-b\xff")
            carol = await join(h, "carol", room_id)
            bob_again = await join(h, "bob", room_id, public_key=b"other key")
            for n in range(1, 4):
                await alice.send({"type": "message", "roomId": room_id, "ciphertext": b64(b"x")})
                for client in (alice, bob, carol, bob_again):
                    assert (await client.recv_type("newMessage"))["seq"] == n
            reply = await http(h, "GET", f"/v1/rooms/{room_id}")
            assert reply.status == 200
            room = reply.json()
            assert room["members"] == [
                {"aid": "alice", "publicKey": b64(b"pk-a")},
                {"aid": "bob", "publicKey": b64(b"\x00pk-b\xff")},
                {"aid": "carol", "publicKey": None},
            ]
            assert (room["roomId"], room["host"], room["lastSeq"]) == (room_id, "alice", 3)
            assert room["emptySince"] is None
            assert isinstance(room["createdAt"], int)


async def test_unknown_room_is_404_for_every_room_route() -> None:
    """GET, DELETE, history, kick (with a ban too) and unban of a missing room answer 404."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            for method, path, body in [
                ("GET", "/v1/rooms/nope", _NO_BODY),
                ("DELETE", "/v1/rooms/nope", _NO_BODY),
                ("GET", "/v1/rooms/nope/messages", _NO_BODY),
                ("GET", "/v1/rooms/nope/messages?before=5&limit=1", _NO_BODY),
                ("POST", "/v1/rooms/nope/kick", {"aid": "alice"}),
                ("POST", "/v1/rooms/nope/kick", {"aid": "alice", "ban": True}),
                ("DELETE", "/v1/rooms/nope/bans/alice", _NO_BODY),
            ]:
                reply = await http(h, method, path, body)
                assert reply.status == 404, (method, path)
                assert reply.error_code == "notFound"
            # A ban of a missing room does not make one.
            assert h.registry.room_ids() == []
            assert (await http(h, "GET", "/v1/rooms")).json()["rooms"] == []


# -- DELETE /v1/rooms/{roomId} ---------------------------------------------------------


async def test_delete_through_the_api_reaches_live_websocket_members() -> None:
    """DELETE answers 204; every member connection gets roomDeleted deleted; the room is gone."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob) = await h.open_room("alice", "bob")
            bob_again = await join(h, "bob", room_id)
            other_room, (carol,) = await h.open_room("carol")
            reply = await http(h, "DELETE", f"/v1/rooms/{room_id}")
            assert (reply.status, reply.body) == (204, b"")
            for client in (alice, bob, bob_again):
                assert await client.recv() == {
                    "type": "roomDeleted",
                    "roomId": room_id,
                    "reason": "deleted",
                }
            assert (await http(h, "GET", f"/v1/rooms/{room_id}")).status == 404
            assert (await http(h, "DELETE", f"/v1/rooms/{room_id}")).status == 404
            listed = (await http(h, "GET", "/v1/rooms")).json()["rooms"]
            assert [room["roomId"] for room in listed] == [other_room]
            again = await bob.request({"type": "joinChatroom", "roomId": room_id})
            assert (again["type"], again["code"]) == ("error", "notFound")
            sent = await alice.request(
                {"type": "message", "roomId": room_id, "ciphertext": b64(b"x")}
            )
            assert (sent["type"], sent["code"]) == ("error", "notMember")
            # The members' connections stay open and usable; the other room is untouched.
            assert (await alice.request({"type": "createChatroom"}))["type"] == "joinSuccess"
            assert carol.pending() == []


# -- POST /v1/rooms/{roomId}/kick -------------------------------------------------------


async def test_kick_through_the_api_acts_as_the_host_kick() -> None:
    """Kick answers 204; the target's connections get leftChatroom kicked, others userLeft."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            bob_again = await join(h, "bob", room_id)
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", {"aid": "bob"})
            assert (reply.status, reply.body) == (204, b"")
            for client in (bob, bob_again):
                assert await client.recv() == {
                    "type": "leftChatroom",
                    "roomId": room_id,
                    "reason": "kicked",
                }
            for client in (alice, carol):
                assert await client.recv() == {
                    "type": "userLeft",
                    "roomId": room_id,
                    "aid": "bob",
                    "reason": "kicked",
                }
            room = (await http(h, "GET", f"/v1/rooms/{room_id}")).json()
            assert [m["aid"] for m in room["members"]] == ["alice", "carol"]
            assert room["host"] == "alice"
            sent = await bob.request({"type": "message", "roomId": room_id, "ciphertext": "eA=="})
            assert (sent["type"], sent["code"]) == ("error", "notMember")
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", {"aid": "bob"})
            assert reply.status == 404
            assert reply.error_code == "notFound"
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", {"aid": "nobody"})
            assert reply.status == 404
            assert reply.error_code == "notFound"
            assert alice.pending() == carol.pending() == []


async def test_kicking_the_host_through_the_api_moves_the_host() -> None:
    """Kicking the host's AID hands the room to the member present longest: hostUpdated."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob, carol) = await h.open_room("alice", "bob", "carol")
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", {"aid": "alice"})
            assert reply.status == 204
            assert await alice.recv() == {
                "type": "leftChatroom",
                "roomId": room_id,
                "reason": "kicked",
            }
            for client in (bob, carol):
                assert await client.recv() == {
                    "type": "userLeft",
                    "roomId": room_id,
                    "aid": "alice",
                    "reason": "kicked",
                }
                assert await client.recv() == {
                    "type": "hostUpdated",
                    "roomId": room_id,
                    "host": "bob",
                }
            assert (await http(h, "GET", f"/v1/rooms/{room_id}")).json()["host"] == "bob"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{}", b"{", b"[]", b'"bob"', b'{"aid": 5}', b'{"aid": ""}', b'{"aid": null}'],
)
async def test_kick_with_a_bad_body_is_400_and_kicks_nobody(raw: bytes) -> None:
    """Kick without a valid `aid` string in a JSON object answers 400 and changes nothing."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            room_id, (alice, bob) = await h.open_room("alice", "bob")
            reply = await http(h, "POST", f"/v1/rooms/{room_id}/kick", raw=raw)
            assert reply.status == 400
            assert reply.error_code == "badRequest"
            room = (await http(h, "GET", f"/v1/rooms/{room_id}")).json()
            assert [m["aid"] for m in room["members"]] == ["alice", "bob"]
            assert alice.pending() == bob.pending() == []


# -- POST /v1/tokens -------------------------------------------------------------------


async def test_minted_token_for_an_aid_is_accepted_by_websocket_auth() -> None:
    """POST /v1/tokens {aid, ttl} answers 201 {aid, token, expiresAt}; auth accepts the token."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            for ttl in (1, 120, 30 * 24 * 3600):
                before = int(time.time())
                reply = await http(h, "POST", "/v1/tokens", {"aid": "alice", "ttl": ttl})
                after = int(time.time())
                assert reply.status == 201
                minted = reply.json()
                assert set(minted) == {"aid", "token", "expiresAt"}
                assert minted["aid"] == "alice"
                assert before + ttl <= minted["expiresAt"] <= after + ttl
                if ttl > 1:
                    client = await h.connect()
                    ok = await client.request({"type": "auth", "token": minted["token"]})
                    assert ok == {
                        "type": "authOk",
                        "aid": "alice",
                        "expiresAt": minted["expiresAt"],
                    }


async def test_token_without_aid_is_a_new_anonymous_identity_each_time() -> None:
    """POST /v1/tokens without `aid` mints a fresh random AID, valid 24 h by default."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            aids = set()
            for body in (_NO_BODY, {}, {"aid": None}, {"ttl": 60}):
                before = int(time.time())
                reply = await http(h, "POST", "/v1/tokens", body)
                assert reply.status == 201
                minted = reply.json()
                ttl = 60 if body == {"ttl": 60} else 24 * 3600
                assert before + ttl <= minted["expiresAt"] <= int(time.time()) + ttl
                client = await h.connect()
                ok = await client.request({"type": "auth", "token": minted["token"]})
                assert (ok["type"], ok["aid"]) == ("authOk", minted["aid"])
                aids.add(minted["aid"])
            assert len(aids) == 4


@pytest.mark.parametrize(
    "body",
    [
        {"aid": 5},
        {"aid": ""},
        {"aid": "new\nline"},
        {"aid": "a" * 129},
        {"ttl": 0},
        {"ttl": -1},
        {"ttl": 30 * 24 * 3600 + 1},
        {"ttl": "60"},
        {"ttl": 1.5},
        {"ttl": True},
        {"ttl": None},
        [],
        "alice",
    ],
    ids=repr,
)
async def test_token_request_with_a_bad_field_is_400(body: object) -> None:
    """POST /v1/tokens with an invalid aid, a ttl outside 1..30 days or a non-object is 400."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "POST", "/v1/tokens", body)
            assert reply.status == 400
            assert reply.error_code in {"badRequest", "tooLarge"}


async def test_token_request_that_is_not_json_is_400() -> None:
    """POST /v1/tokens with a body that is not JSON answers 400 badRequest."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            reply = await http(h, "POST", "/v1/tokens", raw=b"aid=alice")
            assert reply.status == 400
            assert reply.error_code == "badRequest"


# -- GET /metrics --------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def value(samples: Samples, name: str, **labels: str) -> float:
    """Return one sample's value (failing if the page lacks it)."""
    return samples[name, tuple(sorted(labels.items()))]


async def test_metrics_follow_connections_rooms_members_and_traffic() -> None:
    """/metrics has the roomd_ families of SERVER_API.md and their values follow what happens."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(max_conns_per_ip=3, rate=1.0, burst=5.0) as h:
            start = await scrape(h)
            assert all(name.startswith("roomd_") for name, _ in start)
            for name in (
                "roomd_connections_open",
                "roomd_rooms",
                "roomd_members",
                "roomd_messages_in_total",
                "roomd_deliveries_out_total",
                "roomd_rate_limited_total",
                "roomd_slow_consumer_closes_total",
                "roomd_heartbeat_timeouts_total",
            ):
                assert value(start, name) == 0, name
            reasons = {"bad_request", "origin", "path", "per_ip_limit", "draining"}
            for reason in reasons:
                assert value(start, "roomd_handshakes_rejected_total", reason=reason) == 0

            room_id, (alice, bob) = await h.open_room("alice", "bob")
            joined = await scrape(h)
            assert value(joined, "roomd_connections_open") == 2
            assert value(joined, "roomd_rooms") == 1
            assert value(joined, "roomd_members") == 2
            # auth, createChatroom; auth, joinChatroom
            assert value(joined, "roomd_messages_in_total") == 4

            await alice.send({"type": "message", "roomId": room_id, "ciphertext": b64(b"hi")})
            for client in (alice, bob):
                assert (await client.recv())["type"] == "newMessage"
            sent = await scrape(h)
            assert value(sent, "roomd_messages_in_total") == 5
            delivered = value(sent, "roomd_deliveries_out_total")
            assert delivered - value(joined, "roomd_deliveries_out_total") == 2

            flooder = await h.login("flooder")
            for _ in range(20):
                await flooder.send({"type": "typing", "roomId": room_id, "isTyping": True})
            while (await flooder.recv_type("error"))["code"] != "rateLimited":
                pass
            assert (await h.connect()).reject_status == 429
            # An IP at its limit gets 429 at its first bytes, whatever it asks for.
            assert (await h.connect(path="/v2")).reject_status == 429
            flooded = await scrape(h)
            assert value(flooded, "roomd_rate_limited_total") >= 1
            assert value(flooded, "roomd_connections_open") == 3
            assert value(flooded, "roomd_handshakes_rejected_total", reason="per_ip_limit") == 2

            await flooder.close()
            await until_gone(flooder)
            assert (await h.connect(path="/v2")).reject_status == 404
            assert value(await scrape(h), "roomd_handshakes_rejected_total", reason="path") == 1
            assert (await http(h, "DELETE", f"/v1/rooms/{room_id}")).status == 204
            end = await scrape(h)
            assert value(end, "roomd_connections_open") == 2
            assert value(end, "roomd_rooms") == 0
            assert value(end, "roomd_members") == 0
            assert value(end, "roomd_connections_closed_total", code="1000") == 1


async def test_metrics_count_heartbeat_timeouts() -> None:
    """A silent peer closed with 4002 shows in roomd_heartbeat_timeouts."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(heartbeat_interval=0.05, heartbeat_timeout=0.3) as h:
            silent = await h.login("silent")
            silent.auto_pong = False
            # Stay quiet: the server hears nothing for heartbeat_timeout and closes 4002.
            assert await silent.expect_close() == 4002
            await until_gone(silent)
            samples = await scrape(h)
            assert value(samples, "roomd_heartbeat_timeouts_total") == 1
            assert value(samples, "roomd_connections_closed_total", code="4002") == 1
            assert value(samples, "roomd_slow_consumer_closes_total") == 0


async def test_metrics_count_slow_consumer_closes() -> None:
    """A member that stops reading, closed with 4003, shows in roomd_slow_consumer_closes."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server(send_queue=4) as h:
            room_id, (alice,) = await h.open_room("alice")
            slow = await h.login("slow", pair=trio.testing.lockstep_stream_pair)
            joined = await slow.request({"type": "joinChatroom", "roomId": room_id})
            assert joined["type"] == "joinSuccess"
            assert (await alice.recv())["type"] == "userJoined"
            for n in range(1, 13):
                await alice.send({"type": "message", "roomId": room_id, "ciphertext": "eA=="})
                assert (await alice.recv_type("newMessage"))["seq"] == n
            assert await slow.expect_close() == 4003
            await until_gone(slow)
            samples = await scrape(h)
            assert value(samples, "roomd_slow_consumer_closes_total") == 1
            assert value(samples, "roomd_connections_closed_total", code="4003") == 1
            assert value(samples, "roomd_heartbeat_timeouts_total") == 0


async def test_metrics_count_a_malformed_handshake_as_bad_request() -> None:
    """An HTTP request that is not a valid WebSocket upgrade counts as reason bad_request."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            stream = await h.listener.connect()
            await stream.send_all(b"GET /v1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            reply = await stream.receive_some(65536)
            assert reply.startswith(b"HTTP/1.1 4"), reply
            samples = await scrape(h)
            assert value(samples, "roomd_handshakes_rejected_total", reason="bad_request") == 1


async def test_healthz_answers_503_while_draining() -> None:
    """While shutdown waits for connections to close, GET /healthz answers 503 draining."""
    with trio.fail_after(TIMEOUT):
        async with running_api_server() as h:
            alice = await h.login("alice")
            h.shutdown()
            # alice does not read, so the drain waits for her answer to close 1001.
            await trio.testing.wait_all_tasks_blocked()
            assert h.admission.draining
            reply = await http(h, "GET", "/healthz", key=None)
            assert reply.status == 503
            assert reply.json() == {"status": "draining"}
            assert await alice.expect_close() == 1001
