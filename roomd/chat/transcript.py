"""The message log of one room as `roomd chat` shows it: pure, events in and lines out.

Theory of operation. The SDK hands over a room's messages in `seq` order,
each once, except that a message whose key was missing comes first as an
`Unreadable` and again, readable, once the key arrives. So the log keeps the
newest `seq` it showed (per stream: a new stream epoch, `joinSuccess.epoch`,
numbers its messages from 1 again) and the placeholders still waiting, keyed by
`(stream, seq)`, which lets it

- replace an `Unreadable` in place when the same `seq` arrives readable, or
  drop it when it turns out to be a reaction;
- show a message once, whatever is handed over again;
- put a reaction on the line of the message it names, or on a line of its own
  when that message is not in the log.

Status lines (joins, rotations, reconnects) have no key. The log keeps the
newest `MAX_ENTRIES` lines. Times come in as Unix milliseconds; nothing here
reads a clock. What members wrote reaches the terminal through `printable`
only: a control character in a message is shown, never obeyed.
"""

from __future__ import annotations

import time

import attrs

from roomd.chat.printable import printable
from roomd.client.secure_room import Message, ReactionMessage, Unreadable

MAX_ENTRIES = 1000
WAITING = "[waiting for the room key]"
UNOPENED = "[this message cannot be decrypted]"

Key = tuple[int, int]


def clock(at_ms: int) -> str:
    """Return `at_ms` (Unix milliseconds) as local `HH:MM`, the time column of the log."""
    return time.strftime("%H:%M", time.localtime(at_ms / 1000))


@attrs.define(eq=False)
class Entry:
    """One line of the log: a message of `sender`, or a status line when `sender` is None."""

    at_ms: int
    sender: str | None
    text: str
    key: Key | None = None
    message_id: str | None = None
    placeholder: bool = False
    # emoji -> the AIDs that reacted with it, in the order they did
    reactions: dict[str, list[str]] = attrs.field(factory=dict)

    @property
    def is_status(self) -> bool:
        """Whether this is a status line rather than a message."""
        return self.sender is None

    def render(self) -> str:
        """Return the line as shown: time, sender and text, then the reactions."""
        if self.sender is None:
            return f"{clock(self.at_ms)} · {printable(self.text)}"
        reactions = "".join(
            f"  {emoji} {', '.join(senders)}" for emoji, senders in self.reactions.items()
        )
        return f"{clock(self.at_ms)} {printable(self.sender)}: {printable(self.text + reactions)}"


@attrs.define
class Transcript:
    """The lines of one room's log, oldest first. Feed it the room's events in order."""

    entries: list[Entry] = attrs.field(factory=list)
    _placeholders: dict[Key, Entry] = attrs.field(factory=dict)
    _by_message_id: dict[str, Entry] = attrs.field(factory=dict)
    _stream_epoch: str | None = None
    _stream: int = 0
    _newest: int = 0

    def stream(self, epoch: str) -> None:
        """Note the room's stream epoch (each `Joined`): a new one numbers messages afresh."""
        if self._stream_epoch is not None and epoch != self._stream_epoch:
            self._stream += 1
            self._newest = 0
        self._stream_epoch = epoch

    def message(self, message: Message) -> None:
        """Show `message`: in place of its `Unreadable`, not at all when already shown."""
        placeholder = self._placeholders.pop((self._stream, message.seq), None)
        if placeholder is not None:
            placeholder.at_ms, placeholder.text = message.sent_at, message.text
            placeholder.placeholder, placeholder.message_id = False, message.message_id
            self._by_message_id[message.message_id] = placeholder
            return
        if not self._is_new(message.seq):
            return
        key = (self._stream, message.seq)
        entry = Entry(message.sent_at, message.sender, message.text, key, message.message_id)
        self._by_message_id[message.message_id] = entry
        self._append(entry)

    def unreadable(self, message: Unreadable, now_ms: int) -> None:
        """Show a placeholder for `message` until it arrives readable."""
        if not self._is_new(message.seq):
            return
        key = (self._stream, message.seq)
        text = WAITING if message.reason == "no key yet" else UNOPENED
        entry = Entry(now_ms, message.sender, text, key, placeholder=True)
        self._placeholders[key] = entry
        self._append(entry)

    def reaction(self, reaction: ReactionMessage, now_ms: int) -> None:
        """Put `reaction` on the line of its message, or on a line of its own."""
        placeholder = self._placeholders.pop((self._stream, reaction.seq), None)
        if placeholder is not None:
            # The placeholder turned out to hold this reaction: it is no line of its own.
            self.entries.remove(placeholder)
        elif not self._is_new(reaction.seq):
            return
        target = self._by_message_id.get(reaction.message_id)
        if target is None:
            verb = "took back" if reaction.remove else "reacted"
            text = f"{reaction.sender} {verb} {reaction.emoji} (to a message not shown)"
            self._append(Entry(now_ms, None, text))
            return
        senders = target.reactions.setdefault(reaction.emoji, [])
        if reaction.remove and reaction.sender in senders:
            senders.remove(reaction.sender)
        elif not reaction.remove and reaction.sender not in senders:
            senders.append(reaction.sender)
        if not senders:
            del target.reactions[reaction.emoji]

    def status(self, text: str, now_ms: int) -> None:
        """Add a status line (a join, a rotation, a reconnect...)."""
        self._append(Entry(now_ms, None, text))

    def lines(self) -> list[str]:
        """Return every line as shown, oldest first."""
        return [entry.render() for entry in self.entries]

    def _is_new(self, seq: int) -> bool:
        if seq <= self._newest:
            return False
        self._newest = seq
        return True

    def _append(self, entry: Entry) -> None:
        self.entries.append(entry)
        while len(self.entries) > MAX_ENTRIES:
            oldest = self.entries.pop(0)
            if oldest.key is not None:
                self._placeholders.pop(oldest.key, None)
            if oldest.message_id is not None:
                self._by_message_id.pop(oldest.message_id, None)
