"""The fast path for common client frames, against wsproto's own frame parser."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.frame_protocol import FrameProtocol, Opcode

from roomd.core.frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, ClientFrames, Frame, unmask

MAX = 4096


def client() -> FrameProtocol:
    """wsproto's client side: it masks every frame with a fresh random key."""
    return FrameProtocol(client=True, extensions=[])


def encode(frames: list[Frame]) -> bytes:
    """Serialize `frames` as a client would, with wsproto."""
    proto = client()
    out = b""
    for frame in frames:
        if frame.opcode == OP_PING:
            out += proto.ping(frame.payload)  # type: ignore[arg-type]
        elif frame.opcode == OP_PONG:
            out += proto.pong(frame.payload)  # type: ignore[arg-type]
        else:
            out += proto.send_data(frame.payload, fin=True)
    return out


def wsproto_reads(data: bytes) -> list[Frame]:
    """What wsproto's server side parses from `data`, as `Frame`s."""
    proto = FrameProtocol(client=False, extensions=[])
    proto.receive_bytes(data)
    kinds = {
        Opcode.TEXT: OP_TEXT,
        Opcode.BINARY: OP_BINARY,
        Opcode.PING: OP_PING,
        Opcode.PONG: OP_PONG,
    }
    return [
        Frame(kinds[frame.opcode], frame.payload)  # type: ignore[arg-type]
        for frame in proto.received_frames()
    ]


def masked(first: int, payload: bytes, *, length: bytes | None = None, mask: bool = True) -> bytes:
    """One hand-built frame: first byte, mask bit, length (shortest unless given), payload."""
    key = b"\x01\x02\x03\x04"
    if length is None:
        size = len(payload)
        if size < 126:
            length = bytes((size,))
        elif size < 1 << 16:
            length = b"\x7e" + struct.pack("!H", size)
        else:
            length = b"\x7f" + struct.pack("!Q", size)
    if not mask:
        return bytes((first,)) + length + payload
    return bytes((first, length[0] | 0x80)) + length[1:] + key + unmask(payload, key)


def feed_in_chunks(frames: ClientFrames, data: bytes, cuts: list[int]) -> list[Frame]:
    got: list[Frame] = []
    at = 0
    for cut in [*sorted({min(c, len(data)) for c in cuts}), len(data)]:
        fed = frames.feed(data[at:cut])
        assert fed.unusual is None and fed.too_big is None
        got.extend(fed.frames)
        at = cut
    return got


common = st.one_of(
    st.builds(Frame, st.just(OP_TEXT), st.text(max_size=300)),
    st.builds(Frame, st.just(OP_BINARY), st.binary(max_size=300)),
    st.builds(Frame, st.just(OP_BINARY), st.binary(min_size=126, max_size=MAX)),
    st.builds(Frame, st.just(OP_PING), st.binary(max_size=125)),
    st.builds(Frame, st.just(OP_PONG), st.binary(max_size=125)),
)


@given(frames=st.lists(common, max_size=12), cuts=st.lists(st.integers(0, 20_000), max_size=8))
def test_common_frames_come_out_whole_and_in_order_however_the_reads_split_them(
    frames: list[Frame], cuts: list[int]
) -> None:
    """Every common frame is parsed as wsproto parses it, whatever the read boundaries."""
    data = encode(frames)
    got = feed_in_chunks(ClientFrames(MAX), data, cuts)
    assert got == frames == wsproto_reads(data)


@given(payload=st.binary(max_size=200), key=st.binary(min_size=4, max_size=4))
def test_unmask_is_its_own_inverse(payload: bytes, key: bytes) -> None:
    """Masking twice with one key gives the payload back; each byte is XORed with its key byte."""
    assert unmask(unmask(payload, key), key) == payload
    assert unmask(payload, key) == bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_a_frame_split_one_byte_per_read_completes_once() -> None:
    """A 3,000-byte frame trickled in byte by byte comes out once, when its last byte arrives."""
    frames = ClientFrames(MAX)
    data = encode([Frame(OP_BINARY, bytes(range(256)) * 11 + b"x" * 184)])
    for byte in data[:-1]:
        assert frames.feed(bytes((byte,))).frames == []
    assert frames.feed(data[-1:]).frames == [Frame(OP_BINARY, bytes(range(256)) * 11 + b"x" * 184)]


