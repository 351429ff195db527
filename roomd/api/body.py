"""JSON bodies of the server API: reading a request's, writing a response's and the error shape."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from roomd.errors import ApiError, ErrorCode

MAX_BODY = 64 * 1024


def json_response(body: object, status: int = 200) -> Response:
    """Return `body` as a JSON response (blobs, if any, already base64)."""
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(error: ApiError) -> Response:
    """Return the SERVER_API.md error shape for `error`."""
    body = {"error": {"code": str(error.code), "message": error.message}}
    response = json_response(body, error.status)
    if error.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


async def read_json_object(request: Request) -> dict[str, Any]:
    """Return the request body as a JSON object; raise `ApiError` 400 or 413."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise ApiError(ErrorCode.TOO_LARGE, f"body is over {MAX_BODY} bytes")
    body = bytearray()
    # aclosing: leaving the stream early (413) must close it now, not at garbage collection.
    async with aclosing(request.stream()) as chunks:
        async for chunk in chunks:
            body += chunk
            if len(body) > MAX_BODY:
                raise ApiError(ErrorCode.TOO_LARGE, f"body is over {MAX_BODY} bytes")
    if not body:
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(ErrorCode.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise ApiError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    return value
