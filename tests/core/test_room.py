"""The room state machine: membership, presence, host rules and fan-out (PROTOCOL.md 4-6)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roomd.core import message as m
from roomd.core.history import HistoryPolicy
from roomd.core.room import Attached, Detached, Effect, Room, Send
from roomd.errors import ErrorCode, ProtocolError

HISTORY_OFF = HistoryPolicy(size=0, ttl_ms=0, recovery_limit=0)
R = "r1"
T0 = 1_000


def new_room(host: str | None = "alice", *, key: bytes | None = b"K", max_members: int = 8) -> Room:
    """Return an empty room created by `host` at T0."""
    return Room.new(
        R,
        host=host,
        encrypted_room_key=key,
        now_ms=T0,
        max_members=max_members,
        message_id_prefix="px",
        epoch="E0",
        history=HISTORY_OFF,
    )


def populated(*joins: tuple[str, str], **kwargs: Any) -> Room:
    """Return a room the (conn, aid) pairs joined in order, the first being its creator."""
    room = new_room(joins[0][1], **kwargs)
    for i, (conn, aid) in enumerate(joins):
        room.join(conn, aid, aid.encode() + b"-pk", T0 + i)
    return room


def snapshot(room: Room) -> tuple[object, ...]:
    """Return every observable piece of room state, for before/after comparisons."""
    members = [(aid, mem.public_key, tuple(mem.conns)) for aid, mem in room.members.items()]
    conns = {c: room.aid_of(c) for c in room.connections()}
    return (room.host, room.encrypted_room_key, room.seq, room.empty_since, members, conns)


def sent(effects: list[Effect]) -> list[tuple[tuple[object, ...], dict[str, Any]]]:
    """Return the deliveries among `effects` as (recipients, event) pairs, in order."""
    return [(tuple(e.to), e.event) for e in effects if isinstance(e, Send)]


def types(effects: list[Effect]) -> list[object]:
    """Return the effects with each Send reduced to its event type."""
    return [e.event["type"] if isinstance(e, Send) else e for e in effects]


def refused(room: Room, code: ErrorCode, call: Any) -> None:
    """Assert that `call()` raises `code` and leaves the room exactly as it was."""
    before = snapshot(room)
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.code is code, info.value.message
    assert snapshot(room) == before


# -- joining ------------------------------------------------------------------


def test_creator_joins_an_empty_room_as_host() -> None:
    """The creator's join attaches it and answers joinSuccess; no userJoined, no hostUpdated."""
    room = new_room()
    assert room.empty_since == T0 and room.is_empty
    effects = room.join("c1", "alice", b"apk", T0 + 5, request_id=7)
    success = {
        "type": "joinSuccess",
        "roomId": R,
        "you": "alice",
        "host": "alice",
        "encryptedRoomKey": b"K",
        "members": [{"aid": "alice", "publicKey": b"apk"}],
        "lastSeq": 0,
        "epoch": "E0",
        "keyEpoch": 0,
        "id": 7,
    }
    assert effects == [Attached("c1"), Send(("c1",), success)]
    assert room.empty_since is None and room.aid_of("c1") == "alice"


def test_join_without_request_id_has_no_id_and_null_key() -> None:
    """joinSuccess carries `id` only when the request had one; no room key is null."""
    room = new_room(key=None)
    [(_, success)] = sent(room.join("c1", "alice", None, T0))
    assert "id" not in success
    assert success["encryptedRoomKey"] is None and success["members"][0]["publicKey"] is None


def test_members_are_listed_in_join_order_and_told_of_newcomers() -> None:
    """Each joiner sees every present AID in join order; earlier connections get userJoined."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    effects = room.join("c1", "carol", None, T0 + 9)
    joined = {"type": "userJoined", "roomId": R, "aid": "carol", "publicKey": None}
    assert effects[0] == Send(("a1", "b1"), joined)
    [(to, success)] = sent(effects[1:])
    assert to == ("c1",) and success["you"] == "carol" and success["host"] == "alice"
    assert success["members"] == [
        {"aid": "alice", "publicKey": b"alice-pk"},
        {"aid": "bob", "publicKey": b"bob-pk"},
        {"aid": "carol", "publicKey": None},
    ]
    assert room.connections() == ("a1", "b1", "c1")


def test_second_connection_of_a_present_aid_is_not_announced() -> None:
    """Another connection of a present AID is not announced; the AID keeps its first public key."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    effects = room.join("b2", "bob", b"other-key", T0 + 9)
    assert types(effects) == [Attached("b2"), "joinSuccess"]
    success = sent(effects)[0][1]
    assert success["members"] == [
        {"aid": "alice", "publicKey": b"alice-pk"},
        {"aid": "bob", "publicKey": b"bob-pk"},
    ]
    assert room.connections() == ("a1", "b1", "b2")


def test_rejoin_by_the_same_connection_changes_nothing() -> None:
    """Joining a room this connection is in answers joinSuccess again and nothing else."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    room.handle("a1", m.SendMessage(room_id=R, ciphertext=b"x"), T0 + 10)
    before = snapshot(room)
    effects = room.join("b1", "bob", b"new-key", T0 + 20, request_id="again")
    [(to, success)] = sent(effects)
    assert len(effects) == 1 and to == ("b1",)
    assert success["id"] == "again" and success["lastSeq"] == 1
    assert success["members"][1] == {"aid": "bob", "publicKey": b"bob-pk"}
    assert snapshot(room) == before


def test_full_room_refuses_a_new_aid_but_admits_a_present_one() -> None:
    """At max_members AIDs a new AID gets roomFull; another connection of a member may join."""
    room = populated(("a1", "alice"), ("b1", "bob"), max_members=2)
    refused(room, ErrorCode.ROOM_FULL, lambda: room.join("c1", "carol", None, T0 + 9))
    assert types(room.join("a2", "alice", None, T0 + 9)) == [Attached("a2"), "joinSuccess"]
    room.leave("b1", T0 + 10)
    assert Attached("c1") in room.join("c1", "carol", None, T0 + 11)


# -- messages -----------------------------------------------------------------


def test_messages_get_consecutive_seqs_and_unique_ids() -> None:
    """seq starts at 1 and grows by 1 per message; messageIds are distinct and prefixed."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    events = []
    for i in range(20):
        conn = ("a1", "b1")[i % 2]
        [(to, event)] = sent(room.handle(conn, m.SendMessage(room_id=R, ciphertext=b"c"), T0 + i))
        assert to == ("a1", "b1")
        events.append(event)
    assert [e["seq"] for e in events] == list(range(1, 21))
    ids = [e["messageId"] for e in events]
    assert len(set(ids)) == 20 and all(i.startswith("px") for i in ids)
    assert room.seq == 20
    assert sent(room.join("c1", "carol", None, T0))[-1][1]["lastSeq"] == 20


@pytest.mark.parametrize("iv", [None, b"", b"nonce"])
@pytest.mark.parametrize("client_msg_id", [None, "c-1"])
def test_new_message_carries_iv_and_client_msg_id_only_when_given(
    iv: bytes | None, client_msg_id: str | None
) -> None:
    """newMessage goes to every connection, the sender's included, with optional fields as sent."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("a2", "alice"))
    msg = m.SendMessage(room_id=R, ciphertext=b"\x00c", iv=iv, client_msg_id=client_msg_id)
    [(to, event)] = sent(room.handle("a2", msg, 123_456))
    expected: dict[str, Any] = {
        "type": "newMessage",
        "roomId": R,
        "seq": 1,
        "messageId": event["messageId"],
        "from": "alice",
        "ciphertext": b"\x00c",
        "ts": 123_456,
    }
    if iv is not None:
        expected["iv"] = iv
    if client_msg_id is not None:
        expected["clientMsgId"] = client_msg_id
    assert to == ("a1", "a2", "b1") and event == expected


@pytest.mark.parametrize("is_typing", [True, False])
def test_typing_goes_to_the_other_aids_only(is_typing: bool) -> None:
    """typing reaches every connection of the other AIDs, none of the sender's AID."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("c1", "carol"))
    effects = room.handle("a2", m.Typing(room_id=R, is_typing=is_typing), T0)
    typing = {"type": "typing", "roomId": R, "aid": "alice", "isTyping": is_typing}
    assert effects == [Send(["b1", "c1"], typing)]


@pytest.mark.parametrize("remove", [True, False])
def test_reaction_goes_to_everyone(remove: bool) -> None:
    """reaction reaches every connection, the sender's included."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.Reaction(room_id=R, message_id="px1", emoji="👍", remove=remove)
    reaction = {
        "type": "reaction",
        "roomId": R,
        "messageId": "px1",
        "aid": "bob",
        "emoji": "👍",
        "remove": remove,
    }
    assert room.handle("b1", msg, T0) == [Send(("a1", "b1"), reaction)]


def test_signal_goes_to_every_connection_of_the_target_only() -> None:
    """signal reaches all of the target AID's connections and nobody else."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    effects = room.handle("c1", m.Signal(room_id=R, to="bob", payload=b"sdp"), T0)
    signal = {"type": "signal", "roomId": R, "from": "carol", "payload": b"sdp"}
    assert effects == [Send(("b1", "b2"), signal)]


def test_signal_to_an_absent_aid_is_not_found() -> None:
    """A signal to an AID not in the room is notFound and changes nothing."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.Signal(room_id=R, to="carol", payload=b"x")
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", msg, T0))


MEMBER_OPS = [
    m.SendMessage(room_id=R, ciphertext=b"c"),
    m.Typing(room_id=R, is_typing=True),
    m.Reaction(room_id=R, message_id="x", emoji="e"),
    m.Signal(room_id=R, to="alice", payload=b"p"),
    m.LeaveChatroom(room_id=R),
]
HOST_OPS = [
    m.UpdateRoomKey(room_id=R, encrypted_room_key=b"K2"),
    m.TransferHost(room_id=R, to="bob"),
    m.Kick(room_id=R, aid="bob"),
    m.DeleteChatroom(room_id=R),
]


@pytest.mark.parametrize("msg", MEMBER_OPS + HOST_OPS, ids=lambda msg: msg.TYPE)
def test_a_non_member_is_refused_with_not_member(msg: m.RoomMessage) -> None:
    """Every room message from a connection that is not in the room is notMember."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    refused(room, ErrorCode.NOT_MEMBER, lambda: room.handle("stranger", msg, T0))


@pytest.mark.parametrize("msg", HOST_OPS, ids=lambda msg: msg.TYPE)
def test_host_only_messages_from_a_non_host_are_forbidden(msg: m.RoomMessage) -> None:
    """updateRoomKey, transferHost, kick and deleteChatroom from a member are forbidden."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"))
    refused(room, ErrorCode.FORBIDDEN, lambda: room.handle("b1", msg, T0))


def test_join_is_not_a_room_message_for_handle() -> None:
    """joinChatroom goes through `join`; `handle` refuses it as a badRequest."""
    room = populated(("a1", "alice"))
    msg = m.JoinChatroom(room_id=R)
    refused(room, ErrorCode.BAD_REQUEST, lambda: room.handle("a1", msg, T0))


def test_update_room_key_reaches_everyone_and_later_joiners() -> None:
    """roomKeyUpdated goes to all with `by`; the next joinSuccess carries the new key."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    effects = room.handle("a1", m.UpdateRoomKey(room_id=R, encrypted_room_key=b"K2"), T0)
    updated = {
        "type": "roomKeyUpdated",
        "roomId": R,
        "encryptedRoomKey": b"K2",
        "by": "alice",
        "keyEpoch": 1,
    }
    assert effects == [Send(("a1", "b1"), updated)]
    assert sent(room.join("c1", "carol", None, T0))[-1][1]["encryptedRoomKey"] == b"K2"


# -- leaving ------------------------------------------------------------------


def test_leave_answers_the_sender_and_tells_the_others() -> None:
    """leaveChatroom: leftChatroom left (with id) to the sender, userLeft left to the rest."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"))
    effects = room.handle("b1", m.LeaveChatroom(room_id=R, id=4), T0 + 50)
    left = {"type": "leftChatroom", "roomId": R, "reason": "left", "id": 4}
    user_left = {"type": "userLeft", "roomId": R, "aid": "bob", "reason": "left"}
    assert effects == [Send(("b1",), left), Detached("b1"), Send(("a1", "c1"), user_left)]
    assert room.aid_of("b1") is None and list(room.members) == ["alice", "carol"]


@pytest.mark.parametrize("reason", ["disconnected", "timeout"])
def test_a_closed_connection_leaves_with_its_reason(reason: str) -> None:
    """disconnect removes the connection; the others get userLeft with that reason."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    user_left = {"type": "userLeft", "roomId": R, "aid": "bob", "reason": reason}
    assert room.disconnect("b1", reason, T0) == [Detached("b1"), Send(("a1",), user_left)]


def test_disconnect_of_a_connection_not_in_the_room_is_a_no_op() -> None:
    """A connection that is not (or no longer) in the room leaves nothing to do."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    room.leave("b1", T0)
    before = snapshot(room)
    assert room.disconnect("b1", "disconnected", T0) == []
    assert room.disconnect("never", "timeout", T0) == []
    assert snapshot(room) == before


@pytest.mark.parametrize("how", ["leave", "disconnected", "timeout"])
def test_only_the_last_connection_of_an_aid_produces_user_left(how: str) -> None:
    """While the AID has another connection in the room, nobody is told it left."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("b2", "bob"))

    def go(conn: str) -> list[Effect]:
        if how == "leave":
            return room.leave(conn, T0)[1:]
        return room.disconnect(conn, how, T0)

    assert go("b2") == [Detached("b2")]
    reason = "left" if how == "leave" else how
    user_left = {"type": "userLeft", "roomId": R, "aid": "bob", "reason": reason}
    assert go("b1") == [Detached("b1"), Send(("a1",), user_left)]


def test_a_non_member_cannot_leave() -> None:
    """leave from a connection not in the room is notMember."""
    room = populated(("a1", "alice"))
    refused(room, ErrorCode.NOT_MEMBER, lambda: room.leave("b1", T0))


def test_kick_tells_the_target_and_then_the_others() -> None:
    """Every target connection gets leftChatroom kicked; the others get userLeft kicked."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob"))
    effects = room.handle("a1", m.Kick(room_id=R, aid="bob", id=1), T0)
    kicked = {"type": "leftChatroom", "roomId": R, "reason": "kicked"}
    user_left = {"type": "userLeft", "roomId": R, "aid": "bob", "reason": "kicked"}
    assert effects == [
        Send(("b1", "b2"), kicked),
        Detached("b1"),
        Detached("b2"),
        Send(("a1", "c1"), user_left),
    ]
    assert room.host == "alice" and room.connections() == ("a1", "c1")
    assert room.aid_of("b1") is None and room.aid_of("b2") is None


@pytest.mark.parametrize(("target", "code"), [("dave", "notFound"), ("alice", "badRequest")])
def test_kick_of_an_absent_aid_or_of_the_host_itself_is_refused(target: str, code: str) -> None:
    """Kicking an AID not in the room is notFound; the host kicking itself is badRequest."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.Kick(room_id=R, aid=target)
    refused(room, ErrorCode(code), lambda: room.handle("a1", msg, T0))


def test_delete_tells_everyone_and_ends_the_room() -> None:
    """deleteChatroom: roomDeleted deleted to all, every connection detached, the room deleted."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("a2", "alice"))
    effects = room.handle("a1", m.DeleteChatroom(room_id=R), T0)
    deleted = {"type": "roomDeleted", "roomId": R, "reason": "deleted"}
    assert effects == [
        Send(("a1", "a2", "b1"), deleted),
        Detached("a1"),
        Detached("a2"),
        Detached("b1"),
    ]
    assert room.deleted == "deleted"
    assert room.is_empty and room.connections() == () and not room.members


def test_expiring_an_empty_room_only_deletes_it() -> None:
    """delete('expired') of an empty room has nobody to tell."""
    room = populated(("a1", "alice"))
    room.leave("a1", T0)
    assert room.deleted is None
    assert room.delete("expired") == []
    assert room.deleted == "expired"


# -- host rules ----------------------------------------------------------------


@pytest.mark.parametrize("how", ["leave", "disconnected", "timeout"])
def test_when_the_host_goes_the_member_present_longest_becomes_host(how: str) -> None:
    """When the host AID's last connection goes, the longest-present member becomes host."""
    room = populated(("a1", "alice"), ("b1", "bob"), ("c1", "carol"), ("d1", "dave"))
    room.leave("b1", T0)
    room.join("b1", "bob", None, T0)
    room.join("a2", "alice", None, T0)
    assert room.disconnect("a1", "disconnected", T0) == [Detached("a1")]
    assert room.host == "alice"
    effects = room.leave("a2", T0) if how == "leave" else room.disconnect("a2", how, T0)
    updated = {"type": "hostUpdated", "roomId": R, "host": "carol"}
    assert types(effects)[-3:] == [Detached("a2"), "userLeft", "hostUpdated"]
    assert effects[-1] == Send(("c1", "d1", "b1"), updated)
    assert room.host == "carol"


def test_transfer_host_tells_everyone() -> None:
    """transferHost to a present AID makes it host; every member gets hostUpdated."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    effects = room.handle("a1", m.TransferHost(room_id=R, to="bob"), T0)
    assert effects == [Send(("a1", "b1"), {"type": "hostUpdated", "roomId": R, "host": "bob"})]
    assert room.host == "bob"
    refused(room, ErrorCode.FORBIDDEN, lambda: room.handle("a1", m.Kick(room_id=R, aid="bob"), T0))
    assert types(room.handle("b1", m.Kick(room_id=R, aid="alice"), T0))[0] == "leftChatroom"


def test_transfer_host_to_an_absent_aid_is_not_found() -> None:
    """transferHost to an AID not in the room is notFound and changes nothing."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    msg = m.TransferHost(room_id=R, to="carol")
    refused(room, ErrorCode.NOT_FOUND, lambda: room.handle("a1", msg, T0))


@pytest.mark.parametrize("last", ["alice", "bob"])
def test_an_empty_room_keeps_its_last_host_and_records_when_it_emptied(last: str) -> None:
    """The last member going sets empty_since and sends nothing; the host stays as it was."""
    room = populated(("a1", "alice"), ("b1", "bob"))
    first, second = ("b1", "a1") if last == "alice" else ("a1", "b1")
    room.leave(first, T0 + 1)
    host = room.host
    assert room.disconnect(second, "disconnected", T0 + 2) == [Detached(second)]
    assert room.is_empty and room.empty_since == T0 + 2 and room.host == host


def test_the_same_host_rejoining_an_empty_room_stays_host_quietly() -> None:
    """The last host coming back to its empty room gets joinSuccess only; the countdown stops."""
    room = populated(("a1", "alice"))
    room.leave("a1", T0 + 1)
    effects = room.join("a3", "alice", None, T0 + 2)
    assert types(effects) == [Attached("a3"), "joinSuccess"]
    assert room.host == "alice" and room.empty_since is None


def test_someone_else_joining_an_empty_room_becomes_host() -> None:
    """A different AID joining an empty room is host: joinSuccess names it, hostUpdated follows."""
    room = populated(("a1", "alice"))
    room.leave("a1", T0 + 1)
    effects = room.join("b1", "bob", None, T0 + 2)
    assert types(effects) == [Attached("b1"), "joinSuccess", "hostUpdated"]
    assert sent(effects)[0][1]["host"] == "bob"
    assert sent(effects)[1] == (("b1",), {"type": "hostUpdated", "roomId": R, "host": "bob"})
    assert room.host == "bob" and room.empty_since is None


def test_a_room_made_without_a_host_gives_it_to_the_first_joiner() -> None:
    """With host None the first joiner becomes host and is told so."""
    room = new_room(None)
    assert types(room.join("a1", "alice", None, T0)) == [
        Attached("a1"),
        "joinSuccess",
        "hostUpdated",
    ]
    assert room.host == "alice"


def test_a_failed_join_of_a_full_room_keeps_it_empty_and_counting() -> None:
    """roomFull at max_members=0 leaves empty_since and the host untouched."""
    room = new_room(max_members=0)
    refused(room, ErrorCode.ROOM_FULL, lambda: room.join("a1", "alice", None, T0 + 5))
    assert room.empty_since == T0


# -- any sequence of operations -----------------------------------------------

AIDS = ("alice", "bob", "carol")
CONNS = [f"c{i}" for i in range(5)]  # connection ci is authenticated as AIDS[i % 3]
OPS = st.tuples(
    st.sampled_from(
        [
            "join",
            "leave",
            "disconnect",
            "timeout",
            "message",
            "typing",
            "signal",
            "transfer",
            "kick",
            "key",
        ]
    ),
    st.integers(0, len(CONNS) - 1),
    st.sampled_from(AIDS),
)


def apply(room: Room, op: str, conn: str, aid: str, now: int) -> list[Effect]:
    """Apply one operation of the random walk below."""
    simple = {
        "message": m.SendMessage(room_id=R, ciphertext=b"c"),
        "typing": m.Typing(room_id=R, is_typing=True),
        "signal": m.Signal(room_id=R, to=aid, payload=b"p"),
        "transfer": m.TransferHost(room_id=R, to=aid),
        "kick": m.Kick(room_id=R, aid=aid),
        "key": m.UpdateRoomKey(room_id=R, encrypted_room_key=aid.encode()),
    }
    if op == "join":
        return room.join(conn, AIDS[CONNS.index(conn) % 3], None, now)
    if op == "leave":
        return room.leave(conn, now)
    if op in ("disconnect", "timeout"):
        return room.disconnect(conn, "disconnected" if op == "disconnect" else "timeout", now)
    return room.handle(conn, simple[op], now)


@settings(max_examples=300)
@given(ops=st.lists(OPS, max_size=40))
def test_any_sequence_of_operations_keeps_the_room_consistent(
    ops: list[tuple[str, int, str]],
) -> None:
    """Any op sequence: refusals change nothing, seq counts messages, state stays consistent."""
    room = new_room("alice", max_members=2)
    messages = 0
    for now, (op, index, aid) in enumerate(ops, start=T0 + 1):
        before = snapshot(room)
        inside = set(room.connections())
        try:
            effects = apply(room, op, CONNS[index], aid, now)
        except ProtocolError:
            assert snapshot(room) == before
            continue
        messages += op == "message"
        assert room.seq == messages
        attached = {e.conn for e in effects if isinstance(e, Attached)}
        detached = {e.conn for e in effects if isinstance(e, Detached)}
        assert set(room.connections()) == (inside | attached) - detached
        for e in effects:
            if isinstance(e, Send):
                assert set(e.to) <= inside | attached
        assert {c: room.aid_of(c) for c in room.connections()} == {
            c: mem.aid for mem in room.members.values() for c in mem.conns
        }
        assert all(mem.conns for mem in room.members.values())
        if room.is_empty:
            assert room.empty_since is not None and not room.members
        else:
            assert room.empty_since is None and room.host in room.members
