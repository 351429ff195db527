"""The frame builder produces frames that a WebSocket client parser accepts."""

from __future__ import annotations

import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.frame import build_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
@pytest.mark.parametrize("text", [True, False])
def test_frame_round_trips_through_a_client_parser(size: int, text: bool) -> None:
    """Every payload length class (7, 16 and 64 bit) parses back to the same payload."""
    payload = b"a" * size
    client = FrameProtocol(client=True, extensions=[])
    client.receive_bytes(build_frame(payload, text=text))
    frames = list(client.received_frames())
    assert len(frames) == 1
    frame = frames[0]
    assert frame.opcode is (Opcode.TEXT if text else Opcode.BINARY)
    assert frame.message_finished
    data = frame.payload.encode() if text else bytes(frame.payload)
    assert data == payload
