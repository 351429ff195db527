"""A room's stream and its history: stored messages, recovery and paging rules.

PROTOCOL.md section 8. Every `newMessage` a room sends is a `StoredMessage`:
the room hands it to the shell in an `Append` effect, and the shell stores it
before it carries out any later effect of the room, so history holds every
message any member ever received (until trimmed). The rules here are pure:
whether a join's `since` can be recovered, which messages a recovery or a
`getHistory` page needs, and how a stored message looks on the wire.
"""

from __future__ import annotations

import attrs

from roomd.core import event as ev
from roomd.core.event import Event
from roomd.core.message import GetHistory, Position


@attrs.frozen(slots=True)
class StoredMessage:
    """One message of a room's stream, exactly as its `newMessage` carried it."""

    room_id: str
    seq: int
    message_id: str
    sender: str
    ciphertext: bytes
    iv: bytes | None
    client_msg_id: str | None
    ts: int
    key_epoch: int | None

    def event(self) -> Event:
        """Return the `newMessage` this message was (and is, when replayed)."""
        return ev.new_message(
            self.room_id,
            self.seq,
            self.message_id,
            self.sender,
            self.ciphertext,
            self.iv,
            self.client_msg_id,
            self.ts,
            self.key_epoch,
        )

    def page_entry(self) -> Event:
        """Return this message as an entry of a `history` page: `newMessage` but type and roomId."""
        entry = self.event()
        del entry["type"], entry["roomId"]
        return entry


@attrs.frozen
class HistoryPolicy:
    """What a room's history keeps and how far a join may recover."""

    # Newest messages kept per room; 0 turns history off.
    size: int
    # Age limit in milliseconds; 0 means none.
    ttl_ms: int
    # Most messages a join replays.
    recovery_limit: int

    @property
    def on(self) -> bool:
        """True while history is kept."""
        return self.size > 0

    def oldest_ts(self, now_ms: int) -> int:
        """Return the `ts` below which a message has aged out of history at `now_ms`."""
        return now_ms - self.ttl_ms if self.ttl_ms else 0


def missed_count(policy: HistoryPolicy, since: Position, epoch: str, last_seq: int) -> int | None:
    """Return how many messages a join from `since` must replay, or None if it cannot recover.

    None: another epoch, a position beyond `last_seq`, history off, or more than
    `recovery_limit` missed. 0: the client is up to date. Whether history still
    holds them all is `recovered`'s to check, on what the store returned.
    """
    if since.epoch != epoch or since.seq > last_seq:
        return None
    missed = last_seq - since.seq
    if missed == 0:
        return 0
    if not policy.on or missed > policy.recovery_limit:
        return None
    return missed


def recovered(since: Position, missed: int, messages: list[StoredMessage]) -> bool:
    """Return True when `messages` are exactly the `missed` ones after `since`, in order."""
    return len(messages) == missed and all(
        message.seq == since.seq + offset for offset, message in enumerate(messages, 1)
    )


def recovery(
    policy: HistoryPolicy,
    since: Position | None,
    epoch: str,
    last_seq: int,
    stored: list[StoredMessage],
) -> tuple[bool | None, list[StoredMessage]]:
    """Return a join's `recovered` and the messages it replays.

    `stored` is what history returned after `since` (up to `missed_count`).
    `recovered` is None without `since`, True when the client is up to date
    or every missed message is there (then they are the replay), else False.
    """
    if since is None:
        return None, []
    missed = missed_count(policy, since, epoch, last_seq)
    if missed is None or missed == 0:
        return missed == 0, []
    if recovered(since, missed, stored):
        return True, stored
    return False, []


def history_page(room_id: str, epoch: str, msg: GetHistory, newest: list[StoredMessage]) -> Event:
    """Return the `history` reply to `msg` from the newest `limit + 1` messages before `before`."""
    more = len(newest) > msg.limit
    page = newest[1:] if more else newest
    entries = [message.page_entry() for message in page]
    return ev.history(room_id, epoch, entries, more, msg.id)
