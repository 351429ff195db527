"""The common client frames, parsed on a fast path; everything else is wsproto's.

Nearly every frame a client sends is a whole (FIN) masked data frame or a
ping or pong. wsproto's general parser cost about a fifth of the server's CPU
in the chat mix and with idle connections pinged every second (README,
Performance), so the reader hands its bytes to `ClientFrames` first. It
takes, in order, every frame that is:

- FIN, with RSV1-3 clear and the mask bit set;
- text (valid UTF-8), binary, ping or pong (a control payload of at most 125 bytes);
- with its length in the shortest of the three encodings (RFC 6455 section 5.2).

At the first frame that is anything else (a close, a fragment, an unmasked
frame, invalid UTF-8, a reserved opcode), `feed` stops and returns the bytes
from that frame's first byte on: the reader hands them to wsproto and uses
wsproto alone from then on, so the handshake, the closing handshake and every
protocol error keep wsproto's answers. A frame that declares more than
`max_payload` bytes is reported at its header, before any of it is buffered.

Cost per read is bounded whatever the peer does: bytes are appended to one
buffer and parsed only once a frame can be whole.
"""

from __future__ import annotations

from typing import Final

import attrs

OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_TAKEN: Final = frozenset({OP_TEXT, OP_BINARY, OP_PING, OP_PONG})
_MAX_CONTROL: Final = 125


# Frame and Fed are made for every read, pongs included: mutable attrs classes are
# built in about half the time of frozen ones (0.37 against 0.70 us, measured).
@attrs.define(slots=True)
class Frame:
    """One whole client frame: its opcode, and its unmasked payload (`str` for text)."""

    opcode: int
    payload: str | bytes


@attrs.define(slots=True)
class Fed:
    """What one `feed` found, in order: frames, then possibly where the fast path ends."""

    frames: list[Frame]
    # Bytes from the first frame the fast path does not take on: wsproto's from now on.
    unusual: bytes | None = None
    # The payload length a frame declared past `max_payload` (nothing after it is parsed).
    too_big: int | None = None


def unmask(masked: bytes, key: bytes) -> bytes:
    """Return `masked` XORed with the repeated 4-byte masking `key` (RFC 6455 section 5.3)."""
    size = len(masked)
    if not size:
        return b""
    keystream = key * (size // 4 + 1)
    value = int.from_bytes(masked, "little") ^ int.from_bytes(keystream[:size], "little")
    return value.to_bytes(size, "little")


@attrs.define(slots=True)
class ClientFrames:
    """Parses one connection's common client frames, across reads."""

    max_payload: int
    _buffer: bytearray = attrs.field(factory=bytearray)
    # How many buffered bytes the next frame needs before it is worth parsing.
    _needed: int = 2
    # Set once a frame was unusual or too big: the fast path is over.
    done: bool = False

    def feed(self, data: bytes) -> Fed:
        """Take the bytes of one read; return the whole frames they complete, in order."""
        if self.done:
            raise RuntimeError("the fast path is over: feed wsproto")
        buffer = self._buffer
        buffer += data
        if len(buffer) < self._needed:
            return Fed([])
        frames: list[Frame] = []
        start = 0
        end = len(buffer)
        while end - start >= 2:
            first, second = buffer[start], buffer[start + 1]
            opcode = first & 0x0F
            size = second & 0x7F
            header = 6
            if size == 126:
                header = 8
                if end - start < header:
                    break
                size = int.from_bytes(buffer[start + 2 : start + 4], "big")
                minimal = size > 125
            elif size == 127:
                header = 14
                if end - start < header:
                    break
                size = int.from_bytes(buffer[start + 2 : start + 10], "big")
                minimal = size > 0xFFFF and size < 1 << 63
            else:
                minimal = True
            if (
                first & 0xF0 != 0x80  # FIN, no RSV bits
                or not second & 0x80  # masked
                or opcode not in _TAKEN
                or not minimal
                or (opcode >= OP_PING and size > _MAX_CONTROL)
            ):
                return self._stop(frames, start)
            if size > self.max_payload:
                self.done = True
                self._buffer = bytearray()
                return Fed(frames, too_big=size)
            if end - start < header + size:
                self._needed = header + size
                break
            key = bytes(buffer[start + header - 4 : start + header])
            payload = unmask(bytes(buffer[start + header : start + header + size]), key)
            if opcode == OP_TEXT:
                try:
                    frames.append(Frame(opcode, payload.decode("utf-8")))
                except UnicodeDecodeError:
                    return self._stop(frames, start)
            else:
                frames.append(Frame(opcode, payload))
            start += header + size
            self._needed = 2
        del buffer[:start]
        return Fed(frames)

    def _stop(self, frames: list[Frame], start: int) -> Fed:
        self.done = True
        unusual = bytes(self._buffer[start:])
        self._buffer = bytearray()
        return Fed(frames, unusual=unusual)

    def rest(self) -> bytes:
        """Return (and forget) the bytes of a frame not yet whole: wsproto reads on from them."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        self.done = True
        return rest
