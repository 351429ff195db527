"""The JSON and CBOR wire codecs (PROTOCOL.md section 1)."""

from __future__ import annotations

import base64
import json

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.core.codec import CBOR, JSON, choose_codec, decode_frame
from roomd.errors import ErrorCode, ProtocolError


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([], None),
        (["chat", "superchat"], None),
        (["roomd.v1.JSON"], None),
        (["roomd.v2.json"], None),
        (["roomd.v1.json"], JSON),
        (["roomd.v1.cbor"], CBOR),
        (["chat", "roomd.v1.cbor"], CBOR),
        (["roomd.v1.cbor", "roomd.v1.json"], CBOR),
        (["roomd.v1.json", "roomd.v1.cbor"], JSON),
    ],
)
def test_choose_codec_takes_the_first_offered_roomd_subprotocol(
    offered: list[str], expected: object
) -> None:
    """The first offered subprotocol roomd knows wins; offering neither gives None."""
    assert choose_codec(offered) is expected


def test_codecs_name_their_subprotocol_and_frame_kind() -> None:
    """JSON goes in text frames as roomd.v1.json, CBOR in binary frames as roomd.v1.cbor."""
    assert (JSON.subprotocol, JSON.text) == ("roomd.v1.json", True)
    assert (CBOR.subprotocol, CBOR.text) == ("roomd.v1.cbor", False)


EVENT = {
    "type": "newMessage",
    "roomId": "r1",
    "seq": 3,
    "messageId": "abc3",
    "from": "alice",
    "ciphertext": b"\x00\xfb\xff",
    "iv": b"",
    "ts": 1_700_000_000_123,
}


def test_json_encodes_blobs_as_padded_standard_base64() -> None:
    """Blob bytes become standard base64 with padding inside UTF-8 JSON."""
    payload = JSON.encode({**EVENT, "publicKey": b"a", "encryptedRoomKey": None})
    decoded = json.loads(payload.decode("utf-8"))
    assert decoded == {
        **EVENT,
        "ciphertext": "APv/",
        "iv": "",
        "publicKey": "YQ==",
        "encryptedRoomKey": None,
    }


def test_cbor_encodes_blobs_as_byte_strings() -> None:
    """In CBOR a blob is a byte string (major type 2), the event otherwise unchanged."""
    payload = CBOR.encode(EVENT)
    assert cbor2.loads(payload) == EVENT
    assert b"\x43\x00\xfb\xff" in payload  # byte string of length 3


@pytest.mark.parametrize("event", [EVENT, {"type": "hello", "limits": {"rate": 10.5, "burst": 30}}])
def test_each_codec_round_trips_through_decode_frame(event: dict[str, object]) -> None:
    """decode_frame reads back what encode wrote (JSON blobs as base64 strings)."""
    assert decode_frame(CBOR.encode(event)) == event
    as_json = {
        k: base64.b64encode(v).decode() if isinstance(v, bytes) else v for k, v in event.items()
    }
    assert decode_frame(JSON.encode(event).decode()) == as_json


def test_json_encode_refuses_values_it_cannot_represent() -> None:
    """A value that is neither JSON nor a blob is a bug, reported as a TypeError."""
    with pytest.raises(TypeError):
        JSON.encode({"type": "x", "bad": object()})


