"""The room's 1.1 rules (PROTOCOL.md section 8): key epochs, bans, signal batches,
recovery on join, history pages, Append effects and exact seqs.

A `Store` here stands in for the shell's history: it keeps what `Append` effects
hand it and answers `messages_after` / `messages_before` the way the real stores
do, so the room is driven exactly as `roomd.daemon.room_loop` drives it.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.history import HistoryPolicy, StoredMessage
from roomd.core.room import Append, Attached, Detached, Effect, Room, Send
from roomd.errors import ErrorCode, ProtocolError

R = "r1"
EPOCH = "Ep0chAbc"
T0 = 1_000
ON = HistoryPolicy(size=1000, ttl_ms=0, recovery_limit=500)
OFF = HistoryPolicy(size=0, ttl_ms=0, recovery_limit=500)


@attrs.define
class Store:
    """A room's history as the shell keeps it: the newest `size` appended messages."""

    size: int = 1000
    messages: list[StoredMessage] = attrs.field(factory=list)

    def keep(self, effects: list[Effect]) -> list[Effect]:
        """Store every Append of `effects` (each must come right before its own newMessage)."""
        for i, effect in enumerate(effects):
            if isinstance(effect, Append):
                following = effects[i + 1]
                assert isinstance(following, Send)
                assert following.event == effect.message.event()
                self.messages.append(effect.message)
        if self.size:
            del self.messages[: -self.size]
        return effects

    def after(self, after: int, limit: int) -> list[StoredMessage]:
        """Return the oldest `limit` messages with seq > after, oldest first."""
        return [message for message in self.messages if message.seq > after][:limit]

    def before(self, before: int, limit: int) -> list[StoredMessage]:
        """Return the newest `limit` messages with seq < before, oldest first."""
        return [message for message in self.messages if message.seq < before][-limit:]


def new_room(
    host: str | None = "alice", *, history: HistoryPolicy = ON, max_members: int = 8
) -> Room:
    """Return an empty room of stream epoch EPOCH, created by `host` at T0."""
    return Room.new(
        R,
        host=host,
        encrypted_room_key=b"K0",
        now_ms=T0,
        max_members=max_members,
        message_id_prefix="px",
        epoch=EPOCH,
        history=history,
    )


def populated(*joins: tuple[str, str], **kwargs: Any) -> Room:
    """Return a room the (conn, aid) pairs joined in order, the first being its creator."""
    room = new_room(joins[0][1], **kwargs)
    for conn, aid in joins:
        room.join(conn, aid, None, T0)
    return room


def join(
    room: Room,
    store: Store,
    conn: str,
    aid: str,
    since: m.Position | None = None,
    request_id: m.RequestId | None = None,
) -> list[Effect]:
    """Join as the shell does: read the `missed(since)` messages after since, then join."""
    missed = room.missed(since)
    stored = store.after(since.seq, missed) if since is not None and missed else []
    return room.join(conn, aid, None, T0, request_id, since, stored)


def say(room: Room, store: Store, conn: str, text: bytes = b"ct", **fields: Any) -> list[Effect]:
    """Send one `message` from `conn` and store what it appends."""
    msg = m.SendMessage(room_id=R, ciphertext=text, **fields)
    return store.keep(room.handle(conn, msg, T0 + room.seq + 1))


def page(room: Room, store: Store, conn: str, msg: m.GetHistory) -> dict[str, Any]:
    """Answer `getHistory` as the shell does: limit + 1 newest before `before`, then the page."""
    before, limit = room.history_query(conn, msg)
    newest = store.before(before, limit + 1) if room.history.on else []
    return room.history_page(msg, newest)


def state(room: Room) -> tuple[object, ...]:
    """Return every observable piece of room state, for before/after comparisons."""
    members = [(aid, mem.public_key, tuple(mem.conns)) for aid, mem in room.members.items()]
    return (
        room.host,
        room.encrypted_room_key,
        room.seq,
        room.seq_reserved,
        room.key_epoch,
        room.bans,
        room.epoch,
        room.empty_since,
        room.deleted,
        members,
        {c: room.aid_of(c) for c in room.connections()},
        room.durable_state(),
    )


def refused(room: Room, code: ErrorCode, call: Any) -> ProtocolError:
    """Assert that `call()` raises `code` and leaves the room exactly as it was."""
    before = state(room)
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code is code, info.value.message
    assert state(room) == before
    return info.value


def sent(effects: list[Effect]) -> list[tuple[tuple[object, ...], dict[str, Any]]]:
    """Return the deliveries among `effects` as (recipients, event) pairs, in order."""
    return [(tuple(e.to), e.event) for e in effects if isinstance(e, Send)]


def types(effects: list[Effect]) -> list[object]:
    """Return the effects with each Send reduced to its event type (and Append to its seq)."""
    return [
        e.event["type"]
        if isinstance(e, Send)
        else ("append", e.message.seq)
        if isinstance(e, Append)
        else e
        for e in effects
    ]


def joined(effects: list[Effect]) -> dict[str, Any]:
    """Return the joinSuccess among `effects`."""
    return next(event for _, event in sent(effects) if event["type"] == "joinSuccess")


def seqs_to(conn: str, effects: list[Effect]) -> list[int]:
    """Return the seqs of the newMessages `effects` deliver to `conn`, in order."""
    return [
        e.event["seq"]
        for e in effects
        if isinstance(e, Send) and conn in e.to and e.event["type"] == "newMessage"
    ]


def key(epoch: int | None = None, blob: bytes = b"K1") -> m.UpdateRoomKey:
    """Return an updateRoomKey for room R."""
    return m.UpdateRoomKey(room_id=R, encrypted_room_key=blob, key_epoch=epoch)


