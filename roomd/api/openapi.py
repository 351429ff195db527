"""The OpenAPI 3 document of the server API, served at `GET /openapi.json`.

Written out by hand because it is the contract: `tests/test_api_fuzz.py` runs
schemathesis against a live server to prove the app keeps to it.
"""

from __future__ import annotations

from typing import Any

from roomd import __version__
from roomd.core.message import DEFAULT_HISTORY_PAGE, MAX_HISTORY_PAGE, MAX_ID_INT


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int, texts: dict[int, str] | None = None) -> dict[str, Any]:
    text = {
        400: "The request is malformed (see `error.message`).",
        401: "Missing or wrong API key.",
        404: "No such room (or member).",
        409: "A room with this id exists (`conflict`).",
        429: "The server holds its limit of rooms (`tooManyRooms`).",
        413: "The body is over 64 KiB.",
        **(texts or {}),
    }
    return {str(status): _json(_ref("Error"), text[status]) for status in statuses}


ROOM_ID = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
AID = {"type": "string", "minLength": 1, "maxLength": 128}
BLOB = {"type": "string", "format": "byte", "description": "standard base64 with padding"}
MILLIS = {"type": "integer", "description": "Unix milliseconds"}
EPOCH = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]{8,32}$",
    "description": "the room's stream epoch (PROTOCOL.md 8.1)",
}
KEY_EPOCH = {"type": "integer", "minimum": 0, "description": "PROTOCOL.md 8.4"}
_ROOM_PARAM = {"name": "roomId", "in": "path", "required": True, "schema": ROOM_ID}
_AID_PARAM = {
    "name": "aid",
    "in": "path",
    "required": True,
    "schema": AID,
    "description": "percent-encoded (a '/' as %2F)",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Member": {
        "type": "object",
        "required": ["aid", "publicKey"],
        "properties": {"aid": AID, "publicKey": {**BLOB, "nullable": True}},
    },
    "RoomSummary": {
        "type": "object",
        "required": ["roomId", "host", "memberCount", "createdAt", "emptySince"],
        "properties": {
            "roomId": ROOM_ID,
            "host": {**AID, "nullable": True},
            "memberCount": {"type": "integer", "minimum": 0},
            "createdAt": MILLIS,
            "emptySince": {**MILLIS, "nullable": True},
        },
    },
    "Room": {
        "type": "object",
        "required": [
            "roomId",
            "host",
            "members",
            "lastSeq",
            "createdAt",
            "emptySince",
            "epoch",
            "keyEpoch",
        ],
        "properties": {
            "roomId": ROOM_ID,
            "host": {**AID, "nullable": True},
            "members": {"type": "array", "items": _ref("Member")},
            "lastSeq": {"type": "integer", "minimum": 0},
            "createdAt": MILLIS,
            "emptySince": {**MILLIS, "nullable": True},
            "epoch": EPOCH,
            "keyEpoch": KEY_EPOCH,
        },
    },
    "HistoryMessage": {
        "type": "object",
        "description": "A `newMessage` as first sent, without `type` and `roomId`.",
        "required": ["seq", "messageId", "from", "ciphertext", "ts"],
        "properties": {
            "seq": {"type": "integer", "minimum": 1},
            "messageId": {"type": "string", "minLength": 1, "maxLength": 64},
            "from": AID,
            "ciphertext": BLOB,
            "iv": BLOB,
            "clientMsgId": {"type": "string", "minLength": 1, "maxLength": 64},
            "ts": MILLIS,
            "keyEpoch": KEY_EPOCH,
        },
    },
    "History": {
        "type": "object",
        "required": ["roomId", "epoch", "messages", "more"],
        "properties": {
            "roomId": ROOM_ID,
            "epoch": EPOCH,
            "messages": {
                "type": "array",
                "items": _ref("HistoryMessage"),
                "description": "oldest first",
            },
            "more": {"type": "boolean", "description": "history holds older messages"},
        },
    },
    "RoomList": {
        "type": "object",
        "required": ["rooms", "next"],
        "properties": {
            "rooms": {"type": "array", "items": _ref("RoomSummary")},
            "next": {
                **ROOM_ID,
                "nullable": True,
                "description": "pass as `after` for the next page",
            },
        },
    },
    "CreateRoom": {
        "type": "object",
        "properties": {
            "roomId": ROOM_ID,
            "host": AID,
            "encryptedRoomKey": {**BLOB, "maxLength": 5464},
        },
    },
    "CreatedRoom": {
        "type": "object",
        "required": ["roomId", "host", "createdAt"],
        "properties": {"roomId": ROOM_ID, "host": {**AID, "nullable": True}, "createdAt": MILLIS},
    },
    "Kick": {
        "type": "object",
        "required": ["aid"],
        "properties": {
            "aid": AID,
            "ban": {
                "type": "boolean",
                "default": False,
                "description": "also ban the AID from the room, even if it is absent",
            },
        },
    },
    "TokenRequest": {
        "type": "object",
        "properties": {
            "aid": AID,
            "ttl": {"type": "integer", "minimum": 1, "maximum": 2592000, "default": 86400},
        },
    },
    "Token": {
        "type": "object",
        "required": ["aid", "token", "expiresAt"],
        "properties": {
            "aid": AID,
            "token": {"type": "string"},
            "expiresAt": {"type": "integer", "description": "Unix seconds"},
        },
    },
}


