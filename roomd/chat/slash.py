"""What a line typed into `roomd chat` asks for: a message to send, or a slash command.

Pure. A line that starts with `/` is a command (a leading space makes it a
message); `//` sends the rest as a message that starts with one `/`.
`parse_line` decides; the app carries it out.
"""

from __future__ import annotations

import attrs

HELP = "commands: /kick AID (host only), /leave, /invite, /quit, /help; //text sends /text"


@attrs.frozen
class Say:
    """Send `text` to the room."""

    text: str


@attrs.frozen
class Kick:
    """Kick `aid` out of the room with a ban (host only); the room key rotates."""

    aid: str


@attrs.frozen
class Leave:
    """Leave the room for good (the others rotate the key); the chat stays open."""


@attrs.frozen
class ShowInvite:
    """Show the newest invite link of the room."""


@attrs.frozen
class Quit:
    """Close the chat (a disconnect, not a leave: the room keeps this member's place)."""


@attrs.frozen
class Help:
    """Show the commands."""


@attrs.frozen
class Mistake:
    """A line that is no valid command; `message` says what is wrong."""

    message: str


Command = Say | Kick | Leave | ShowInvite | Quit | Help | Mistake

_BARE: dict[str, Command] = {
    "/leave": Leave(),
    "/invite": ShowInvite(),
    "/quit": Quit(),
    "/help": Help(),
}


def parse_line(line: str) -> Command | None:
    """Return what `line` asks for, or None for a blank line.

    `/kick` takes the rest of the line as the AID (AIDs may hold spaces); the
    other commands take no argument.
    """
    if not line.strip():
        return None
    if line.startswith("//"):
        return Say(line[1:])
    if not line.startswith("/"):
        return Say(line)
    name, _, rest = line.strip().partition(" ")
    rest = rest.strip()
    if name == "/kick":
        return Kick(rest) if rest else Mistake("usage: /kick AID")
    command = _BARE.get(name)
    if command is None:
        return Mistake(f"unknown command {name}; {HELP}")
    if rest:
        return Mistake(f"{name} takes no argument")
    return command