def restore(room: Room, history: HistoryPolicy) -> Room:
    """Return the room as the store would bring it back after a restart."""
    return Room.from_record(
        room.to_record(),
        empty_since=T0 + 500,
        max_members=room.max_members,
        message_id_prefix="py",
        history=history,
    )


# -- key epochs -------------------------------------------------------------------


def test_a_new_room_is_at_key_epoch_zero() -> None:
    """joinSuccess of a new room carries keyEpoch 0 and the room's stream epoch."""
    room = new_room()
    [(_, success)] = sent(room.join("a1", "alice", None, T0))
    assert success["keyEpoch"] == 0 and success["epoch"] == EPOCH and success["lastSeq"] == 0


def test_update_without_key_epoch_opens_the_next_one() -> None:
    """A v1 updateRoomKey (no keyEpoch) means keyEpoch + 1, every time."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    for expected in (1, 2, 3):
        [(to, event)] = sent(room.handle("a1", key(None, b"K%d" % expected), T0))
        assert to == ("a1", "b1")
        assert event == {
            "type": "roomKeyUpdated",
            "roomId": R,
            "encryptedRoomKey": b"K%d" % expected,
            "by": "alice",
            "keyEpoch": expected,
        }
    success = sent(room.join("c1", "carol", None, T0))[-1][1]
    assert success["keyEpoch"] == 3 and success["encryptedRoomKey"] == b"K3"


def test_update_naming_the_next_epoch_is_applied() -> None:
    """updateRoomKey with keyEpoch = current + 1 replaces the key and opens that epoch."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    room.handle("a1", key(1), T0)
    [(_, event)] = sent(room.handle("a1", key(2, b"K2"), T0))
    assert event["keyEpoch"] == 2 and room.key_epoch == 2 and room.encrypted_room_key == b"K2"


@pytest.mark.parametrize(
    ("current", "named"),
    [(0, 0), (2, 2), (2, 1), (2, 0), (0, 2), (2, 4), (2, 10**6)],
    ids=["current-0", "current", "previous", "first", "skip-1", "skip", "far"],
)
def test_update_naming_another_epoch_is_conflict_and_changes_nothing(
    current: int, named: int
) -> None:
    """An update for the current, a past or a skipped epoch: conflict with the current keyEpoch."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    for _ in range(current):
        room.handle("a1", key(), T0)
    exc = refused(room, ErrorCode.CONFLICT, lambda: room.handle("a1", key(named, b"X"), T0))
    assert exc.key_epoch == current
    assert room.key_epoch == current and room.encrypted_room_key != b"X"


def test_of_two_racing_updates_for_the_same_epoch_the_first_wins() -> None:
    """Two updates for epoch 1: the first applies; the second gets conflict (keyEpoch 1)."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("a2", "alice"))
    [(_, event)] = sent(room.handle("a1", key(1, b"first"), T0))
    assert event["encryptedRoomKey"] == b"first"
    exc = refused(room, ErrorCode.CONFLICT, lambda: room.handle("a2", key(1, b"second"), T0))
    assert exc.key_epoch == 1
    assert room.encrypted_room_key == b"first" and room.key_epoch == 1


def test_a_v1_update_racing_a_v11_one_opens_the_epoch_after_it() -> None:
    """An update without keyEpoch after one that opened epoch 1 opens epoch 2 (never conflicts)."""
    room = populated(("a1", "alice"), ("a2", "alice"))
    room.handle("a1", key(1, b"v11"), T0)
    [(_, event)] = sent(room.handle("a2", key(None, b"v1"), T0))
    assert event["keyEpoch"] == 2 and room.encrypted_room_key == b"v1"


def test_conflict_on_the_wire_carries_the_current_key_epoch() -> None:
    """The error for a conflict has code conflict, the room's keyEpoch, roomId and the id."""
    room = populated(("a1", "alice"))
    room.handle("a1", key(), T0)
    exc = refused(room, ErrorCode.CONFLICT, lambda: room.handle("a1", key(5), T0))
    event = ev.error(exc, 11, R)
    assert event == {
        "type": "error",
        "code": "conflict",
        "message": exc.message,
        "keyEpoch": 1,
        "roomId": R,
        "id": 11,
    }


def test_other_refusals_carry_no_key_epoch() -> None:
    """Only conflict errors carry keyEpoch: a forbidden update has none."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    exc = refused(room, ErrorCode.FORBIDDEN, lambda: room.handle("b1", key(7), T0))
    assert "keyEpoch" not in ev.error(exc, None, R)


@pytest.mark.parametrize("epoch", [0, 1, None])
def test_a_message_with_the_current_key_epoch_is_relayed_and_kept(epoch: int | None) -> None:
    """message.keyEpoch equal to the room's is relayed in newMessage and kept in history."""
    room, store = populated(("a1", "alice"), ("b1", "bob")), Store()
    if epoch:
        room.handle("a1", key(epoch), T0)
    effects = say(room, store, "b1", key_epoch=epoch)
    [(_, event)] = sent(effects)
    assert event.get("keyEpoch") == epoch and ("keyEpoch" in event) is (epoch is not None)
    assert store.messages[-1].key_epoch == epoch


@pytest.mark.parametrize(("current", "named"), [(1, 0), (0, 1), (2, 0), (2, 3)])
def test_a_message_with_another_key_epoch_is_conflict_and_takes_no_seq(
    current: int, named: int
) -> None:
    """A message for a stale or future key is not relayed, gets conflict, and takes no seq."""
    room, store = populated(("a1", "alice"), ("b1", "bob")), Store()
    say(room, store, "a1")
    for _ in range(current):
        room.handle("a1", key(), T0)
    msg = m.SendMessage(room_id=R, ciphertext=b"stale", key_epoch=named)
    exc = refused(room, ErrorCode.CONFLICT, lambda: room.handle("b1", msg, T0))
    assert exc.key_epoch == current
    [(_, event)] = sent(say(room, store, "b1", key_epoch=current))
    assert event["seq"] == 2 and [s.seq for s in store.messages] == [1, 2]


