"""The two wire codecs: JSON (text frames) and CBOR (binary frames).

Decoding is chosen by the frame's opcode, encoding by the subprotocol the
connection negotiated. Blobs are `bytes` inside roomd; the JSON codec writes them
as padded standard base64, the CBOR codec as byte strings, so members of one room
see the same bytes whichever codec they use.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Final

import attrs
import cbor2
import orjson

from roomd.errors import ErrorCode, ProtocolError

JSON_SUBPROTOCOL: Final = "roomd.v1.json"
CBOR_SUBPROTOCOL: Final = "roomd.v1.cbor"


def _blob_to_base64(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


@attrs.frozen(eq=False)  # codecs are singletons; identity hashing keeps fan-out cheap
class Codec:
    """One wire encoding: `encode` turns an event dict into a frame payload."""

    subprotocol: str
    text: bool

    def encode(self, event: dict[str, Any]) -> bytes:
        """Return the payload bytes of `event` (UTF-8 JSON, or CBOR)."""
        if self.text:
            return orjson.dumps(event, default=_blob_to_base64)
        return cbor2.dumps(event)


JSON: Final = Codec(JSON_SUBPROTOCOL, text=True)
CBOR: Final = Codec(CBOR_SUBPROTOCOL, text=False)
CODECS: Final = {JSON.subprotocol: JSON, CBOR.subprotocol: CBOR}


def choose_codec(offered: list[str]) -> Codec | None:
    """Return the codec for the client's offered subprotocols, first match wins.

    None means the client offered neither: it gets JSON and no
    `Sec-WebSocket-Protocol` header.
    """
    for name in offered:
        codec = CODECS.get(name)
        if codec is not None:
            return codec
    return None


def decode_frame(data: str | bytes) -> object:
    """Return the value a frame carries: JSON for text frames, CBOR for binary ones.

    Raises `ProtocolError(badRequest)` when the frame is not a single valid value.
    """
    if isinstance(data, str):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid JSON") from None
    stream = io.BytesIO(data)
    try:
        value = cbor2.load(stream)
    except Exception:
        # cbor2 raises a variety of errors on hostile input (decode errors, value,
        # type, recursion and overflow errors); each means "not valid CBOR".
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame is not valid CBOR") from None
    if stream.tell() != len(data):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "frame holds data after its CBOR value")
    return value
