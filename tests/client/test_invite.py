"""Invite links: written as URLSearchParams writes them, read in any order."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.client.invite import Invite, invite_link, parse_invite

SECRET = bytes(range(32))
ENCODED = base64.urlsafe_b64encode(SECRET).rstrip(b"=").decode()
BASE = "ws://127.0.0.1:8765/v1"

room_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1)


def test_a_link_is_the_url_with_room_and_secret_in_its_fragment() -> None:
    """invite_link writes base#room=ROOMID&secret=SECRET, SECRET base64url without padding."""
    assert invite_link(BASE, "r-1", SECRET) == f"{BASE}#room=r-1&secret={ENCODED}"
    assert "=" not in ENCODED


def test_the_room_id_is_form_encoded_as_url_search_params_does() -> None:
    """Letters, digits and *-._ stay, a space is '+', other bytes %XX (uppercase); ~ too."""
    room = " !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~é🌍"
    # What Node's `new URLSearchParams({room}).toString()` writes.
    expected = (
        "+%21%22%23%24%25%26%27%28%29*%2B%2C-.%2F%3A%3B%3C%3D%3E%3F%40%5B%5C%5D%5E_%60%7B%7C%7D"
        "%7E%C3%A9%F0%9F%8C%8D"
    )
    assert invite_link(BASE, room, SECRET) == f"{BASE}#room={expected}&secret={ENCODED}"


@pytest.mark.parametrize(
    "base",
    [
        "ws://127.0.0.1:8765/v1",
        "wss://chat.example.com/v1",
        "ws://[::1]:8765/v1",
        "http://127.0.0.1:8080/demo",
        "https://demo.example.com/demo",
    ],
)
def test_websocket_and_demo_page_links_are_both_read(base: str) -> None:
    """parse_invite reads ws(s):// and http(s):// links and keeps the URL without fragment."""
    assert parse_invite(invite_link(base, "r-1", SECRET)) == Invite(
        url=base, room_id="r-1", secret=SECRET
    )


@pytest.mark.parametrize(
    "fragment",
    [
        f"room=r-1&secret={ENCODED}",
        f"secret={ENCODED}&room=r-1",
        f"v=1&secret={ENCODED}&x&room=r-1&name=Team+chat",
        f"room=r-1&secret={ENCODED}&room=r-2&secret=bad",
        f"&&room=r%2D1&secret={ENCODED}&",
    ],
)
def test_room_and_secret_are_read_in_any_order_among_other_params(fragment: str) -> None:
    """Order does not matter, unknown params are ignored, and the first of a repeat counts."""
    assert parse_invite(f"{BASE}#{fragment}") == Invite(url=BASE, room_id="r-1", secret=SECRET)


def test_a_pasted_link_may_have_surrounding_whitespace() -> None:
    """Spaces and newlines around a pasted link are dropped."""
    invite = parse_invite(f"  {invite_link(BASE, 'r-1', SECRET)}\n")
    assert invite == Invite(url=BASE, room_id="r-1", secret=SECRET)


def test_plus_and_percent_escapes_decode_to_the_room_id() -> None:
    """'+' reads as a space and %XX as UTF-8 bytes, as URLSearchParams reads them."""
    invite = parse_invite(f"{BASE}#room=salle+%C3%A9%2B&secret={ENCODED}")
    assert invite.room_id == "salle é+"


@pytest.mark.parametrize(
    ("link", "rule"),
    [
        (BASE, "has none"),
        (f"{BASE}#secret={ENCODED}", "'room' is missing or empty"),
        (f"{BASE}#room=&secret={ENCODED}", "'room' is missing or empty"),
        (f"{BASE}#room=r-1", "'secret': it is missing"),
        (f"{BASE}#room=r-1&secret={ENCODED[:-1]}", "got 42 characters"),
        (f"{BASE}#room=r-1&secret={ENCODED}=", "got 44 characters"),
        (f"{BASE}#room=r-1&secret={ENCODED}A", "got 44 characters"),
        (f"{BASE}#room=r-1&secret={ENCODED[:-1]}+", "base64url"),
        (f"{BASE}#room=r-1&secret={ENCODED[:-1]}%2F", "base64url"),
        (f"ftp://host/v1#room=r-1&secret={ENCODED}", "not 'ftp'"),
        (f"r-1&secret={ENCODED}", "not ''"),
        (f"ws:///v1#room=r-1&secret={ENCODED}", "has a host"),
        (f"ws://[::1/v1#room=r-1&secret={ENCODED}", "does not parse"),
    ],
)
def test_a_link_without_a_room_or_a_32_byte_secret_is_refused(link: str, rule: str) -> None:
    """parse_invite says which rule a bad link breaks, and never quotes the secret."""
    with pytest.raises(ValueError, match=rule) as refused:
        parse_invite(link)
    assert ENCODED[:40] not in str(refused.value)


@pytest.mark.parametrize(
    ("base", "room", "secret", "rule"),
    [
        (BASE, "r-1", SECRET[:31], "32 bytes, got 31"),
        (BASE, "", SECRET, "room id is empty"),
        (f"{BASE}#x", "r-1", SECRET, "no fragment"),
        ("ftp://host/v1", "r-1", SECRET, "not 'ftp'"),
    ],
)
def test_a_link_that_could_not_be_read_back_is_not_written(
    base: str, room: str, secret: bytes, rule: str
) -> None:
    """invite_link refuses a short secret, an empty room id, a fragment or another scheme."""
    with pytest.raises(ValueError, match=rule):
        invite_link(base, room, secret)


@given(room_ids, st.binary(min_size=32, max_size=32))
def test_any_room_id_and_secret_round_trip(room_id: str, secret: bytes) -> None:
    """parse_invite(invite_link(...)) gives back any room id and any 32-byte secret."""
    link = invite_link("wss://chat.example.com/v1", room_id, secret)
    assert "#" not in link.partition("#")[2]
    assert parse_invite(link) == Invite(
        url="wss://chat.example.com/v1", room_id=room_id, secret=secret
    )


@given(room_ids, st.binary(min_size=32, max_size=32))
def test_any_link_reads_the_same_with_its_params_swapped(room_id: str, secret: bytes) -> None:
    """Swapping room and secret in any link changes nothing that parse_invite reads."""
    url, _, fragment = invite_link(BASE, room_id, secret).partition("#")
    room_param, secret_param = fragment.split("&")
    assert parse_invite(f"{url}#{secret_param}&{room_param}") == parse_invite(f"{url}#{fragment}")
