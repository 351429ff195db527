"""Message bodies (E2EE.md, "Message" and "What else stays private"): JSON, padded.

A body is written as the compact JSON that JavaScript's `JSON.stringify` writes
for the same object, so that the Python SDK and the browser demo produce the
same bytes: keys in E2EE.md's order, no spaces, non-ASCII as raw UTF-8. With
`ensure_ascii=False` Python's `json` escapes exactly what `JSON.stringify`
escapes in a well-formed string: `"` and `\\`, the short escapes `\\b \\t \\n
\\f \\r`, every other character below U+0020 as `\\u00xx` (lowercase hex), and
nothing else (DEL, U+2028 and U+2029 stay raw). The one difference is a lone
surrogate, which `JSON.stringify` escapes and UTF-8 cannot carry: we refuse it,
on the way out and on the way in. `sentAt` must be an integer JavaScript holds
exactly (0..2**53-1).

Readers parse rather than compare bytes: trailing spaces are JSON whitespace,
unknown keys are ignored, and anything that is not one of the two shapes with
the right types is an `E2EEError`.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from roomd.client.e2ee import E2EEError

_PADDING_BLOCK = 256
_MAX_SAFE_INTEGER = 2**53 - 1


@attrs.frozen
class Text:
    """A chat message: its text and when it was sent (Unix milliseconds)."""

    text: str
    sent_at: int


@attrs.frozen
class Reaction:
    """An emoji added to (or, with `remove`, taken off) the message `message_id`."""

    message_id: str
    emoji: str
    remove: bool
    sent_at: int


def encode_body(body: Text | Reaction) -> bytes:
    """Write `body` as E2EE.md's compact JSON, padded with spaces to a multiple of 256 bytes.

    Returns:
        UTF-8 bytes, at least 256 (JSON is never empty), no padding when the
        JSON already fills a multiple of 256.

    Raises:
        E2EEError: a string holds a lone surrogate, or `sent_at` is not 0..2**53-1.
    """
    _check_sent_at(body.sent_at)
    obj: dict[str, Any]
    if isinstance(body, Text):
        obj = {"text": body.text, "sentAt": body.sent_at}
    else:
        reaction = {"messageId": body.message_id, "emoji": body.emoji, "remove": body.remove}
        obj = {"reaction": reaction, "sentAt": body.sent_at}
    written = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        data = written.encode()
    except UnicodeEncodeError:
        raise E2EEError("a message body cannot hold a lone surrogate") from None
    return data + b" " * (-len(data) % _PADDING_BLOCK)


def decode_body(data: bytes) -> Text | Reaction:
    """Read a decrypted body: a `Text` or a `Reaction`.

    Raises:
        E2EEError: not UTF-8 JSON, not an object of one of the two shapes, a
            field of the wrong type, a lone surrogate, or `sentAt` out of 0..2**53-1.
    """
    try:
        obj = json.loads(data.decode())
    except ValueError:
        # Bad UTF-8, bad JSON, or an integer past Python's 4300-digit limit.
        raise E2EEError("a message body is UTF-8 JSON") from None
    except RecursionError:
        raise E2EEError("a message body is nested too deeply") from None
    if not isinstance(obj, dict):
        raise E2EEError("a message body is a JSON object")
    if "text" in obj and "reaction" in obj:
        raise E2EEError("a message body has 'text' or 'reaction', not both")
    sent_at = obj.get("sentAt")
    if not isinstance(sent_at, int) or isinstance(sent_at, bool):
        raise E2EEError("a message body's 'sentAt' is an integer")
    _check_sent_at(sent_at)
    if "text" in obj:
        return Text(text=_string(obj, "text"), sent_at=sent_at)
    reaction = obj.get("reaction")
    if not isinstance(reaction, dict):
        raise E2EEError("a message body has 'text' (a string) or 'reaction' (an object)")
    remove = reaction.get("remove")
    if not isinstance(remove, bool):
        raise E2EEError("a reaction's 'remove' is a boolean")
    return Reaction(
        message_id=_string(reaction, "messageId"),
        emoji=_string(reaction, "emoji"),
        remove=remove,
        sent_at=sent_at,
    )


def _string(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise E2EEError(f"a message body's {key!r} is a string")
    try:
        value.encode()
    except UnicodeEncodeError:
        # json.loads turns an escaped lone surrogate ("\ud800") into one.
        raise E2EEError(f"a message body's {key!r} holds a lone surrogate") from None
    return value


def _check_sent_at(sent_at: int) -> None:
    if not 0 <= sent_at <= _MAX_SAFE_INTEGER:
        raise E2EEError(f"'sentAt' is 0..2**53-1 (Unix milliseconds), got {sent_at}")
