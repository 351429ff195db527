"""Text from others reaches the terminal shown, never obeyed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.chat.printable import REPLACEMENT, printable
from roomd.chat.roster import Roster
from roomd.chat.transcript import Transcript
from roomd.client.secure_room import Message


@pytest.mark.parametrize(
    "text, shown",
    [
        ("hello 🔑 [b]bold[/b]", "hello 🔑 [b]bold[/b]"),
        ("\x1b[2J\x1b]0;pwned\x07", f"{REPLACEMENT}[2J{REPLACEMENT}]0;pwned{REPLACEMENT}"),
        ("line one\nline two", "line one ⏎ line two"),
        ("a\tb\r", f"a b{REPLACEMENT}"),
        ("\u202egnp.exe", f"{REPLACEMENT}gnp.exe"),
        ("\u2066isolated\u2069", f"{REPLACEMENT}isolated{REPLACEMENT}"),
        ("\x9b31m", f"{REPLACEMENT}31m"),
    ],
)
def test_controls_are_shown_not_obeyed(text: str, shown: str) -> None:
    """Escapes, C1 controls and bidi overrides become �; newlines and tabs stay readable."""
    assert printable(text) == shown


@given(st.text())
def test_no_control_character_gets_through(text: str) -> None:
    """Whatever the text, the result holds no C0 or C1 control character."""
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in printable(text))


def test_the_log_and_the_member_list_are_printable() -> None:
    """A message, a sender and a member name with escapes show them as �."""
    log = Transcript()
    log.message(Message("r", 1, "m1", "eve\x1b[0m", "hi\x1b[2J", 0, 1))
    assert log.lines()[0].endswith(f"eve{REPLACEMENT}[0m: hi{REPLACEMENT}[2J")
    roster = Roster("bob")
    roster.joined("bob", ["bob", "eve\x1b[0m"])
    roster.typing("eve\x1b[0m", True, now=0.0)
    assert roster.member_lines()[-1] == f"  eve{REPLACEMENT}[0m"
    assert roster.typing_line() == f"eve{REPLACEMENT}[0m is typing…"