@given(blob=st.binary(max_size=300))
def test_json_and_cbor_members_see_the_same_bytes(blob: bytes) -> None:
    """JSON and CBOR senders normalise to the same bytes, and each codec delivers exactly those."""
    from_json = m.parse_message(
        decode_frame(
            json.dumps(
                {
                    "type": "signal",
                    "roomId": "r",
                    "to": "b",
                    "payload": base64.b64encode(blob).decode(),
                }
            )
        ),
        text=True,
    )
    from_cbor = m.parse_message(
        decode_frame(cbor2.dumps({"type": "signal", "roomId": "r", "to": "b", "payload": blob})),
        text=False,
    )
    assert from_json == from_cbor
    assert isinstance(from_json, m.Signal)
    event = {"type": "signal", "roomId": "r", "from": "a", "payload": from_json.payload}
    json_payload = decode_frame(JSON.encode(event).decode())
    cbor_payload = decode_frame(CBOR.encode(event))
    assert isinstance(json_payload, dict) and isinstance(cbor_payload, dict)
    assert base64.b64decode(json_payload["payload"], validate=True) == blob
    assert cbor_payload["payload"] == blob


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ("{}", {}),
        ('{"type":"auth","token":"x"}', {"type": "auth", "token": "x"}),
        ("[1, 2]", [1, 2]),
        (' "x" ', "x"),
        (b"\xa0", {}),
        (b"\xa1\x64type\x64auth", {"type": "auth"}),
        (b"\x43abc", b"abc"),
        (b"\xbf\x61a\x01\xff", {"a": 1}),  # indefinite-length map
    ],
)
def test_decode_frame_reads_one_value(data: str | bytes, value: object) -> None:
    """A text frame decodes as JSON, a binary frame as CBOR."""
    assert decode_frame(data) == value


@pytest.mark.parametrize(
    "data",
    [
        "",
        " ",
        "{",
        "{'type': 'auth'}",
        '{"a": 1,}',
        '{"a": 1} {"b": 2}',
        '{"a": 1} x',
        "NaN",
        "1e999",
        "\ud800",
        '"\ud800"',
        "[" * 2000 + "]" * 2000,
    ],
)
def test_decode_frame_rejects_text_that_is_not_one_json_value(data: str) -> None:
    """Invalid JSON, trailing data and JSON beyond the parser's limits are a badRequest."""
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",  # a break outside an indefinite-length item
        b"\x1c",  # reserved additional information
        b"\x62a",  # text string cut short
        b"\xa1\x61a",  # map without its value
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # byte string claiming 2^64 bytes
        b"\x62\xff\xfe",  # text string that is not UTF-8
        b"\x81" * 100_000,  # nesting too deep
        b"\xc1\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # epoch datetime out of range
        b"\xd8\x23\x61(",  # invalid regular expression
        b"\xd8\x1d\x00",  # reference to a shared value that does not exist
    ],
)
def test_decode_frame_rejects_bytes_that_are_not_valid_cbor(data: bytes) -> None:
    """Malformed or hostile CBOR is a badRequest, whatever cbor2 raises inside."""
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert info.value.code is ErrorCode.BAD_REQUEST


@pytest.mark.parametrize("data", [b"\xa0\x00", b"\xa0\xa0", b"\x01\x02", b"\xf6\xff"])
def test_decode_frame_rejects_data_after_the_cbor_value(data: bytes) -> None:
    """A binary frame holds exactly one CBOR value; trailing bytes are a badRequest."""
    with pytest.raises(ProtocolError) as info:
        decode_frame(data)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert "after" in info.value.message


def _decodes_or_bad_request(data: str | bytes) -> None:
    try:
        decode_frame(data)
    except ProtocolError as exc:
        assert exc.code is ErrorCode.BAD_REQUEST


@given(data=st.binary(max_size=200))
def test_decode_frame_on_any_bytes_returns_or_raises_bad_request(data: bytes) -> None:
    """Arbitrary binary frames decode or raise ProtocolError(badRequest), nothing else."""
    _decodes_or_bad_request(data)


@given(data=st.text(st.characters(exclude_categories=()), max_size=200))
def test_decode_frame_on_any_text_returns_or_raises_bad_request(data: str) -> None:
    """Arbitrary text frames decode or raise ProtocolError(badRequest), nothing else."""
    _decodes_or_bad_request(data)


CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(value=CBOR_VALUES, position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_decode_frame_on_mutated_cbor_returns_or_raises_bad_request(
    value: object, position: int, byte: int
) -> None:
    """Valid CBOR with one byte changed, or cut short, still only decodes or is badRequest."""
    data = bytearray(cbor2.dumps(value))
    index = position % len(data)
    mutated = bytes(data[:index]) + bytes([byte]) + bytes(data[index + 1 :])
    _decodes_or_bad_request(mutated)
    _decodes_or_bad_request(bytes(data[:index]))
