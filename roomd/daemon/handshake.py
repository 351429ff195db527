"""The HTTP upgrade of a new connection: read the request, admit or refuse it.

Bytes are read until wsproto has a whole upgrade request; a malformed one is
answered 400 (426 for a wrong WebSocket version) and a refused one with the
status and body of its `Rejection` (roomd.core.admission decides which).
"""

from __future__ import annotations

import trio
from wsproto import WSConnection
from wsproto.events import RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from roomd.core.admission import Rejection
from roomd.core.stats import Stats

RECEIVE_SIZE = 64 * 1024
# How long a refusal may take to reach a client that does not read.
REJECT_TIMEOUT = 2.0


def header_values(request: Request, name: bytes) -> list[str]:
    """Return every value of the header `name` (lowercase) in the request, in order."""
    return [
        value.decode("latin-1") for header, value in request.extra_headers if header.lower() == name
    ]


async def read_request(stream: trio.abc.Stream, ws: WSConnection, stats: Stats) -> Request | None:
    """Return the upgrade request, or None after answering a bad one (counted) or at EOF."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        try:
            ws.receive_data(bytes(data))
            for event in ws.events():
                if isinstance(event, Request):
                    return event
        except RemoteProtocolError as exc:
            stats.handshakes_rejected[Rejection.BAD_REQUEST] += 1
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            await reject(stream, ws, Rejection.BAD_REQUEST, status=status)
            return None


async def reject(
    stream: trio.abc.Stream, ws: WSConnection, rejection: Rejection, *, status: int | None = None
) -> None:
    """Answer the upgrade with `rejection` (its status, or `status`) and a plain-text body."""
    body = rejection.body
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    reply = ws.send(
        RejectConnection(status_code=status or rejection.status, headers=headers, has_body=True)
    )
    reply += ws.send(RejectData(data=body))
    with trio.move_on_after(REJECT_TIMEOUT):
        await stream.send_all(reply)