def test_a_v1_message_is_accepted_after_a_rotation() -> None:
    """A message without keyEpoch is accepted whatever the room's key epoch."""
    room, store = populated(("a1", "alice"), ("b1", "bob")), Store()
    room.handle("a1", key(), T0)
    room.handle("a1", key(), T0)
    [(_, event)] = sent(say(room, store, "b1"))
    assert event["seq"] == 1 and "keyEpoch" not in event


@pytest.mark.parametrize(
    ("conn", "msg", "code"),
    [
        ("stranger", key(9), ErrorCode.NOT_MEMBER),
        ("b1", key(9), ErrorCode.FORBIDDEN),
        ("a1", key(9), ErrorCode.CONFLICT),
        ("stranger", key(1), ErrorCode.NOT_MEMBER),
        ("b1", key(1), ErrorCode.FORBIDDEN),
        ("stranger", m.SendMessage(room_id=R, ciphertext=b"c", key_epoch=9), ErrorCode.NOT_MEMBER),
        ("b1", m.SendMessage(room_id=R, ciphertext=b"c", key_epoch=9), ErrorCode.CONFLICT),
    ],
    ids=[
        "update-stranger",
        "update-member",
        "update-host",
        "good-update-stranger",
        "good-update-member",
        "message-stranger",
        "message-member",
    ],
)
def test_checks_run_member_then_host_then_epoch(
    conn: str, msg: m.RoomMessage, code: ErrorCode
) -> None:
    """A bad keyEpoch from a non-member is notMember, from a non-host forbidden, else conflict."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    refused(room, code, lambda: room.handle(conn, msg, T0))


def test_the_key_epoch_is_durable_and_survives_a_restart() -> None:
    """A rotation changes the durable state; a restored room keeps its key epoch and key."""
    room = populated(("a1", "alice"))
    saved = room.durable_state()
    room.handle("a1", key(1, b"K1"), T0)
    assert room.durable_state() != saved and room.to_record().key_epoch == 1
    back = restore(room, ON)
    assert back.key_epoch == 1 and back.encrypted_room_key == b"K1"
    [(_, success)] = sent(back.join("a1", "alice", None, T0))
    assert success["keyEpoch"] == 1
    refused(back, ErrorCode.CONFLICT, lambda: back.handle("a1", key(1), T0))


# -- bans --------------------------------------------------------------------------


def test_kick_with_ban_kicks_like_a_kick_and_bans() -> None:
    """kick ban: true of a present AID kicks it exactly like kick, then refuses its joins."""
    plain = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    banning = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    expected = plain.handle("a1", m.Kick(room_id=R, aid="bob"), T0)
    effects = banning.handle("a1", m.Kick(room_id=R, aid="bob", ban=True), T0)
    assert effects == expected
    assert types(effects) == ["leftChatroom", Detached("b1"), Detached("b2"), "userLeft"]
    assert banning.bans == {"bob"} and plain.bans == frozenset()
    for conn in ("b1", "b3"):
        exc = refused(banning, ErrorCode.FORBIDDEN, lambda c=conn: banning.join(c, "bob", None, T0))
        assert "banned" in exc.message
    assert Attached("b1") in plain.join("b1", "bob", None, T0)


def test_a_banned_aid_is_refused_even_with_a_recoverable_since() -> None:
    """A banned AID's join with since is forbidden: nothing is replayed, nothing changes."""
    room, store = populated(("a1", "alice"), ("b1", "bob")), Store()
    say(room, store, "a1")
    room.handle("a1", m.Kick(room_id=R, aid="bob", ban=True), T0)
    since = m.Position(EPOCH, 0)
    refused(room, ErrorCode.FORBIDDEN, lambda: join(room, store, "b2", "bob", since))


def test_a_banned_previous_host_is_forbidden() -> None:
    """A host that handed over and was then banned by the new host cannot come back."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    room.handle("a1", m.TransferHost(room_id=R, to="bob"), T0)
    room.handle("b1", m.Kick(room_id=R, aid="alice", ban=True), T0)
    refused(room, ErrorCode.FORBIDDEN, lambda: room.join("a2", "alice", None, T0))


def test_a_banned_last_host_of_an_empty_room_is_forbidden_and_another_aid_takes_over() -> None:
    """Banned by the server API while alone, the host stays recorded but may not rejoin."""
    room = populated(("a1", "alice"))
    effects = room.kick("alice", T0 + 1, ban=True)
    assert types(effects) == ["leftChatroom", Detached("a1")]
    assert room.is_empty and room.host == "alice" and room.bans == {"alice"}
    refused(room, ErrorCode.FORBIDDEN, lambda: room.join("a2", "alice", None, T0 + 2))
    assert types(room.join("b1", "bob", None, T0 + 3)) == [
        Attached("b1"),
        "joinSuccess",
        "hostUpdated",
    ]
    assert room.host == "bob"


def test_the_server_api_bans_an_absent_aid_without_telling_anyone() -> None:
    """Room.kick(ban=True) of an AID not in the room bans it and sends nothing."""
    room = populated(("a1", "alice"))
    assert room.kick("dave", T0, ban=True) == []
    assert room.bans == {"dave"}
    refused(room, ErrorCode.FORBIDDEN, lambda: room.join("d1", "dave", None, T0))


def test_a_client_kick_with_ban_of_an_absent_aid_is_not_found_and_bans_nothing() -> None:
    """kick {ban: true} naming an AID not in the room is notFound, like any kick (no ban)."""
    room = populated(("a1", "alice"))
    msg = m.Kick(room_id=R, aid="dave", ban=True)
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", msg, T0))
    assert Attached("d1") in room.join("d1", "dave", None, T0)


def test_the_host_cannot_kick_and_ban_itself() -> None:
    """kick {aid: self, ban: true} is a badRequest and bans nobody."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.Kick(room_id=R, aid="alice", ban=True)
    refused(room, ErrorCode.BAD_REQUEST, lambda: room.handle("a1", msg, T0))


