"""Message bodies: JSON.stringify's bytes, padding to 256, and strict reading."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.client.e2ee import E2EEError
from roomd.client.plaintext import Reaction, Text, decode_body, encode_body
from tests.client.make_vectors import reaction_body, text_body

MAX_SAFE = 2**53 - 1
# 34 bytes of JSON surround a text whose sentAt has 13 digits.
OVERHEAD = len(b'{"text":"","sentAt":1700000000000}')

sent_ats = st.integers(0, MAX_SAFE)


def test_a_text_is_written_compact_with_its_keys_in_order() -> None:
    """A Text is {"text":...,"sentAt":...}: no spaces, then padding spaces."""
    data = encode_body(Text(text="héllo", sent_at=1700000000000))
    assert data == '{"text":"héllo","sentAt":1700000000000}'.encode().ljust(256)


def test_a_reaction_is_written_compact_with_its_keys_in_order() -> None:
    """A Reaction is {"reaction":{"messageId","emoji","remove"},"sentAt"}, no spaces."""
    data = encode_body(Reaction(message_id="m1", emoji="👍", remove=False, sent_at=5))
    expected = '{"reaction":{"messageId":"m1","emoji":"👍","remove":false},"sentAt":5}'
    assert data == expected.encode().ljust(256)


@pytest.mark.parametrize(
    ("json_size", "padded_size"), [(OVERHEAD, 256), (255, 256), (256, 256), (257, 512), (512, 512)]
)
def test_bodies_are_padded_to_the_next_multiple_of_256_bytes(
    json_size: int, padded_size: int
) -> None:
    """Spaces pad the JSON to the next multiple of 256, none when it is one already."""
    data = encode_body(Text(text="a" * (json_size - OVERHEAD), sent_at=1700000000000))
    assert len(data) == padded_size
    assert data[:json_size].endswith(b"}")
    assert data[json_size:] == b" " * (padded_size - json_size)


def test_padding_counts_bytes_not_characters() -> None:
    """111 'é' (222 bytes) fill 256 bytes exactly; one more ASCII character needs 512."""
    assert len(encode_body(Text(text="é" * 111, sent_at=1700000000000))) == 256
    assert len(encode_body(Text(text="é" * 111 + "!", sent_at=1700000000000))) == 512


@pytest.mark.parametrize(
    ("char", "written"),
    [
        ("\x00", "\\u0000"),
        ("\x08", "\\b"),
        ("\t", "\\t"),
        ("\n", "\\n"),
        ("\x0b", "\\u000b"),
        ("\x0c", "\\f"),
        ("\r", "\\r"),
        ("\x1f", "\\u001f"),
        ('"', '\\"'),
        ("\\", "\\\\"),
        ("/", "/"),
        ("\x7f", "\x7f"),
        ("\x80", "\x80"),
        ("\u2028", "\u2028"),
        ("\u2029", "\u2029"),
        ("é", "é"),
        ("🌍", "🌍"),
    ],
)
def test_characters_are_escaped_exactly_as_json_stringify_escapes_them(
    char: str, written: str
) -> None:
    """Only quote, backslash and C0 controls are escaped (lowercase hex); DEL, U+2028 stay raw."""
    data = encode_body(Text(text=char, sent_at=0))
    assert data.rstrip(b" ") == ('{"text":"' + written + '","sentAt":0}').encode()


@given(st.text(), sent_ats)
def test_any_text_is_written_as_ecmascript_quotes_it(text: str, sent_at: int) -> None:
    """For any text, the JSON equals a transcription of ECMAScript's QuoteJSONString."""
    data = encode_body(Text(text=text, sent_at=sent_at))
    assert data.rstrip(b" ") == text_body(text, sent_at).encode()


@given(st.text(), st.text(), st.booleans(), sent_ats)
def test_any_reaction_is_written_as_ecmascript_quotes_it(
    message_id: str, emoji: str, remove: bool, sent_at: int
) -> None:
    """For any reaction, the JSON equals the ECMAScript transcription, keys in E2EE.md's order."""
    data = encode_body(Reaction(message_id=message_id, emoji=emoji, remove=remove, sent_at=sent_at))
    assert data.rstrip(b" ") == reaction_body(message_id, emoji, remove, sent_at).encode()


