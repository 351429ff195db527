"""Receive-side accounting: is every room's stream contiguous, complete and unique?

Theory of operation. Each member keeps one `RoomView` per room it is in, opened
at its `joinSuccess` with the room's `lastSeq`. From then on PROTOCOL.md §6
promises every `newMessage` of the room, in order, so the next `seq` must be
exactly the previous one plus 1. A view classifies each arrival:

- `seq == next`: in order.
- `seq > next`: a gap; the skipped seqs become *missing*.
- `seq < next` and missing: it arrived late, so it is *reordered* (a swap of two
  messages counts as one reordered message and nothing lost).
- `seq < next` otherwise: a *duplicate*.

When the run ends, `settle(final_seq)` turns what is still missing, plus any tail
never received (`final_seq` is the room's last seq, known from the senders), into
*lost*. Independently, each message's ciphertext names its sender and the
sender's own sequence number; per sender those must rise by exactly 1
(`sender_breaks` counts violations) and `missing_from` compares the count
received from each sender with the count it sent.

Everything here is synchronous and takes plain values, so it is tested without
sockets (`tests/test_bench_accounting.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import attrs


@attrs.define(eq=False)
class RoomView:
    """One member's view of one room's `newMessage` stream, from its `joinSuccess` on."""

    next_seq: int
    missing: set[int] = attrs.field(factory=set)
    last_from: dict[int, int] = attrs.field(factory=dict)
    count_from: dict[int, int] = attrs.field(factory=dict)
    received: int = 0
    duplicated: int = 0
    reordered: int = 0
    sender_breaks: int = 0
    lost: int = 0
    settled: bool = False

    @classmethod
    def after_join(cls, last_seq: int) -> RoomView:
        """Return the view of a member whose `joinSuccess` said `lastSeq` = `last_seq`."""
        return cls(next_seq=last_seq + 1)

    def receive(self, seq: int, sender: int, sender_seq: int) -> None:
        """Account one `newMessage` with room `seq`, from `sender`'s `sender_seq`-th message."""
        self.received += 1
        expected = self.next_seq
        if seq == expected:
            self.next_seq = seq + 1
        elif seq > expected:
            self.missing.update(range(expected, seq))
            self.next_seq = seq + 1
        elif seq in self.missing:
            self.missing.discard(seq)
            self.reordered += 1
        else:
            self.duplicated += 1
            return
        last = self.last_from.get(sender)
        if last is not None and sender_seq != last + 1:
            self.sender_breaks += 1
        if last is None or sender_seq > last:
            self.last_from[sender] = sender_seq
        self.count_from[sender] = self.count_from.get(sender, 0) + 1

    @property
    def high_seq(self) -> int:
        """Return the highest room seq received (or the join's `lastSeq`)."""
        return self.next_seq - 1

    def settle(self, final_seq: int | None = None) -> int:
        """Count as lost what is still missing, and the tail up to `final_seq`; return it.

        `final_seq` is the room's last seq while this member was present; None
        (e.g. the member left first, so the tail is not its business) counts gaps only.
        Settling twice changes nothing.
        """
        if not self.settled:
            tail = max(0, final_seq - self.high_seq) if final_seq is not None else 0
            self.lost = len(self.missing) + tail
            self.settled = True
        return self.lost

    def missing_from(self, sent: Mapping[int, int]) -> int:
        """Return how many of the messages each sender sent (`sent[sender]`) never arrived."""
        return sum(max(0, n - self.count_from.get(s, 0)) for s, n in sent.items())


@attrs.define
class Totals:
    """What the views of one run add up to."""

    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    sender_breaks: int = 0
    unsettled: int = 0

    @classmethod
    def of(cls, views: Iterable[RoomView]) -> Totals:
        """Return the sums over `views`; views not yet settled count their gaps as lost."""
        totals = cls()
        for view in views:
            totals.received += view.received
            totals.duplicated += view.duplicated
            totals.reordered += view.reordered
            totals.sender_breaks += view.sender_breaks
            if view.settled:
                totals.lost += view.lost
            else:
                totals.unsettled += 1
                totals.lost += len(view.missing)
        return totals

    def add(self, other: Totals) -> None:
        """Add `other` into these totals (merging workers)."""
        for field in attrs.fields(Totals):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