def test_a_kick_without_ban_lets_the_aid_come_back() -> None:
    """A plain kick bans nothing: the kicked AID may join again at once."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    room.handle("a1", m.Kick(room_id=R, aid="bob"), T0)
    assert room.bans == frozenset()
    assert types(room.join("b2", "bob", None, T0))[:3] == [
        "userJoined",
        Attached("b2"),
        "joinSuccess",
    ]


def test_bans_are_durable_and_survive_a_restart() -> None:
    """A ban changes the durable state and the record; a restored room still refuses the AID."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    saved = room.durable_state()
    room.handle("a1", m.Kick(room_id=R, aid="bob", ban=True), T0)
    assert room.durable_state() != saved
    assert room.to_record().bans == {"bob"}
    back = restore(room, ON)
    assert back.bans == {"bob"}
    back.join("a1", "alice", None, T0)
    refused(back, ErrorCode.FORBIDDEN, lambda: back.join("b1", "bob", None, T0))


def test_unban_answers_the_host_and_lets_the_aid_back() -> None:
    """unban: `unbanned {roomId, aid}` (with id) to the sender only; the AID may join again."""
    room = populated(("a1", "alice"), ("c1", "carol"))
    room.kick("bob", T0, ban=True)
    saved = room.durable_state()
    effects = room.handle("a1", m.Unban(room_id=R, aid="bob", id="u1"), T0)
    assert effects == [Send(("a1",), {"type": "unbanned", "roomId": R, "aid": "bob", "id": "u1"})]
    assert room.bans == frozenset() and room.durable_state() != saved
    assert room.to_record().bans == frozenset()
    assert Attached("b1") in room.join("b1", "bob", None, T0)


@pytest.mark.parametrize("aid", ["bob", "carol", "alice"], ids=["never", "member", "host"])
def test_unban_of_an_aid_that_is_not_banned_is_not_found(aid: str) -> None:
    """unban of an AID never banned (or present, or the host) is notFound and changes nothing."""
    room = populated(("a1", "alice"), ("c1", "carol"))
    room.kick("dave", T0, ban=True)
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", m.Unban(room_id=R, aid=aid), T0))
    assert room.bans == {"dave"}


def test_a_second_unban_is_not_found() -> None:
    """Once unbanned, unbanning the same AID again is notFound."""
    room = populated(("a1", "alice"))
    room.kick("bob", T0, ban=True)
    room.handle("a1", m.Unban(room_id=R, aid="bob"), T0)
    msg = m.Unban(room_id=R, aid="bob")
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", msg, T0))


@pytest.mark.parametrize("target", ["dave", "nobody"], ids=["banned", "not-banned"])
@pytest.mark.parametrize(
    ("conn", "code"), [("c1", ErrorCode.FORBIDDEN), ("stranger", ErrorCode.NOT_MEMBER)]
)
def test_unban_by_a_non_host_is_refused_before_looking_at_the_ban(
    target: str, conn: str, code: ErrorCode
) -> None:
    """unban from a member is forbidden, from a non-member notMember, banned target or not."""
    room = populated(("a1", "alice"), ("c1", "carol"))
    room.kick("dave", T0, ban=True)
    msg = m.Unban(room_id=R, aid=target)
    refused(room, code, lambda: room.handle(conn, msg, T0))
    assert room.bans == {"dave"}


def test_kick_with_ban_from_a_non_host_is_forbidden_and_bans_nothing() -> None:
    """A member's kick {ban: true} is forbidden; the target stays and is not banned."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"))
    msg = m.Kick(room_id=R, aid="carol", ban=True)
    refused(room, ErrorCode.FORBIDDEN, lambda: room.handle("b1", msg, T0))


# -- signal batches -----------------------------------------------------------------


def batch(*entries: tuple[str, bytes], **fields: Any) -> m.Signal:
    """Return a signal batch for room R."""
    return m.Signal(room_id=R, signals=tuple(m.SignalTo(to, p) for to, p in entries), **fields)


def signal(sender: str, payload: bytes) -> dict[str, Any]:
    """Return the signal event `sender` sends with `payload`."""
    return {"type": "signal", "roomId": R, "from": sender, "payload": payload}


def test_each_target_of_a_batch_gets_its_own_signal_in_list_order() -> None:
    """Every entry is one signal to all connections of its `to`, in list order, repeats kept."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    msg = batch(("carol", b"k-c"), ("bob", b"k-b"), ("alice", b"k-a"), ("carol", b"k-c2"))
    assert room.handle("a1", msg, T0) == [
        Send(("c1",), signal("alice", b"k-c")),
        Send(("b1", "b2"), signal("alice", b"k-b")),
        Send(("a1",), signal("alice", b"k-a")),
        Send(("c1",), signal("alice", b"k-c2")),
    ]