@given(st.text(), sent_ats)
def test_any_text_round_trips_padded_to_256(text: str, sent_at: int) -> None:
    """decode_body(encode_body(text)) gives the text back, and the body is 256·k bytes."""
    body = Text(text=text, sent_at=sent_at)
    data = encode_body(body)
    assert len(data) % 256 == 0
    assert len(data) > 0
    assert decode_body(data) == body


@given(st.text(), st.text(), st.booleans(), sent_ats)
def test_any_reaction_round_trips_padded_to_256(
    message_id: str, emoji: str, remove: bool, sent_at: int
) -> None:
    """decode_body(encode_body(reaction)) gives the reaction back, in 256·k bytes."""
    body = Reaction(message_id=message_id, emoji=emoji, remove=remove, sent_at=sent_at)
    data = encode_body(body)
    assert len(data) % 256 == 0
    assert decode_body(data) == body


@pytest.mark.parametrize(
    "body",
    [
        Text(text="a\ud800b", sent_at=0),
        Reaction(message_id="\udfff", emoji="👍", remove=False, sent_at=0),
        Text(text="hi", sent_at=-1),
        Text(text="hi", sent_at=MAX_SAFE + 1),
    ],
)
def test_a_body_javascript_would_write_differently_is_refused(body: Text | Reaction) -> None:
    """A lone surrogate (UTF-8 cannot carry it) or a sentAt past 2**53-1 is an E2EEError."""
    with pytest.raises(E2EEError):
        encode_body(body)


@pytest.mark.parametrize(
    ("data", "body"),
    [
        (b'  {"text":"hi","sentAt":1}  \n ', Text(text="hi", sent_at=1)),
        (b'{"sentAt":1,"text":"hi"}', Text(text="hi", sent_at=1)),
        (b'{"text":"hi","sentAt":1,"edited":true,"v":[1]}', Text(text="hi", sent_at=1)),
        (b'{"text":"\\u00e9\\ud83c\\udf0d","sentAt":1}', Text(text="é🌍", sent_at=1)),
        (
            b'{"reaction":{"emoji":"x","remove":true,"messageId":"m","k":0},"sentAt":2,"z":null}',
            Reaction(message_id="m", emoji="x", remove=True, sent_at=2),
        ),
    ],
)
def test_readers_parse_rather_than_compare_bytes(data: bytes, body: Text | Reaction) -> None:
    """Whitespace anywhere, any key order, escapes and unknown keys are all read."""
    assert decode_body(data) == body


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" " * 256,
        b"\xff\xfe",
        b'{"text":"hi","sentAt":1',
        b'["text","hi"]',
        b'"hi"',
        b'{"sentAt":1}',
        b'{"text":"hi"}',
        b'{"text":3,"sentAt":1}',
        b'{"text":null,"sentAt":1}',
        b'{"text":"hi","sentAt":1.0}',
        b'{"text":"hi","sentAt":1e3}',
        b'{"text":"hi","sentAt":"1"}',
        b'{"text":"hi","sentAt":true}',
        b'{"text":"hi","sentAt":-1}',
        b'{"text":"hi","sentAt":9007199254740992}',
        b'{"text":"hi","sentAt":NaN}',
        b'{"text":"hi","sentAt":' + b"9" * 5000 + b"}",
        b'{"text":"\\ud800","sentAt":1}',
        b'{"text":"hi","reaction":{"messageId":"m","emoji":"x","remove":false},"sentAt":1}',
        b'{"reaction":"x","sentAt":1}',
        b'{"reaction":{"messageId":"m","emoji":"x"},"sentAt":1}',
        b'{"reaction":{"messageId":"m","emoji":"x","remove":0},"sentAt":1}',
        b'{"reaction":{"messageId":1,"emoji":"x","remove":false},"sentAt":1}',
        b'{"reaction":{"messageId":"m","emoji":null,"remove":false},"sentAt":1}',
        b'{"text":' + b"[" * 100_000 + b"]" * 100_000 + b',"sentAt":1}',
    ],
)
def test_anything_but_the_two_shapes_is_refused(data: bytes) -> None:
    """Bad UTF-8 or JSON, another shape, a wrong type or both shapes at once: E2EEError."""
    with pytest.raises(E2EEError):
        decode_body(data)
