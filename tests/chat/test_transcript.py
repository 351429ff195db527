"""The chat's message log: placeholders replaced in place, each message once, reactions."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from roomd.chat import transcript
from roomd.chat.transcript import UNOPENED, WAITING, Transcript, clock
from roomd.client.secure_room import Message, ReactionMessage, Unreadable

ROOM = "r1"
T0 = 1_700_000_000_000


def message(seq: int, text: str = "", sender: str = "bob") -> Message:
    """Return message `seq` of `sender` (its id is `m<seq>`)."""
    return Message(ROOM, seq, f"m{seq}", sender, text or f"text {seq}", T0 + seq, 1)


def unreadable(seq: int, reason: str = "no key yet") -> Unreadable:
    """Return an `Unreadable` of message `seq`."""
    return Unreadable(ROOM, seq, "bob", 2, reason)


def reaction(
    seq: int, to: int, emoji: str = "🔥", sender: str = "carol", remove: bool = False
) -> ReactionMessage:
    """Return reaction `seq` of `sender` to message `to`."""
    return ReactionMessage(ROOM, seq, sender, f"m{to}", emoji, remove)


def texts(log: Transcript) -> list[str]:
    """Return the log's lines without their time column."""
    return [line.split(" ", 1)[1] for line in log.lines()]


def test_a_line_shows_time_sender_and_text() -> None:
    """A message line is `HH:MM sender: text`, a status line `HH:MM · text`."""
    log = Transcript()
    log.message(message(1, "hello"))
    log.status("bob joined", T0)
    assert log.lines() == [f"{clock(T0 + 1)} bob: hello", f"{clock(T0)} · bob joined"]


@pytest.mark.parametrize("reason, shown", [("no key yet", WAITING), ("cannot open", UNOPENED)])
def test_an_unreadable_message_is_a_placeholder(reason: str, shown: str) -> None:
    """A message without its key says it waits for the key; one that fails to open says so."""
    log = Transcript()
    log.unreadable(unreadable(1, reason), T0)
    assert texts(log) == [f"bob: {shown}"]


def test_the_placeholder_is_replaced_in_place() -> None:
    """When the key comes, the message takes its placeholder's line, before later lines."""
    log = Transcript()
    log.unreadable(unreadable(1), T0)
    log.message(message(2))
    log.message(message(1))
    assert texts(log) == ["bob: text 1", "bob: text 2"]


def test_a_placeholder_that_holds_a_reaction_goes_away() -> None:
    """A placeholder read as a reaction is no line: the reaction lands on its message."""
    log = Transcript()
    log.message(message(1))
    log.unreadable(unreadable(2), T0)
    log.reaction(reaction(2, to=1), T0)
    assert texts(log) == ["bob: text 1  🔥 carol"]


@pytest.mark.parametrize(
    "replay",
    [
        pytest.param(lambda log: log.message(message(1)), id="the same message"),
        pytest.param(lambda log: log.unreadable(unreadable(1), T0), id="as unreadable"),
        pytest.param(lambda log: log.reaction(reaction(2, to=1), T0), id="a reaction"),
    ],
)
def test_nothing_is_shown_twice(replay: Callable[[Transcript], None]) -> None:
    """What the log showed already, handed over again, changes nothing."""
    log = Transcript()
    log.message(message(1))
    log.reaction(reaction(2, to=1), T0)
    replay(log)
    assert texts(log) == ["bob: text 1  🔥 carol"]


def test_reactions_gather_on_their_message_and_can_be_taken_back() -> None:
    """Reactions show per emoji with who reacted; a removal takes one back."""
    log = Transcript()
    log.message(message(1))
    log.reaction(reaction(2, to=1, sender="carol"), T0)
    log.reaction(reaction(3, to=1, sender="dave"), T0)
    log.reaction(reaction(4, to=1, emoji="👍", sender="dave"), T0)
    assert texts(log) == ["bob: text 1  🔥 carol, dave  👍 dave"]
    log.reaction(reaction(5, to=1, sender="carol", remove=True), T0)
    log.reaction(reaction(6, to=1, emoji="👍", sender="dave", remove=True), T0)
    assert texts(log) == ["bob: text 1  🔥 dave"]


def test_a_reaction_to_a_message_not_shown_is_a_line() -> None:
    """A reaction whose message is not in the log gets a line of its own."""
    log = Transcript()
    log.reaction(reaction(7, to=3), T0)
    log.reaction(reaction(8, to=3, remove=True), T0)
    assert texts(log) == [
        "· carol reacted 🔥 (to a message not shown)",
        "· carol took back 🔥 (to a message not shown)",
    ]


def test_a_new_stream_numbers_messages_afresh() -> None:
    """After the room's stream epoch changes, seq 1 is a new message."""
    log = Transcript()
    log.stream("e1")
    log.message(message(1, "old"))
    log.stream("e1")
    log.message(message(1, "old"))
    log.stream("e2")
    log.message(message(1, "new"))
    assert texts(log) == ["bob: old", "bob: new"]


def test_the_log_keeps_the_newest_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `MAX_ENTRIES` the oldest lines go, and reactions to them become lines."""
    monkeypatch.setattr(transcript, "MAX_ENTRIES", 3)
    log = Transcript()
    for seq in range(1, 5):
        log.message(message(seq))
    log.reaction(reaction(5, to=1), T0)
    assert texts(log) == [
        "bob: text 3",
        "bob: text 4",
        "· carol reacted 🔥 (to a message not shown)",
    ]