def _body(name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(name)}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "roomd server API",
        "version": __version__,
        "description": (
            "Create, inspect and delete rooms, page their history, remove and ban members, "
            "mint AID tokens."
        ),
    },
    "security": [{"apiKey": []}],
    "paths": {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "security": [],
                "responses": {
                    "200": _json({"type": "object"}, "Serving."),
                    "503": _json({"type": "object"}, "Draining."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "This document."), **_errors(401)},
            }
        },
        "/v1/rooms": {
            "post": {
                "operationId": "createRoom",
                "requestBody": _body("CreateRoom", required=False),
                "responses": {
                    "201": _json(_ref("CreatedRoom"), "Created."),
                    **_errors(400, 401, 409, 413, 429),
                },
            },
            "get": {
                "operationId": "listRooms",
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(_ref("RoomList"), "A page of rooms."),
                    **_errors(400, 401),
                },
            },
        },
        "/v1/rooms/{roomId}": {
            "parameters": [_ROOM_PARAM],
            "get": {
                "operationId": "getRoom",
                "responses": {"200": _json(_ref("Room"), "The room."), **_errors(401, 404)},
            },
            "delete": {
                "operationId": "deleteRoom",
                "responses": {
                    "204": {"description": "Deleted; members got roomDeleted."},
                    **_errors(401, 404),
                },
            },
        },
        "/v1/rooms/{roomId}/messages": {
            "parameters": [_ROOM_PARAM],
            "get": {
                "operationId": "getHistory",
                "parameters": [
                    {
                        "name": "before",
                        "in": "query",
                        "description": "only messages with a smaller seq (default: all)",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID_INT},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_HISTORY_PAGE,
                            "default": DEFAULT_HISTORY_PAGE,
                        },
                    },
                ],
                "responses": {
                    "200": _json(_ref("History"), "The newest `limit` messages before `before`."),
                    **_errors(400, 401, 404, texts={404: "No such room."}),
                },
            },
        },
        "/v1/rooms/{roomId}/kick": {
            "parameters": [_ROOM_PARAM],
            "post": {
                "operationId": "kickMember",
                "requestBody": _body("Kick"),
                "responses": {
                    "204": {"description": "Removed (and banned), as the host's kick."},
                    **_errors(
                        400,
                        401,
                        404,
                        413,
                        texts={404: "No such room, or the AID is absent and `ban` is not true."},
                    ),
                },
            },
        },
        "/v1/rooms/{roomId}/bans/{aid}": {
            "parameters": [_ROOM_PARAM, _AID_PARAM],
            "delete": {
                "operationId": "unbanMember",
                "responses": {
                    "204": {"description": "Unbanned: the AID may join again."},
                    **_errors(
                        400, 401, 404, texts={404: "No such room, or the AID is not banned."}
                    ),
                },
            },
        },
        "/v1/tokens": {
            "post": {
                "operationId": "createToken",
                "requestBody": _body("TokenRequest", required=False),
                "responses": {
                    "201": _json(_ref("Token"), "A new token."),
                    **_errors(400, 401, 413),
                },
            }
        },
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
    },
}
