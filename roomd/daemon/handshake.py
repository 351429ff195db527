"""The HTTP upgrade of a new connection: read the request, admit or refuse it.

Bytes are read until wsproto has a whole upgrade request; a malformed one is
answered 400 (426 for a wrong WebSocket version) and a refused one with the
status and body of its `Rejection` (roomd.core.admission decides which). An
accepted one is answered 101 with the chosen subprotocol; from then on only
wsproto's frame-level connection is kept.
"""

from __future__ import annotations

import logging

import attrs
import trio
import wsproto.connection
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.utilities import RemoteProtocolError

from roomd.core.admission import Admission, Network, Rejection, client_ip
from roomd.core.codec import JSON, Codec, choose_codec
from roomd.core.stats import Stats

log = logging.getLogger("roomd.handshake")

RECEIVE_SIZE = 64 * 1024
# How long a refusal may take to reach a client that does not read.
REJECT_TIMEOUT = 2.0


def header_values(request: Request, name: bytes) -> list[str]:
    """Return every value of the header `name` (lowercase) in the request, in order."""
    return [
        value.decode("latin-1") for header, value in request.extra_headers if header.lower() == name
    ]


async def read_request(
    stream: trio.abc.Stream, handshake: WSConnection, stats: Stats
) -> Request | None:
    """Return the upgrade request, or None after answering a bad one (counted) or at EOF."""
    while True:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return None
        try:
            handshake.receive_data(bytes(data))
            for event in handshake.events():
                if isinstance(event, Request):
                    return event
        except RemoteProtocolError as exc:
            stats.handshakes_rejected[Rejection.BAD_REQUEST] += 1
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            await reject(stream, handshake, Rejection.BAD_REQUEST, status=status)
            return None


async def reject(
    stream: trio.abc.Stream,
    handshake: WSConnection,
    rejection: Rejection,
    *,
    status: int | None = None,
) -> None:
    """Answer the upgrade with `rejection` (its status, or `status`) and a plain-text body."""
    body = rejection.body
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    reply = handshake.send(
        RejectConnection(status_code=status or rejection.status, headers=headers, has_body=True)
    )
    reply += handshake.send(RejectData(data=body))
    with trio.move_on_after(REJECT_TIMEOUT):
        await stream.send_all(reply)


@attrs.frozen
class Upgraded:
    """An accepted upgrade: the client's IP (admitted), codec and WebSocket framing."""

    ip: str
    codec: Codec
    ws: wsproto.connection.Connection


async def upgrade(
    stream: trio.abc.Stream,
    conn_id: int,
    peer: str,
    *,
    handshake_timeout: float,
    admission: Admission,
    trusted_proxies: tuple[Network, ...],
    stats: Stats,
) -> Upgraded | None:
    """Read the upgrade request and answer it; None when it was refused or never came.

    The request must be whole within `handshake_timeout` seconds. On a result the client's
    IP is admitted: the caller must `admission.release` it when the connection
    closes.
    """
    handshake = WSConnection(ConnectionType.SERVER)
    request = None
    with trio.move_on_after(handshake_timeout):
        request = await read_request(stream, handshake, stats)
    if request is None:
        return None
    forwarded = header_values(request, b"x-forwarded-for")
    origin = next(iter(header_values(request, b"origin")), None)
    ip = client_ip(peer, forwarded, trusted_proxies)
    rejection = admission.check(request.target, origin, ip)
    if rejection is not None:
        log.info("conn %d rejected: HTTP %d ip=%s", conn_id, rejection.status, ip)
        stats.handshakes_rejected[rejection] += 1
        await reject(stream, handshake, rejection)
        return None
    try:
        codec = choose_codec(request.subprotocols)
        accept = AcceptConnection(subprotocol=codec.subprotocol if codec else None)
        await stream.send_all(handshake.send(accept))
    except BaseException:
        admission.release(ip)
        raise
    log.info("conn %d open ip=%s codec=%s", conn_id, ip, (codec or JSON).subprotocol)
    # Keep only the frame-level connection: the HTTP handshake state (h11, the
    # request, its headers) would cost every idle connection memory.
    established = handshake.handshake.connection
    assert established is not None
    return Upgraded(ip, codec or JSON, established)