def test_a_batch_delivers_exactly_what_single_signals_would() -> None:
    """A batch's effects are those of its entries sent one by one, concatenated."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    entries = [("bob", b"1"), ("carol", b"2"), ("bob", b"3")]
    singles = [
        effect
        for to, payload in entries
        for effect in room.handle("c1", m.Signal(room_id=R, to=to, payload=payload), T0)
    ]
    assert room.handle("c1", batch(*entries), T0) == singles


@pytest.mark.parametrize("where", [0, 1, 2])
def test_one_absent_target_fails_the_whole_batch(where: int) -> None:
    """Any entry naming an absent AID makes the batch notFound and nothing at all is sent."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"))
    entries = [("bob", b"1"), ("carol", b"2"), ("alice", b"3")]
    entries[where] = ("dave", b"x")
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", batch(*entries), T0))


def test_a_batch_to_an_aid_that_just_left_is_not_found() -> None:
    """A `to` that was present but left is absent: the batch fails whole."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"))
    room.leave("c1", T0)
    msg = batch(("bob", b"1"), ("carol", b"2"))
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", msg, T0))


def test_a_batch_holds_at_most_max_members_entries() -> None:
    """max_members entries are delivered; one more is a badRequest and nothing is sent."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), max_members=3)
    full = [("alice", b"1"), ("bob", b"2"), ("carol", b"3")]
    assert len(room.handle("b1", batch(*full), T0)) == 3
    over = [*full, ("bob", b"4")]
    refused(room, ErrorCode.BAD_REQUEST, lambda: room.handle("b1", batch(*over), T0))


def test_a_batch_from_a_non_member_is_not_member() -> None:
    """A batch from a connection outside the room is notMember, even with absent targets."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = batch(("bob", b"1"), ("zed", b"2"))
    refused(room, ErrorCode.NOT_MEMBER, lambda: room.handle("stranger", msg, T0))


def test_a_target_with_two_connections_gets_the_batch_on_both() -> None:
    """Every connection of the target gets each of its signals, and no other connection does."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    effects = room.handle("c1", batch(("bob", b"k")), T0)
    assert effects == [Send(("b1", "b2"), signal("carol", b"k"))]


# -- recovery on join -----------------------------------------------------------------


def chatty(count: int, *, history: HistoryPolicy = ON, size: int = 1000) -> tuple[Room, Store]:
    """Return a room with alice (a1) and bob (b1) where alice sent `count` messages."""
    room, store = populated(("a1", "alice"), ("b1", "bob"), history=history), Store(size)
    for i in range(count):
        say(room, store, "a1", b"m%d" % (i + 1), iv=b"iv", client_msg_id=f"c{i + 1}")
    return room, store


def test_a_join_without_since_has_no_recovered_field_and_replays_nothing() -> None:
    """Without since, joinSuccess has no `recovered` and no newMessage follows."""
    room, store = chatty(3)
    effects = join(room, store, "c1", "carol")
    assert types(effects) == ["userJoined", Attached("c1"), "joinSuccess"]
    assert "recovered" not in sent(effects)[-1][1]


@pytest.mark.parametrize("since_seq", [0, 1, 4, 5], ids=["zero", "one", "last-but-one", "last"])
def test_a_recoverable_since_replays_every_missed_message_exactly_as_sent(since_seq: int) -> None:
    """recovered: true, then seq since+1..lastSeq as first sent, before any other event."""
    room, store = chatty(5)
    originals = [message.event() for message in store.messages]
    effects = join(room, store, "c1", "carol", m.Position(EPOCH, since_seq), request_id="j")
    missed = 5 - since_seq
    assert types(effects) == [
        "userJoined",
        Attached("c1"),
        "joinSuccess",
        *["newMessage"] * missed,
    ]
    success = sent(effects)[1][1]
    assert success["recovered"] is True and success["lastSeq"] == 5 and success["id"] == "j"
    replay = sent(effects)[2:]
    assert all(to == ("c1",) for to, _ in replay)
    assert [event for _, event in replay] == originals[since_seq:]


def test_live_messages_follow_a_recovery_with_no_gap_and_no_repeat() -> None:
    """After replaying up to lastSeq, the next live message is lastSeq + 1, to the joiner too."""
    room, store = chatty(4)
    effects = join(room, store, "c1", "carol", m.Position(EPOCH, 1))
    after = say(room, store, "b1")
    assert seqs_to("c1", effects) + seqs_to("c1", after) == [2, 3, 4, 5]


@pytest.mark.parametrize(
    "since",
    [
        m.Position(EPOCH, 6),
        m.Position(EPOCH, 10**9),
        m.Position("Other0ep", 2),
        m.Position("Other0ep", 5),
    ],
    ids=["beyond", "far-beyond", "wrong-epoch", "wrong-epoch-at-last"],
)
def test_an_unrecoverable_since_gets_recovered_false_and_no_replay(since: m.Position) -> None:
    """Another epoch or a seq beyond lastSeq: recovered false, nothing replayed, no store read."""
    room, store = chatty(5)
    assert room.missed(since) == 0
    effects = join(room, store, "c1", "carol", since)
    assert types(effects) == ["userJoined", Attached("c1"), "joinSuccess"]
    assert joined(effects)["recovered"] is False


@pytest.mark.parametrize("limit", [1, 3, 10])
def test_exactly_recovery_limit_missed_recovers_and_one_more_does_not(limit: int) -> None:
    """recovery_limit missed messages are replayed; one more: recovered false, none replayed."""
    policy = HistoryPolicy(size=1000, ttl_ms=0, recovery_limit=limit)
    room, store = chatty(limit + 5, history=policy)
    last = limit + 5
    at_limit = m.Position(EPOCH, last - limit)
    assert room.missed(at_limit) == limit
    effects = join(room, store, "c1", "carol", at_limit)
    assert joined(effects)["recovered"] is True
    assert seqs_to("c1", effects) == list(range(last - limit + 1, last + 1))
    over = m.Position(EPOCH, last - limit - 1)
    assert room.missed(over) == 0
    effects = join(room, store, "d1", "dave", over)
    assert joined(effects)["recovered"] is False and seqs_to("d1", effects) == []


