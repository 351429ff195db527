"""The REST server API of SERVER_API.md: a small Starlette app.

The app reads and steers rooms only through a `RoomService` (service.py), so it
knows nothing of trio tasks or sockets; `roomd.node` gives it the daemon's.
Every route but `/healthz` needs `Authorization: Bearer <api key>`; with
`--demo`, the demo's routes (demo.py) are open too. Kicks and
unbans answer once the event bus has accepted them; the room applies them in
order with its other events a moment later.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from roomd.api.body import error_response, json_response, read_json_object
from roomd.api.demo import DemoSettings, demo_routes
from roomd.api.metrics import CONTENT_TYPE, metrics_renderer
from roomd.api.openapi import OPENAPI
from roomd.api.service import RoomService
from roomd.core.event import Event
from roomd.core.message import (
    DEFAULT_HISTORY_PAGE,
    MAX_HISTORY_PAGE,
    MAX_ID_INT,
    MAX_ROOM_KEY,
    decode_blob,
    validate_aid,
    validate_room_id,
)
from roomd.core.room import Room
from roomd.core.stats import Stats
from roomd.core.token import DEFAULT_TTL, mint_token
from roomd.errors import ApiError, ErrorCode, ProtocolError

MAX_TOKEN_TTL = 30 * 24 * 3600
DEFAULT_PAGE = 100
MAX_PAGE = 1000


class AidConvertor(Convertor[str]):
    """An AID as a path segment: any characters, '/' (sent as %2F) and newlines included.

    Starlette's `path` convertor (`.*`) stops at a newline, and its `$` then
    matches before a trailing one, so `bob%0A` would reach the route as `bob`:
    this one takes everything, and the route validates the AID (400).
    """

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("aid", AidConvertor())


def _b64(blob: bytes | None) -> str | None:
    return None if blob is None else base64.b64encode(blob).decode("ascii")


def _field(validate: Callable[[Any], Any], value: object) -> Any:
    # A field over its limit keeps PROTOCOL.md's code (tooLarge) but is a 400:
    # 413 means the body itself is over 64 KiB.
    try:
        return validate(value)
    except ProtocolError as exc:
        raise ApiError(exc.code, exc.message, 400) from None


def _room_key(value: object) -> bytes | None:
    if value is None:
        return None
    blob: bytes = _field(
        lambda v: decode_blob("encryptedRoomKey", v, MAX_ROOM_KEY, text=True), value
    )
    return blob


def _int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ApiError(ErrorCode.BAD_REQUEST, f"'{name}' must be an integer in {low}..{high}")
    return value


def _query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    # ASCII digits only (str.isdigit() also takes '²', which int() refuses), and few
    # of them (int() refuses over 4300 digits).
    digits = text.lstrip("0") or "0"
    valid = digits.isascii() and digits.isdigit() and len(digits) <= len(str(high))
    return _int(name, int(digits) if valid else None, low, high)


def room_summary(room: Room) -> dict[str, Any]:
    """Return the list entry of a room."""
    return {
        "roomId": room.room_id,
        "host": room.host,
        "memberCount": len(room.members),
        "createdAt": room.created_at,
        "emptySince": room.empty_since,
    }


def room_detail(room: Room) -> dict[str, Any]:
    """Return the full view of a room."""
    return {
        "roomId": room.room_id,
        "host": room.host,
        "members": [{"aid": m.aid, "publicKey": _b64(m.public_key)} for m in room.members.values()],
        "lastSeq": room.seq,
        "createdAt": room.created_at,
        "emptySince": room.empty_since,
        "epoch": room.epoch,
        "keyEpoch": room.key_epoch,
    }


def history_body(page: Event) -> dict[str, Any]:
    """Return a `history` event (PROTOCOL.md section 8.3) as the API's answer.

    The same page a member's `getHistory` gets, without `type`, blobs base64.
    """
    messages = []
    for entry in page["messages"]:
        message = dict(entry)
        message["ciphertext"] = _b64(entry["ciphertext"])
        if "iv" in entry:
            message["iv"] = _b64(entry["iv"])
        messages.append(message)
    return {
        "roomId": page["roomId"],
        "epoch": page["epoch"],
        "messages": messages,
        "more": page["more"],
    }


Handler = Callable[[Request], Awaitable[Response]]


def build_app(
    rooms: RoomService,
    stats: Stats,
    *,
    api_key: str,
    token_secret: str,
    wall_ms: Callable[[], int],
    demo: DemoSettings | None = None,
) -> Starlette:
    """Return the ASGI app of the server API on `rooms`, guarded by `api_key`.

    Tokens it mints are signed with `token_secret` and dated by `wall_ms`. With
    `demo`, it also serves the browser demo's page and anonymous tokens, unguarded.
    """
    render_metrics = metrics_renderer(stats, rooms.live_counts)

    def guarded(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            given = request.headers.get("authorization", "")
            scheme, _, key = given.partition(" ")
            if (
                not api_key
                or scheme.lower() != "bearer"
                or not hmac.compare_digest(key.strip().encode(), api_key.encode())
            ):
                return error_response(ApiError(ErrorCode.UNAUTHENTICATED, "missing or bad API key"))
            try:
                return await handler(request)
            except ApiError as exc:
                return error_response(exc)

        return endpoint

    async def room_or_404(room_id: str) -> Room:
        room = await rooms.room(room_id)
        if room is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no room '{room_id}'")
        return room

    async def healthz(request: Request) -> Response:
        if rooms.draining:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ok"})

    async def metrics(request: Request) -> Response:
        return Response(render_metrics(), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return json_response(OPENAPI)

    async def create_room(request: Request) -> Response:
        body = await read_json_object(request)
        room_id = body.get("roomId")
        if room_id is not None:
            room_id = _field(validate_room_id, room_id)
        host = body.get("host")
        if host is not None:
            host = _field(validate_aid, host)
        key = _room_key(body.get("encryptedRoomKey"))
        try:
            room = await rooms.create_room(room_id=room_id, host=host, encrypted_room_key=key)
        except ProtocolError as exc:  # tooManyRooms: the server is at --max-rooms
            raise ApiError(exc.code, exc.message) from None
        if room is None:
            raise ApiError(ErrorCode.CONFLICT, f"room '{room_id}' already exists")
        body = {"roomId": room.room_id, "host": room.host, "createdAt": room.created_at}
        return json_response(body, 201)

    async def list_rooms(request: Request) -> Response:
        limit = _query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
        after = request.query_params.get("after", "")
        ids = [room_id for room_id in await rooms.room_ids() if room_id > after]
        page = []
        for room_id in ids[:limit]:
            room = await rooms.room(room_id)
            if room is not None:  # deleted since the ids were listed
                page.append(room)
        next_after = ids[limit - 1] if len(ids) > limit else None
        return json_response({"rooms": [room_summary(room) for room in page], "next": next_after})

    async def get_room(request: Request) -> Response:
        return json_response(room_detail(await room_or_404(request.path_params["room_id"])))

    async def room_messages(request: Request) -> Response:
        room_id = request.path_params["room_id"]
        before: int | None = None  # after the last message
        if "before" in request.query_params:  # so the default 0 is never taken
            before = _query_int(request, "before", 0, 1, MAX_ID_INT)
        limit = _query_int(request, "limit", DEFAULT_HISTORY_PAGE, 1, MAX_HISTORY_PAGE)
        page = await rooms.history(room_id, before, limit)
        if page is None:
            raise ApiError(ErrorCode.NOT_FOUND, f"no room '{room_id}'")
        return json_response(history_body(page))

    async def delete_room(request: Request) -> Response:
        room_id = request.path_params["room_id"]
        await room_or_404(room_id)
        await rooms.delete_room(room_id)
        return Response(status_code=204)

    async def kick(request: Request) -> Response:
        room = await room_or_404(request.path_params["room_id"])
        body = await read_json_object(request)
        if "aid" not in body:
            raise ApiError(ErrorCode.BAD_REQUEST, "field 'aid' is missing")
        aid = _field(validate_aid, body["aid"])
        ban = body.get("ban", False)
        if not isinstance(ban, bool):
            raise ApiError(ErrorCode.BAD_REQUEST, "field 'ban' must be a boolean")
        # A ban binds an absent AID too: it must not join later.
        if not ban and aid not in room.members:
            raise ApiError(ErrorCode.NOT_FOUND, f"'{aid}' is not in room '{room.room_id}'")
        await rooms.kick(room.room_id, aid, ban=ban)
        return Response(status_code=204)

    async def unban(request: Request) -> Response:
        room = await room_or_404(request.path_params["room_id"])
        aid = _field(validate_aid, request.path_params["aid"])
        if aid not in room.bans:
            raise ApiError(ErrorCode.NOT_FOUND, f"'{aid}' is not banned from room '{room.room_id}'")
        await rooms.unban(room.room_id, aid)
        return Response(status_code=204)

    def issue_token(aid: str, ttl: int) -> dict[str, Any]:
        token, expires_at = mint_token(token_secret, aid, now=wall_ms() / 1000, ttl=ttl)
        return {"aid": aid, "token": token, "expiresAt": expires_at}

    async def create_token(request: Request) -> Response:
        body = await read_json_object(request)
        aid = body.get("aid")
        aid = "anon-" + secrets.token_urlsafe(12) if aid is None else _field(validate_aid, aid)
        ttl = _int("ttl", body.get("ttl", DEFAULT_TTL), 1, MAX_TOKEN_TTL)
        return json_response(issue_token(aid, ttl), 201)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return error_response(ApiError(ErrorCode.BAD_REQUEST, "method not allowed", 405))
        if status == 404:
            return error_response(ApiError(ErrorCode.NOT_FOUND, "no such route"))
        return error_response(ApiError(ErrorCode.INTERNAL, "internal error"))

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", guarded(metrics), methods=["GET"]),
        Route("/openapi.json", guarded(openapi), methods=["GET"]),
        Route("/v1/rooms", guarded(create_room), methods=["POST"]),
        Route("/v1/rooms", guarded(list_rooms), methods=["GET"]),
        Route("/v1/rooms/{room_id}", guarded(get_room), methods=["GET"]),
        Route("/v1/rooms/{room_id}", guarded(delete_room), methods=["DELETE"]),
        Route("/v1/rooms/{room_id}/messages", guarded(room_messages), methods=["GET"]),
        Route("/v1/rooms/{room_id}/kick", guarded(kick), methods=["POST"]),
        Route("/v1/rooms/{room_id}/bans/{aid:aid}", guarded(unban), methods=["DELETE"]),
        Route("/v1/tokens", guarded(create_token), methods=["POST"]),
    ]
    if demo is not None:
        routes += demo_routes(demo, issue_token)
    return Starlette(routes=routes, exception_handlers={HTTPException: not_found})
