"""The HTTP upgrade of a new connection: read the request, admit or refuse it.

h11 reads the request (so that the bytes a client pipelines right behind it,
before it has read the 101, are kept: they are the connection's first frames);
wsproto checks it as a WebSocket upgrade (`initiate_upgrade_connection`, its
entry point for a request parsed elsewhere) and writes the 101. A malformed
request is answered 400 (426 for a wrong WebSocket version), a refused one
with the status and body of its `Rejection` (roomd.core.admission decides
which), and the connection is closed. From the 101 on only wsproto's
frame-level connection is kept.
"""

from __future__ import annotations

import http
import logging

import attrs
import h11
import trio
import wsproto.connection
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from roomd.core.admission import Admission, Rejection, Slot, client_ip
from roomd.core.codec import JSON, Codec, choose_codec
from roomd.core.refusal import RefusalLog
from roomd.core.stats import Stats

log = logging.getLogger("roomd.handshake")

RECEIVE_SIZE = 64 * 1024
# How long a refusal may take to reach a client that does not read.
REJECT_TIMEOUT = 2.0
# The largest upgrade request roomd reads (h11 refuses a longer one: 400).
MAX_REQUEST = 16 * 1024


def header_values(request: Request, name: bytes) -> list[str]:
    """Return every value of the header `name` (lowercase) in the request, in order."""
    return [
        value.decode("latin-1") for header, value in request.extra_headers if header.lower() == name
    ]


def log_refusal(refusals: RefusalLog, rejection: Rejection, ip: str) -> None:
    """Log a refused handshake the first time its cause comes up, then once a minute."""
    count = refusals.note(rejection.label, trio.current_time())
    if count is not None:
        log.info(
            "refused %d handshake(s): %s (HTTP %d), latest from ip=%s",
            count,
            rejection.label,
            rejection.status,
            ip,
        )


def refusal(rejection: Rejection, status: int | None = None) -> bytes:
    """Return the whole HTTP response that refuses an upgrade: status line, headers, body."""
    code = status or rejection.status
    head = (
        f"HTTP/1.1 {code} {http.HTTPStatus(code).phrase}\r\n"
        "content-type: text/plain\r\n"
        f"content-length: {len(rejection.body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + rejection.body


async def reject(
    stream: trio.abc.Stream, rejection: Rejection, *, status: int | None = None
) -> None:
    """Answer the upgrade with `rejection` (its status, or `status`), bounded in time."""
    with trio.move_on_after(REJECT_TIMEOUT):
        await stream.send_all(refusal(rejection, status))


async def refuse_at_first_bytes(
    stream: trio.abc.Stream, rejection: Rejection, handshake_timeout: float
) -> None:
    """Answer `rejection` as soon as the client sends anything (or give up at the deadline).

    For a connection that holds no slot: it is not worth reading its request.
    """
    with trio.move_on_after(handshake_timeout):
        if await stream.receive_some(RECEIVE_SIZE):
            await reject(stream, rejection)


@attrs.frozen
class Upgraded:
    """An accepted upgrade: the client's IP, its codec, the framing, and pipelined bytes."""

    ip: str
    codec: Codec
    ws: wsproto.connection.Connection
    # Bytes the client sent right behind its request: its first frames.
    pipelined: bytes


async def _read_request(stream: trio.abc.Stream, parser: h11.Connection) -> h11.Request | None:
    """Return the request once h11 has it whole, or None at EOF. Raises h11's errors."""
    request = None
    while True:
        event = parser.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return None
            parser.receive_data(bytes(data))
        elif isinstance(event, h11.Request):
            request = event
        elif event is h11.PAUSED or isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return request


async def upgrade(
    stream: trio.abc.Stream,
    conn_id: int,
    peer: str,
    slot: Slot,
    *,
    handshake_timeout: float,
    admission: Admission,
    stats: Stats,
    refusals: RefusalLog,
) -> Upgraded | None:
    """Read the upgrade request and answer it; None when it was refused or never came.

    The request must be whole within `handshake_timeout` seconds, or the
    connection is given up without an answer. On a result the connection
    counts as upgraded in `slot` (released by the caller).
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
    raw = None
    with trio.move_on_after(handshake_timeout):
        try:
            raw = await _read_request(stream, parser)
        except h11.RemoteProtocolError:
            stats.handshakes_rejected[Rejection.BAD_REQUEST] += 1
            log_refusal(refusals, Rejection.BAD_REQUEST, peer)
            await reject(stream, Rejection.BAD_REQUEST)
            return None
    if raw is None:
        return None
    handshake = H11Handshake(ConnectionType.SERVER)
    try:
        if raw.method != b"GET":
            raise RemoteProtocolError("Request method must be GET", event_hint=RejectConnection())
        handshake.initiate_upgrade_connection(list(raw.headers), raw.target)
        (request,) = [event for event in handshake.events() if isinstance(event, Request)]
    except RemoteProtocolError as exc:
        stats.handshakes_rejected[Rejection.BAD_REQUEST] += 1
        log_refusal(refusals, Rejection.BAD_REQUEST, peer)
        hint = exc.event_hint
        status = hint.status_code if isinstance(hint, RejectConnection) else 400
        await reject(stream, Rejection.BAD_REQUEST, status=status)
        return None
    forwarded = header_values(request, b"x-forwarded-for")
    origin = next(iter(header_values(request, b"origin")), None)
    ip = client_ip(peer, forwarded, admission.trusted_proxies)
    rejection = admission.check(slot, request.target, origin, ip)
    if rejection is not None:
        log.debug("conn %d rejected: HTTP %d ip=%s", conn_id, rejection.status, ip)
        log_refusal(refusals, rejection, ip)
        stats.handshakes_rejected[rejection] += 1
        await reject(stream, rejection)
        return None
    codec = choose_codec(request.subprotocols)
    accept = AcceptConnection(subprotocol=codec.subprotocol if codec else None)
    await stream.send_all(handshake.send(accept))
    log.info("conn %d open ip=%s codec=%s", conn_id, ip, (codec or JSON).subprotocol)
    # Keep only the frame-level connection: the HTTP handshake state (h11, the
    # request, its headers) would cost every idle connection memory.
    established = handshake.connection
    assert established is not None
    return Upgraded(ip, codec or JSON, established, parser.trailing_data[0])