def test_a_since_whose_messages_were_trimmed_away_is_not_recovered() -> None:
    """History holding only newer messages than since.seq + 1: recovered false, no replay."""
    room, store = chatty(10, size=4)  # history keeps seq 7..10
    assert [message.seq for message in store.messages] == [7, 8, 9, 10]
    for since_seq, expected in [(5, False), (6, True), (8, True)]:
        effects = join(room, store, f"x{since_seq}", f"u{since_seq}", m.Position(EPOCH, since_seq))
        assert joined(effects)["recovered"] is expected
        assert seqs_to(f"x{since_seq}", effects) == (
            list(range(since_seq + 1, 11)) if expected else []
        )


@pytest.mark.parametrize(
    "stored",
    [
        [],
        [3, 4, 5],
        [2, 3],
        [2, 4, 5],
        [2, 3, 4, 5, 6],
    ],
    ids=["none", "starts-later", "too-few", "gap", "too-many"],
)
def test_a_store_answer_that_is_not_exactly_the_missed_messages_recovers_nothing(
    stored: list[int],
) -> None:
    """Unless stored is exactly seq since+1..lastSeq, joinSuccess says false and replays nothing."""
    room, store = chatty(5)
    by_seq = {message.seq: message for message in store.messages}
    answer = [by_seq.get(seq) or attrs.evolve(store.messages[0], seq=seq) for seq in stored]
    effects = room.join("c1", "carol", None, T0, None, m.Position(EPOCH, 1), answer)
    assert types(effects) == ["userJoined", Attached("c1"), "joinSuccess"]
    assert joined(effects)["recovered"] is False


@pytest.mark.parametrize(("since_seq", "expected"), [(4, True), (3, False), (0, False), (5, False)])
def test_with_history_off_only_an_up_to_date_client_recovers(
    since_seq: int, expected: bool
) -> None:
    """History off: since == (epoch, lastSeq) gives recovered true, anything else false."""
    room, store = chatty(4, history=OFF)
    assert store.messages == [] and room.missed(m.Position(EPOCH, since_seq)) == 0
    effects = join(room, store, "c1", "carol", m.Position(EPOCH, since_seq))
    assert joined(effects)["recovered"] is expected and seqs_to("c1", effects) == []


def test_a_new_host_of_an_empty_room_gets_its_replay_before_host_updated() -> None:
    """Joining an empty room as new host: joinSuccess, the missed messages, then hostUpdated."""
    room, store = chatty(3)
    room.leave("b1", T0)
    room.leave("a1", T0)
    effects = join(room, store, "c1", "carol", m.Position(EPOCH, 1))
    assert types(effects) == [
        Attached("c1"),
        "joinSuccess",
        "newMessage",
        "newMessage",
        "hostUpdated",
    ]
    assert sent(effects)[0][1]["host"] == "carol" and seqs_to("c1", effects) == [2, 3]


def test_a_second_connection_of_a_present_aid_recovers_too() -> None:
    """Another connection of an AID already there replays on its own connection only."""
    room, store = chatty(3)
    effects = join(room, store, "b2", "bob", m.Position(EPOCH, 1))
    assert types(effects) == [Attached("b2"), "joinSuccess", "newMessage", "newMessage"]
    assert all(to == ("b2",) for to, _ in sent(effects))


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (None, None),
        (m.Position(EPOCH, 3), True),
        (m.Position(EPOCH, 1), False),
        (m.Position(EPOCH, 0), False),
        (m.Position(EPOCH, 4), False),
        (m.Position("Other0ep", 3), False),
    ],
    ids=["no-since", "current", "behind", "zero", "beyond", "other-epoch"],
)
def test_a_rejoin_by_the_same_connection_replays_nothing(
    since: m.Position | None, expected: bool | None
) -> None:
    """Rejoining on the same connection: recovered only at the exact position, never a replay."""
    room, store = chatty(3)
    before = state(room)
    effects = join(room, store, "b1", "bob", since)
    [(to, success)] = sent(effects)
    assert len(effects) == 1 and to == ("b1",)
    assert success.get("recovered") == expected and ("recovered" in success) is (since is not None)
    assert state(room) == before


def test_a_refused_join_with_since_changes_nothing() -> None:
    """A full room refuses a join with since (roomFull): no replay, nothing changes."""
    room, store = populated(("a1", "alice"), max_members=1), Store()
    say(room, store, "a1")
    refused(room, ErrorCode.ROOM_FULL, lambda: join(room, store, "b1", "bob", m.Position(EPOCH, 0)))


def test_missed_says_how_many_messages_the_shell_must_read() -> None:
    """missed(): 0 without since or when nothing can be replayed, else lastSeq - since.seq."""
    room, _ = chatty(6)
    assert room.missed(None) == 0
    assert room.missed(m.Position(EPOCH, 6)) == 0
    assert room.missed(m.Position(EPOCH, 2)) == 4
    assert room.missed(m.Position(EPOCH, 0)) == 6
    assert room.missed(m.Position("Other0ep", 2)) == 0


