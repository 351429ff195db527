"""Invite links (E2EE.md, "Invite links"): a URL whose fragment holds the room and its secret.

The fragment is `room=ROOMID&secret=SECRET`, SECRET the 32-byte invite secret in
base64url without padding, written the way `URLSearchParams.toString()` writes
it so that a link made here is the link the browser demo makes: ASCII letters,
digits and `*-._` as they are, a space as `+`, every other UTF-8 byte as `%XX`
(uppercase). `urllib.parse.urlencode` differs on two characters (it writes `~`
raw and `*` as `%2A`), hence the few lines of `_form_encode`.

The fragment never reaches a server, so a link is the only place the secret
travels; error messages here never quote the link.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

import attrs

_SCHEMES = frozenset({"ws", "wss", "http", "https"})
_SECRET_LEN = 32
# 32 bytes are 43 base64url characters without padding.
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_FORM_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789*-._")


@attrs.frozen
class Invite:
    """A parsed invite link.

    Attributes:
        url: the link without its fragment: a WebSocket URL (`ws://HOST:PORT/v1`)
            for `roomd chat`, or the demo page's URL on the API server; the
            caller decides which server to connect to.
        room_id: the room to join.
        secret: the 32-byte invite secret, which opens the room key and knocks.
    """

    url: str
    room_id: str
    secret: bytes = attrs.field(repr=False)  # the link's secret never shows in a repr


def invite_link(base_url: str, room_id: str, secret: bytes) -> str:
    """Write the invite link `base_url#room=ROOMID&secret=SECRET`.

    Args:
        base_url: a `ws://`, `wss://`, `http://` or `https://` URL without fragment.
        room_id: a non-empty room id.
        secret: the 32-byte invite secret.

    Raises:
        ValueError: a base URL of another scheme or with a fragment, an empty
            room id, or a secret that is not 32 bytes.
    """
    _check_url(base_url)
    if "#" in base_url:
        raise ValueError("an invite link's base URL has no fragment of its own")
    if not room_id:
        raise ValueError("an invite link names a room: the room id is empty")
    if len(secret) != _SECRET_LEN:
        raise ValueError(f"an invite secret is {_SECRET_LEN} bytes, got {len(secret)}")
    encoded_secret = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
    return f"{base_url}#room={_form_encode(room_id)}&secret={encoded_secret}"


def parse_invite(link: str) -> Invite:
    """Read an invite link: `room` and `secret` in either order, other parameters ignored.

    Surrounding whitespace (from a paste) is dropped. When a parameter repeats,
    the first one counts, as with `URLSearchParams.get`.

    Raises:
        ValueError: not a ws(s) or http(s) URL with a host, no fragment, no or
            an empty `room`, or no `secret` that is 43 base64url characters (32 bytes).
    """
    link = link.strip()
    _check_url(link)
    url, has_fragment, fragment = link.partition("#")
    if not has_fragment:
        raise ValueError("an invite link has a fragment '#room=...&secret=...': this one has none")
    params: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(fragment, keep_blank_values=True):
        params.setdefault(name, value)
    room_id = params.get("room", "")
    if not room_id:
        raise ValueError("an invite link's fragment names a room: 'room' is missing or empty")
    encoded_secret = params.get("secret")
    if encoded_secret is None:
        raise ValueError("an invite link's fragment holds a 'secret': it is missing")
    if not _SECRET_RE.fullmatch(encoded_secret):
        raise ValueError(
            "an invite link's 'secret' is 32 bytes in base64url without padding "
            f"(43 characters of A-Z a-z 0-9 - _), got {len(encoded_secret)} characters"
        )
    secret = base64.urlsafe_b64decode(encoded_secret + "=")
    return Invite(url=url, room_id=room_id, secret=secret)


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise ValueError("an invite link is a URL: this one does not parse") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"an invite link is a ws://, wss://, http:// or https:// URL, not {parts.scheme!r}"
        )
    if not parts.hostname:
        raise ValueError("an invite link's URL has a host")


def _form_encode(value: str) -> str:
    """Percent-encode `value` exactly as `URLSearchParams` serialises a name or value."""
    out: list[str] = []
    for byte in value.encode():
        if byte in _FORM_SAFE:
            out.append(chr(byte))
        elif byte == 0x20:
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)
