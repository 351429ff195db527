"""History rules of PROTOCOL.md section 8: recovery, paging inputs and stored wire forms."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.core.history import HistoryPolicy, StoredMessage, missed_count, recovered
from roomd.core.message import Position

R = "r1"
EPOCH = "Ep0chAbc"
ON = HistoryPolicy(size=1000, ttl_ms=0, recovery_limit=500)
OFF = HistoryPolicy(size=0, ttl_ms=0, recovery_limit=500)


def stored(seq: int, **changes: Any) -> StoredMessage:
    """Return stored message `seq` of room R (every optional field set unless changed)."""
    fields: dict[str, Any] = {
        "room_id": R,
        "seq": seq,
        "message_id": f"px{seq:x}",
        "sender": "alice",
        "ciphertext": b"\x00ct" + bytes([seq % 256]),
        "iv": b"iv",
        "client_msg_id": f"c{seq}",
        "ts": 1_000 + seq,
        "key_epoch": 2,
    }
    fields.update(changes)
    return StoredMessage(**fields)


def run(first: int, last: int) -> list[StoredMessage]:
    """Return the stored messages `first..last`, oldest first."""
    return [stored(seq) for seq in range(first, last + 1)]


# -- StoredMessage wire forms --------------------------------------------------


def test_stored_message_replays_as_the_new_message_it_was() -> None:
    """event() is the newMessage: roomId, seq, messageId, from, blobs, clientMsgId, ts, keyEpoch."""
    assert stored(7).event() == {
        "type": "newMessage",
        "roomId": R,
        "seq": 7,
        "messageId": "px7",
        "from": "alice",
        "ciphertext": b"\x00ct\x07",
        "iv": b"iv",
        "clientMsgId": "c7",
        "ts": 1_007,
        "keyEpoch": 2,
    }


def test_stored_message_without_optional_fields_omits_them() -> None:
    """A message sent without iv, clientMsgId and keyEpoch replays without those keys."""
    event = stored(3, iv=None, client_msg_id=None, key_epoch=None).event()
    assert set(event) == {"type", "roomId", "seq", "messageId", "from", "ciphertext", "ts"}


def test_stored_message_keeps_key_epoch_zero_and_an_empty_iv() -> None:
    """keyEpoch 0 and a zero-byte iv are values, not absences: both are replayed."""
    event = stored(1, iv=b"", key_epoch=0).event()
    assert event["keyEpoch"] == 0 and event["iv"] == b""


@pytest.mark.parametrize(
    "changes",
    [{}, {"iv": None}, {"client_msg_id": None}, {"key_epoch": None}, {"key_epoch": 0}],
    ids=["full", "no-iv", "no-client-id", "no-key-epoch", "key-epoch-0"],
)
def test_page_entry_is_the_new_message_without_type_and_room_id(changes: dict[str, Any]) -> None:
    """A history page entry carries every newMessage field but type and roomId."""
    message = stored(9, **changes)
    expected = message.event()
    del expected["type"], expected["roomId"]
    assert message.page_entry() == expected
    assert "type" not in message.page_entry() and "roomId" not in message.page_entry()


def test_page_entry_and_event_are_fresh_dicts_each_time() -> None:
    """Building a page entry never strips the fields of a later replay of the same message."""
    message = stored(4)
    entry = message.page_entry()
    entry["seq"] = 99
    assert message.event()["type"] == "newMessage" and message.event()["seq"] == 4
    assert message.page_entry()["seq"] == 4


# -- HistoryPolicy -------------------------------------------------------------


@pytest.mark.parametrize(("size", "on"), [(0, False), (1, True), (1000, True)])
def test_history_is_on_only_with_a_positive_size(size: int, on: bool) -> None:
    """history_size 0 turns history off; any positive size keeps it on."""
    assert HistoryPolicy(size=size, ttl_ms=0, recovery_limit=500).on is on


@pytest.mark.parametrize(
    ("ttl_ms", "now_ms", "oldest"),
    [(0, 10_000, 0), (0, 0, 0), (3_000, 10_000, 7_000), (86_400_000, 86_400_001, 1)],
)
def test_oldest_ts_is_now_minus_ttl_or_zero_without_an_age_limit(
    ttl_ms: int, now_ms: int, oldest: int
) -> None:
    """Messages younger than history_ttl are kept; ttl 0 keeps every age."""
    policy = HistoryPolicy(size=10, ttl_ms=ttl_ms, recovery_limit=5)
    assert policy.oldest_ts(now_ms) == oldest


# -- missed_count --------------------------------------------------------------


@pytest.mark.parametrize(
    ("since", "last_seq", "expected"),
    [
        (Position(EPOCH, 0), 0, 0),  # a new room, seen from its start
        (Position(EPOCH, 0), 7, 7),  # since.seq 0: everything
        (Position(EPOCH, 7), 7, 0),  # equal to lastSeq: up to date
        (Position(EPOCH, 3), 7, 4),
        (Position(EPOCH, 8), 7, None),  # beyond lastSeq
        (Position(EPOCH, 10**9), 7, None),
        (Position("other", 3), 7, None),  # another epoch
        (Position("other", 7), 7, None),
        (Position(EPOCH.lower(), 7), 7, None),  # epochs compare exactly
    ],
)
def test_missed_count_edges(since: Position, last_seq: int, expected: int | None) -> None:
    """missed_count: lastSeq - since.seq in the same epoch, None for another epoch or beyond."""
    assert missed_count(ON, since, EPOCH, last_seq) == expected


@pytest.mark.parametrize("limit", [0, 1, 5, 500])
def test_missed_count_allows_exactly_recovery_limit_and_not_one_more(limit: int) -> None:
    """recovery_limit missed messages are recovered; one more is not recoverable at all."""
    policy = HistoryPolicy(size=1000, ttl_ms=0, recovery_limit=limit)
    last = limit + 10
    if limit:
        assert missed_count(policy, Position(EPOCH, last - limit), EPOCH, last) == limit
    assert missed_count(policy, Position(EPOCH, last - limit - 1), EPOCH, last) is None


@pytest.mark.parametrize("seq", [0, 3, 6])
def test_missed_count_with_history_off_recovers_only_an_up_to_date_client(seq: int) -> None:
    """With history off nothing can be replayed; only since == current position recovers."""
    assert missed_count(OFF, Position(EPOCH, seq), EPOCH, 6) == (0 if seq == 6 else None)


# -- recovered -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("since_seq", "missed", "messages", "expected"),
    [
        (4, 3, run(5, 7), True),  # exactly the missed ones
        (0, 3, run(1, 3), True),  # from the stream's start
        (4, 0, [], True),  # nothing missed, nothing needed
        (4, 3, run(6, 7), False),  # trimmed: history starts after since.seq + 1
        (4, 3, run(6, 8), False),  # trimmed, as many messages but shifted
        (4, 3, [], False),  # trimmed away entirely
        (4, 3, run(5, 6), False),  # too few (the newest aged out or missing)
        (4, 3, [stored(5), stored(7), stored(8)], False),  # a gap
        (4, 3, [stored(5), stored(7), stored(6)], False),  # out of order
        (4, 3, [stored(5), stored(5), stored(6)], False),  # a repeat
        (4, 2, run(5, 7), False),  # more than missed
    ],
    ids=[
        "exact",
        "from-zero",
        "none-missed",
        "trimmed-short",
        "trimmed-shifted",
        "all-trimmed",
        "too-few",
        "gap",
        "out-of-order",
        "repeat",
        "too-many",
    ],
)
def test_recovered_needs_exactly_the_missed_messages_in_order(
    since_seq: int, missed: int, messages: list[StoredMessage], expected: bool
) -> None:
    """recovered is True only for seq since+1..since+missed, each once, oldest first."""
    assert recovered(Position(EPOCH, since_seq), missed, messages) is expected


# -- against a model -------------------------------------------------------------


def store_after(ring: list[StoredMessage], after: int, limit: int) -> list[StoredMessage]:
    """Return what a store returns for `messages_after`: the oldest `limit` with seq > after."""
    return [message for message in ring if message.seq > after][:limit]


@given(
    last_seq=st.integers(0, 60),
    size=st.integers(0, 40),
    limit=st.integers(0, 40),
    aged=st.integers(0, 60),
    since_seq=st.integers(0, 70),
    same_epoch=st.booleans(),
)
def test_recovery_decision_matches_a_simple_model(
    last_seq: int, size: int, limit: int, aged: int, since_seq: int, same_epoch: bool
) -> None:
    """For any since and history, recovery succeeds iff the model says every missed one is kept."""
    policy = HistoryPolicy(size=size, ttl_ms=0, recovery_limit=limit)
    # History keeps the newest `size` messages, of which the oldest `aged` aged out.
    first_kept = max(1, last_seq - size + 1) + aged if size else last_seq + 1
    ring = run(first_kept, last_seq)
    since = Position(EPOCH if same_epoch else "another", since_seq)

    missed = missed_count(policy, since, EPOCH, last_seq)
    if missed is None:
        outcome = False
    else:
        outcome = recovered(since, missed, store_after(ring, since.seq, missed) if missed else [])

    behind = last_seq - since_seq
    model = (
        same_epoch
        and behind >= 0
        and (behind == 0 or (size > 0 and behind <= limit and first_kept <= since_seq + 1))
    )
    assert outcome is model
    if model:
        assert missed == behind