@settings(max_examples=200)
@given(
    seen=st.integers(0, 12),
    away=st.integers(0, 12),
    later=st.integers(0, 4),
    size=st.integers(0, 10),
    limit=st.integers(0, 10),
)
def test_a_member_that_recovers_sees_every_seq_exactly_once(
    seen: int, away: int, later: int, size: int, limit: int
) -> None:
    """Drop out after `seen`, miss `away`, rejoin with since: recovered iff all are kept, and
    then every seq arrives exactly once; otherwise the missed ones are simply not replayed."""
    policy = HistoryPolicy(size=size, ttl_ms=0, recovery_limit=limit)
    room, store = populated(("a1", "alice"), ("b1", "bob"), history=policy), Store(size)
    got: list[int] = []
    for _ in range(seen):
        got += seqs_to("b1", say(room, store, "a1"))
    room.disconnect("b1", "disconnected", T0)
    for _ in range(away):
        say(room, store, "a1")
    effects = join(room, store, "b2", "bob", m.Position(EPOCH, got[-1] if got else 0))
    got += seqs_to("b2", effects)
    for _ in range(later):
        got += seqs_to("b2", say(room, store, "a1"))
    recovery = joined(effects)["recovered"]
    expected = away == 0 or (size > 0 and away <= min(limit, size))
    assert recovery is expected
    total = seen + away + later
    if expected:
        assert got == list(range(1, total + 1))
    else:
        assert got == [*range(1, seen + 1), *range(seen + away + 1, total + 1)]


# -- history pages ----------------------------------------------------------------------


def test_history_query_defaults_to_after_the_last_message() -> None:
    """getHistory without before asks for seq < lastSeq + 1, with limit 50."""
    room, _ = chatty(7)
    assert room.history_query("b1", m.GetHistory(room_id=R)) == (8, 50)
    assert room.history_query("b1", m.GetHistory(room_id=R, before=3, limit=2)) == (3, 2)


def test_history_from_a_non_member_is_not_member() -> None:
    """getHistory from a connection outside the room is notMember."""
    room, _ = chatty(2)
    msg = m.GetHistory(room_id=R)
    refused(room, ErrorCode.NOT_MEMBER, lambda: room.history_query("stranger", msg))


def test_a_history_page_is_the_newest_limit_oldest_first_with_the_reply_fields() -> None:
    """history {roomId, epoch, messages, more, id}: newest `limit` before `before`, oldest first."""
    room, store = chatty(10)
    reply = page(room, store, "b1", m.GetHistory(room_id=R, before=8, limit=3, id=4))
    assert reply == {
        "type": "history",
        "roomId": R,
        "epoch": EPOCH,
        "messages": [message.page_entry() for message in store.messages[4:7]],
        "more": True,
        "id": 4,
    }
    assert [entry["seq"] for entry in reply["messages"]] == [5, 6, 7]
    assert reply["messages"][0] == {
        "seq": 5,
        "messageId": "px5",
        "from": "alice",
        "ciphertext": b"m5",
        "iv": b"iv",
        "clientMsgId": "c5",
        "ts": store.messages[4].ts,
    }


@pytest.mark.parametrize(
    ("before", "limit", "seqs", "more"),
    [
        (1, 50, [], False),  # nothing before seq 1
        (1, 1, [], False),
        (2, 1, [1], False),  # the oldest alone: nothing older
        (2, 100, [1], False),
        (None, 10, list(range(1, 11)), False),  # limit exactly the count
        (None, 9, list(range(2, 11)), True),  # one short of the count
        (None, 11, list(range(1, 11)), False),
        (None, 1, [10], True),
        (11, 10, list(range(1, 11)), False),  # before = lastSeq + 1: the default
        (12, 10, list(range(1, 11)), False),  # beyond lastSeq + 1
        (10**9, 3, [8, 9, 10], True),
        (6, 5, [1, 2, 3, 4, 5], False),  # exactly what remains
        (6, 4, [2, 3, 4, 5], True),
    ],
)
def test_history_page_boundaries(
    before: int | None, limit: int, seqs: list[int], more: bool
) -> None:
    """Each page holds the right seqs, and `more` is true exactly when older ones exist."""
    room, store = chatty(10)
    reply = page(room, store, "b1", m.GetHistory(room_id=R, before=before, limit=limit))
    assert [entry["seq"] for entry in reply["messages"]] == seqs and reply["more"] is more


def test_a_page_without_id_has_no_id() -> None:
    """A getHistory without id is answered without one."""
    room, store = chatty(2)
    assert "id" not in page(room, store, "b1", m.GetHistory(room_id=R))


def test_a_trimmed_history_has_nothing_more_before_its_oldest_kept_message() -> None:
    """When history has trimmed older messages, the page ends at the oldest kept, more false."""
    room, store = chatty(10, size=4)
    reply = page(room, store, "b1", m.GetHistory(room_id=R, limit=4))
    assert [entry["seq"] for entry in reply["messages"]] == [7, 8, 9, 10] and not reply["more"]
    reply = page(room, store, "b1", m.GetHistory(room_id=R, before=7))
    assert reply["messages"] == [] and not reply["more"]


def test_with_history_off_a_page_is_empty() -> None:
    """History off: getHistory answers an empty page with more false."""
    room, store = chatty(5, history=OFF)
    reply = page(room, store, "b1", m.GetHistory(room_id=R))
    assert reply["messages"] == [] and reply["more"] is False and reply["epoch"] == EPOCH


@given(count=st.integers(0, 40), limit=st.integers(1, 12))
def test_paging_back_returns_every_message_once_newest_page_first(count: int, limit: int) -> None:
    """Paging back with before = oldest seq of the last page yields 1..lastSeq exactly once."""
    room, store = chatty(count)
    collected: list[int] = []
    before: int | None = None
    while True:
        reply = page(room, store, "a1", m.GetHistory(room_id=R, before=before, limit=limit))
        seqs = [entry["seq"] for entry in reply["messages"]]
        assert len(seqs) <= limit and seqs == sorted(seqs)
        collected = seqs + collected
        if not reply["more"]:
            break
        assert len(seqs) == limit
        before = seqs[0]
    assert collected == list(range(1, count + 1))


# -- Append effects and seq exactness -------------------------------------------------


def test_with_history_on_each_message_is_appended_before_anyone_receives_it() -> None:
    """history on: [Append(message), Send(everyone, newMessage)], the stored copy exactly it."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.SendMessage(room_id=R, ciphertext=b"ct", iv=b"n", client_msg_id="c9", key_epoch=0)
    effects = room.handle("b1", msg, 5_000)
    stored = StoredMessage(R, 1, "px1", "bob", b"ct", b"n", "c9", 5_000, 0)
    assert effects == [Append(stored), Send(("a1", "b1"), stored.event())]


def test_with_history_off_nothing_is_appended() -> None:
    """history off: a message is only sent, never handed to the store."""
    room = populated(("a1", "alice"), ("b1", "bob"), history=OFF)
    effects = room.handle("b1", m.SendMessage(room_id=R, ciphertext=b"ct"), T0)
    assert [type(effect) for effect in effects] == [Send]


def test_refused_messages_append_nothing() -> None:
    """A conflict or a non-member message produces no Append: history never gets it."""
    room = populated(("a1", "alice"))
    msg = m.SendMessage(room_id=R, ciphertext=b"x", key_epoch=3)
    refused(room, ErrorCode.CONFLICT, lambda: room.handle("a1", msg, T0))
    refused(room, ErrorCode.NOT_MEMBER, lambda: room.handle("zz", msg, T0))


def test_with_history_on_the_next_seq_after_a_restart_is_exactly_last_plus_one() -> None:
    """history on: a message saves no record (its seq is stored with it); a crash loses no number.

    The store reads the room back as the last saved record, its seq raised to
    the newest stored message's (roomd.store).
    """
    room, store = populated(("a1", "alice"), history=ON), Store()
    saved = room.to_record()
    for seq in range(1, 6):
        durable = room.durable_state()
        say(room, store, "a1")
        assert room.seq == seq and room.durable_state() == durable
    read_back = attrs.evolve(saved, seq_reserved=max(saved.seq_reserved, store.messages[-1].seq))
    back = Room.from_record(
        read_back, empty_since=T0 + 500, max_members=8, message_id_prefix="py", history=ON
    )
    back.join("a1", "alice", None, T0)
    [(_, success)] = sent(back.join("a2", "alice", None, T0))
    assert success["lastSeq"] == 5 and success["epoch"] == EPOCH
    [(_, event)] = sent(back.handle("a1", m.SendMessage(room_id=R, ciphertext=b"x"), T0))
    assert event["seq"] == 6


def test_with_history_off_seqs_are_reserved_in_blocks_and_skip_after_a_crash() -> None:
    """history off: the mark moves a block at a time; after a crash seq skips, never repeats."""
    room, store = populated(("a1", "alice"), history=OFF), Store()
    room.seq_block = 5
    say(room, store, "a1")
    assert room.seq == 1 and room.seq_reserved == 5
    saved = room.durable_state()
    for _ in range(4):
        say(room, store, "a1")
    assert room.seq == 5 and room.durable_state() == saved  # no save per message
    say(room, store, "a1")
    assert room.seq == 6 and room.seq_reserved == 10 and room.durable_state() != saved
    back = restore(room, OFF)  # a crash: the reservation stands
    back.join("a1", "alice", None, T0)
    [(_, event)] = sent(back.handle("a1", m.SendMessage(room_id=R, ciphertext=b"x"), T0))
    assert event["seq"] == 11


def test_with_history_off_a_clean_stop_numbers_on_from_the_last_seq() -> None:
    """history off, room emptied (settle_seq): the restored room goes on at lastSeq + 1."""
    room, store = populated(("a1", "alice"), history=OFF), Store()
    for _ in range(3):
        say(room, store, "a1")
    room.leave("a1", T0)
    room.settle_seq()
    assert room.seq_reserved == 3
    back = restore(room, OFF)
    back.join("a1", "alice", None, T0)
    [(_, event)] = sent(back.handle("a1", m.SendMessage(room_id=R, ciphertext=b"x"), T0))
    assert event["seq"] == 4


@pytest.mark.parametrize("history", [ON, OFF], ids=["on", "off"])
def test_a_conflict_takes_no_seq_and_reserves_nothing(history: HistoryPolicy) -> None:
    """A refused first message leaves seq and the durable mark at 0, history on or off."""
    room = populated(("a1", "alice"), history=history)
    msg = m.SendMessage(room_id=R, ciphertext=b"x", key_epoch=1)
    refused(room, ErrorCode.CONFLICT, lambda: room.handle("a1", msg, T0))
    assert room.seq == room.seq_reserved == 0


@settings(max_examples=100)
@given(ops=st.lists(st.sampled_from(["ok", "stale", "rotate", "stranger"]), max_size=30))
def test_seqs_stay_exact_whatever_is_refused(ops: list[str]) -> None:
    """With history on, accepted messages get 1, 2, 3, ... and history holds exactly them."""
    room, store = populated(("a1", "alice"), ("b1", "bob")), Store()
    accepted = 0
    for op in ops:
        if op == "rotate":
            room.handle("a1", key(), T0)
            continue
        epoch = room.key_epoch + (1 if op == "stale" else 0)
        conn = "zz" if op == "stranger" else "b1"
        before = state(room)
        try:
            effects = say(room, store, conn, key_epoch=epoch)
        except ProtocolError:
            assert op != "ok" and state(room) == before
            continue
        accepted += 1
        assert seqs_to("a1", effects) == [accepted]
    assert [message.seq for message in store.messages] == list(range(1, accepted + 1))
    assert room.seq == room.seq_reserved == accepted
