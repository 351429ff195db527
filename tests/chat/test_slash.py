"""What a typed line asks for: a message or a slash command."""

from __future__ import annotations

import pytest

from roomd.chat.slash import (
    HELP,
    Command,
    Help,
    Kick,
    Leave,
    Mistake,
    Quit,
    Say,
    ShowInvite,
    parse_line,
)


@pytest.mark.parametrize(
    "line, command",
    [
        ("", None),
        ("   ", None),
        ("hello", Say("hello")),
        ("  spaced  ", Say("  spaced  ")),
        ("//slash", Say("/slash")),
        ("/kick bob", Kick("bob")),
        ("/kick  bob smith ", Kick("bob smith")),
        ("/kick", Mistake("usage: /kick AID")),
        ("/leave", Leave()),
        ("/invite", ShowInvite()),
        ("/quit", Quit()),
        ("/quit ", Quit()),
        (" /quit", Say(" /quit")),
        ("/help", Help()),
        ("/quit now", Mistake("/quit takes no argument")),
        ("/nope", Mistake(f"unknown command /nope; {HELP}")),
    ],
)
def test_parse_line(line: str, command: Command | None) -> None:
    """Each line means one thing: blank nothing, text a message, `/` a command."""
    assert parse_line(line) == command