UNUSUAL = {
    "close": masked(0x88, b"\x03\xe8"),
    "fragment": masked(0x01, b"par"),
    "continuation": masked(0x80, b"t"),
    "unmasked": masked(0x81, b"hi", mask=False),
    "rsv1": masked(0xC1, b"hi"),
    "reserved opcode": masked(0x83, b"hi"),
    "two-byte length for 5 bytes": masked(0x82, b"short", length=b"\x7e\x00\x05"),
    "eight-byte length for 200 bytes": masked(
        0x82, b"y" * 200, length=b"\x7f" + struct.pack("!Q", 200)
    ),
    "ping of 126 bytes": masked(0x89, b"p" * 126),
    "invalid utf-8": masked(0x81, b"\xff\xfe"),
}


@pytest.mark.parametrize("name", list(UNUSUAL))
def test_an_unusual_frame_ends_the_fast_path_and_is_handed_over_from_its_first_byte(
    name: str,
) -> None:
    """Frames before an unusual one come out; the bytes from it on are returned for wsproto."""
    before = encode([Frame(OP_TEXT, "first"), Frame(OP_PONG, b"")])
    after = encode([Frame(OP_TEXT, "after")])
    frames = ClientFrames(MAX)
    fed = frames.feed(before + UNUSUAL[name] + after)
    assert fed.frames == [Frame(OP_TEXT, "first"), Frame(OP_PONG, b"")]
    assert fed.unusual == UNUSUAL[name] + after
    assert frames.done
    with pytest.raises(RuntimeError):
        frames.feed(b"")


def test_wsproto_reads_on_from_the_handed_over_bytes() -> None:
    """What the fast path hands over (a close frame) is a frame boundary wsproto can parse."""
    proto = client()
    data = proto.send_data("hello", fin=True) + proto.close(1000, "bye")
    fed = ClientFrames(MAX).feed(data)
    assert fed.frames == [Frame(OP_TEXT, "hello")]
    server = FrameProtocol(client=False, extensions=[])
    assert fed.unusual is not None
    server.receive_bytes(fed.unusual)
    (close,) = list(server.received_frames())
    assert close.opcode is Opcode.CLOSE and close.payload == (1000, "bye")


@pytest.mark.parametrize("size", [MAX + 1, 70_000, 1 << 40])
def test_a_frame_declaring_more_than_the_limit_is_reported_at_its_header(size: int) -> None:
    """Only the header needs to arrive: the declared size is reported, no payload is buffered."""
    if size < 1 << 16:
        header = masked(0x82, b"", length=b"\x7e" + struct.pack("!H", size))
    else:
        header = masked(0x82, b"", length=b"\x7f" + struct.pack("!Q", size))
    frames = ClientFrames(MAX)
    fed = frames.feed(encode([Frame(OP_TEXT, "ok")]) + header)
    assert fed.frames == [Frame(OP_TEXT, "ok")]
    assert fed.too_big == size
    assert frames.done


def test_a_frame_of_exactly_the_limit_is_taken() -> None:
    """max_payload itself is allowed."""
    payload = b"z" * MAX
    assert ClientFrames(MAX).feed(encode([Frame(OP_BINARY, payload)])).frames == [
        Frame(OP_BINARY, payload)
    ]


def test_rest_returns_the_partial_frame_for_wsproto() -> None:
    """When reading must go on elsewhere, the bytes of a frame not yet whole are handed over."""
    data = encode([Frame(OP_TEXT, "whole"), Frame(OP_TEXT, "partial frame")])
    frames = ClientFrames(MAX)
    cut = len(data) - 4
    assert frames.feed(data[:cut]).frames == [Frame(OP_TEXT, "whole")]
    rest = frames.rest()
    assert wsproto_reads(rest + data[cut:]) == [Frame(OP_TEXT, "partial frame")]
    assert frames.done
