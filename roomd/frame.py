"""Server-to-client WebSocket frames, built once and written to many sockets.

A server frame is never masked (RFC 6455 section 5.1) and roomd negotiates no
extensions, so the frame of one event is the same bytes for every member: the
room encodes it once and every member's writer sends those bytes as they are.
wsproto builds frames too, but its public API takes text frames as `str`, which
would cost a decode and an encode of every JSON event; this module frames the
encoder's bytes directly. `tests/test_frame.py` checks it against wsproto's parser.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_BINARY = 0x2
_FIN = 0x80


def build_frame(payload: bytes, *, text: bool) -> bytes:
    """Return one complete, unmasked data frame (FIN set) carrying `payload`."""
    first = _FIN | (OP_TEXT if text else OP_BINARY)
    size = len(payload)
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload
