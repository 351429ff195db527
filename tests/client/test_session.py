"""The client's memory of its rooms across connections (roomd/client/session.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from roomd.client.events import (
    Event,
    Gap,
    HostUpdated,
    Joined,
    LeftRoom,
    Member,
    NewMessage,
    RoomDeleted,
    Typing,
    UserJoined,
)
from roomd.client.session import ClientSession, Received

ME = "me"
KEY = b"K" * 32


def joined(
    room_id: str = "r1",
    last_seq: int = 0,
    *,
    epoch: str = "e1",
    recovered: bool | None = None,
) -> Joined:
    """Return a `joinSuccess` of `room_id` for this client."""
    members = (Member(ME, KEY),)
    return Joined(room_id, ME, ME, None, members, last_seq, epoch, 0, recovered)


def msg(
    seq: int, room_id: str = "r1", *, sender: str = "bob", client_msg_id: str | None = None
) -> NewMessage:
    """Return the `newMessage` of `seq` in `room_id`."""
    return NewMessage(room_id, seq, f"m{seq}", sender, b"c", None, client_msg_id, 1000 + seq, None)


def frame(client_msg_id: str, room_id: str = "r1") -> dict[str, Any]:
    """Return a `message` frame as the shell records it with `sent_message`."""
    return {"type": "message", "roomId": room_id, "ciphertext": b"c", "clientMsgId": client_msg_id}


def in_room(
    room_id: str = "r1", last_seq: int = 0, *, epoch: str = "e1", public_key: bytes | None = KEY
) -> ClientSession:
    """Return a session of AID `me` that joined `room_id` at `last_seq`."""
    session = ClientSession(aid=ME)
    session.receive(joined(room_id, last_seq, epoch=epoch), public_key)
    return session


def passed(session: ClientSession, events: list[Event]) -> list[Event]:
    """Feed `events` to `session` and return everything it passed on."""
    out: list[Event] = []
    for event in events:
        out += session.receive(event).events
    return out


def seqs(events: list[Event]) -> list[int]:
    """Return the seqs of the messages among `events`."""
    return [event.seq for event in events if isinstance(event, NewMessage)]


# -- first join and live messages -----------------------------------------------------------


@pytest.mark.parametrize(("last_seq", "epoch"), [(0, "e1"), (41, "epochABCD"), (2**40, "x" * 32)])
@pytest.mark.parametrize("public_key", [KEY, None])
def test_the_first_join_records_the_position(
    last_seq: int, epoch: str, public_key: bytes | None
) -> None:
    """A first joinSuccess is passed on and remembered as (epoch, lastSeq) with the join's key."""
    session = ClientSession(aid=ME)
    event = joined("r1", last_seq, epoch=epoch)
    assert session.receive(event, public_key) == Received([event], [])
    position = session.rooms["r1"]
    assert (position.epoch, position.seq, position.public_key) == (epoch, last_seq, public_key)
    assert not session.replaying()
    assert session.unechoed("r1") == []


@pytest.mark.parametrize(
    ("start", "arriving", "seen", "final"),
    [
        (0, [1, 2, 3], [1, 2, 3], 3),
        (10, [11, 12], [11, 12], 12),
        (0, [1, 1, 2, 2, 3], [1, 2, 3], 3),
        (0, [1, 2, 1, 3, 2], [1, 2, 3], 3),
        (5, [3, 4, 5, 6], [6], 6),
        (5, [5], [], 5),
        (0, [0], [], 0),
        (0, [2, 1, 3], [2, 3], 3),
        (0, [3, 3, 3], [3], 3),
        (7, [], [], 7),
    ],
)
def test_messages_advance_the_position_and_repeats_are_dropped(
    start: int, arriving: list[int], seen: list[int], final: int
) -> None:
    """A newMessage above the position is passed on and moves it; one at or below it is dropped."""
    session = in_room(last_seq=start)
    assert seqs(passed(session, [msg(seq) for seq in arriving])) == seen
    assert session.rooms["r1"].seq == final


def test_a_dropped_repeat_reports_nothing() -> None:
    """A repeat gives no event and no ready room."""
    session = in_room(last_seq=3)
    assert session.receive(msg(3)) == Received([], [])
    assert session.receive(msg(1)) == Received([], [])


def test_positions_are_kept_per_room() -> None:
    """A seq seen in one room does not drop the same seq in another."""
    session = in_room("r1", 5)
    session.receive(joined("r2", 0), None)
    out = passed(session, [msg(6, "r1"), msg(1, "r2"), msg(6, "r2"), msg(6, "r1"), msg(2, "r2")])
    assert [(e.room_id, e.seq) for e in out if isinstance(e, NewMessage)] == [
        ("r1", 6),
        ("r2", 1),
        ("r2", 6),
    ]


def test_messages_of_a_room_the_session_is_not_in_pass_through() -> None:
    """A newMessage of an unknown room is passed on unfiltered and creates no position."""
    session = ClientSession(aid=ME)
    assert seqs(passed(session, [msg(2, "rX"), msg(2, "rX"), msg(1, "rX")])) == [2, 2, 1]
    assert "rX" not in session.rooms


@pytest.mark.parametrize(
    "event",
    [
        Typing("r1", "bob", True),
        UserJoined("r1", "carol", None),
        HostUpdated("r1", "bob"),
        Gap("r1", "e1", 0, 3),
    ],
)
def test_other_events_pass_unchanged(event: Event) -> None:
    """Events other than joins, messages and leaves are passed on and change no position."""
    session = in_room(last_seq=4)
    assert session.receive(event) == Received([event], [])
    assert session.rooms["r1"].seq == 4


def test_a_second_join_on_the_same_connection_changes_nothing() -> None:
    """A joinSuccess for a room already held (a repeated join) leaves its position and key."""
    session = in_room(last_seq=2)
    passed(session, [msg(3)])
    again = joined("r1", 3)
    assert session.receive(again, b"other key") == Received([again], [])
    position = session.rooms["r1"]
    assert (position.seq, position.public_key) == (3, KEY)
    assert seqs(passed(session, [msg(3), msg(4)])) == [4]


# -- rejoin frames --------------------------------------------------------------------------


def test_rejoin_frames_carry_since_and_the_first_public_key() -> None:
    """One joinChatroom per room: `since` the last position passed on, the first join's key."""
    session = in_room("r1", 4, epoch="epA")
    passed(session, [msg(5), msg(6)])
    session.receive(joined("r2", 0, epoch="epB"), None)
    assert session.rejoin_frames() == [
        {
            "type": "joinChatroom",
            "roomId": "r1",
            "since": {"epoch": "epA", "seq": 6},
            "publicKey": KEY,
        },
        {"type": "joinChatroom", "roomId": "r2", "since": {"epoch": "epB", "seq": 0}},
    ]


def test_no_rooms_no_rejoin_frames() -> None:
    """A session in no room has nothing to rejoin and is not replaying."""
    session = ClientSession(aid=ME)
    assert session.rejoin_frames() == []
    assert not session.replaying()


def test_the_public_key_survives_rejoins() -> None:
    """A rejoin's joinSuccess does not overwrite the key of the first join."""
    session = in_room(last_seq=1)
    session.rejoin_frames()
    session.receive(joined("r1", 1, recovered=True), b"ignored")
    [again] = session.rejoin_frames()
    assert again["publicKey"] == KEY


# -- recovery -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "last_seq", "replay"),
    [
        (0, 1, [1]),
        (4, 7, [5, 6, 7]),
        (4, 7, [3, 4, 5, 5, 6, 4, 7]),
        (10, 510, list(range(11, 511))),
    ],
)
def test_a_recovered_rejoin_is_replaying_until_last_seq(
    position: int, last_seq: int, replay: list[int]
) -> None:
    """recovered true with lastSeq above the position: ready exactly when seq lastSeq arrives."""
    session = in_room(last_seq=position)
    session.rejoin_frames()
    assert session.replaying()
    reply = joined("r1", last_seq, recovered=True)
    assert session.receive(reply) == Received([reply], [])
    assert session.replaying()
    for seq in replay[:-1]:
        assert session.receive(msg(seq)).ready == []
        assert session.replaying()
    last = session.receive(msg(replay[-1]))
    assert last == Received([msg(last_seq)], ["r1"])
    assert not session.replaying()
    assert session.receive(msg(last_seq + 1)) == Received([msg(last_seq + 1)], [])


@pytest.mark.parametrize("position", [0, 9])
def test_a_recovered_rejoin_that_missed_nothing_is_ready_at_once(position: int) -> None:
    """recovered true with lastSeq at the position: the room is ready with the joinSuccess."""
    session = in_room(last_seq=position)
    session.rejoin_frames()
    reply = joined("r1", position, recovered=True)
    assert session.receive(reply) == Received([reply], ["r1"])
    assert not session.replaying()
    assert session.rooms["r1"].seq == position


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (("e1", 5), ("e1", 900)),  # the same stream, its history trimmed past our position
        (("e1", 5), ("e2", 0)),  # a new stream (the store lost data)
        (("e1", 50), ("e2", 3)),  # a new stream whose seq is below the old position
        (("e1", 5), ("e2", 80)),  # a new stream whose seq skipped ahead
    ],
)
@pytest.mark.parametrize("recovered", [False, None])
def test_an_unrecovered_rejoin_passes_joined_then_a_gap(
    old: tuple[str, int], new: tuple[str, int], recovered: bool | None
) -> None:
    """recovered false (or absent): Joined, then Gap(room, epoch, last_seen, lastSeq), ready."""
    session = in_room(last_seq=old[1], epoch=old[0])
    session.rejoin_frames()
    reply = joined("r1", new[1], epoch=new[0], recovered=recovered)
    assert session.receive(reply) == Received([reply, Gap("r1", new[0], old[1], new[1])], ["r1"])
    assert not session.replaying()
    position = session.rooms["r1"]
    assert (position.epoch, position.seq) == new
    # The new stream's position now filters, and the next rejoin starts from it.
    assert seqs(passed(session, [msg(new[1]), msg(new[1] + 1)])) == [new[1] + 1]
    assert session.rejoin_frames()[0]["since"] == {"epoch": new[0], "seq": new[1] + 1}


def test_replaying_waits_for_every_room() -> None:
    """replaying() stays true while any room's join reply or replay is outstanding."""
    session = in_room("r1", 2)
    session.receive(joined("r2", 0), None)
    session.receive(joined("r3", 1), None)
    session.rejoin_frames()
    assert session.receive(joined("r1", 2, recovered=True)).ready == ["r1"]
    assert session.replaying()  # r2 and r3 have not answered
    assert session.receive(joined("r2", 2, recovered=True)).ready == []
    assert session.replaying()  # r2 replays, r3 has not answered
    assert session.receive(joined("r3", 9, recovered=False)).ready == ["r3"]
    assert session.replaying()  # r2 still replays
    assert session.receive(msg(1, "r2")).ready == []
    assert session.replaying()
    assert session.receive(msg(2, "r2")).ready == ["r2"]
    assert not session.replaying()


def test_a_replay_cut_by_a_drop_resumes_from_where_it_stopped() -> None:
    """A drop mid-replay: the next rejoin's since is the last replayed seq, and it completes."""
    session = in_room(last_seq=5)
    session.rejoin_frames()
    session.receive(joined("r1", 10, recovered=True))
    passed(session, [msg(6), msg(7)])
    [again] = session.rejoin_frames()
    assert again["since"] == {"epoch": "e1", "seq": 7}
    session.receive(joined("r1", 12, recovered=True))
    out = [session.receive(msg(seq)) for seq in range(6, 13)]
    assert seqs([e for r in out for e in r.events]) == [8, 9, 10, 11, 12]
    assert [r.ready for r in out] == [[]] * 6 + [["r1"]]
    assert not session.replaying()


def test_a_replay_cut_by_a_drop_then_a_gap_is_live() -> None:
    """A drop mid-replay, then a rejoin answered recovered false: live, not replaying forever."""
    session = in_room(last_seq=5)
    session.rejoin_frames()
    session.receive(joined("r1", 10, recovered=True))
    passed(session, [msg(6), msg(7)])
    session.rejoin_frames()
    reply = joined("r1", 3, epoch="e2", recovered=False)
    assert session.receive(reply) == Received([reply, Gap("r1", "e2", 7, 3)], ["r1"])
    # The stale replay_until (10, of the old stream) keeps replaying() true, so the
    # shell's _rejoin waits for a replay that never comes; a ready follows at seq 10.
    assert not session.replaying()
    assert [session.receive(msg(seq)).ready for seq in range(4, 11)] == [[]] * 7


# -- unechoed messages -------------------------------------------------------------------


def test_unechoed_lists_sent_messages_in_send_order() -> None:
    """Messages recorded with sent_message are unechoed, oldest first."""
    session = in_room()
    for client_msg_id in ["c3", "c1", "c2"]:
        session.sent_message(frame(client_msg_id))
    assert session.unechoed("r1") == [frame("c3"), frame("c1"), frame("c2")]


@pytest.mark.parametrize(
    ("echoes", "left"),
    [
        ([("me", "c2")], ["c1", "c3"]),
        ([("me", "c1"), ("me", "c3")], ["c2"]),
        ([("bob", "c2")], ["c1", "c2", "c3"]),  # another AID's message with our id
        ([("me", "zz")], ["c1", "c2", "c3"]),  # our message sent by another client of ours
        ([("me", None)], ["c1", "c2", "c3"]),
        ([("me", "c1"), ("me", "c2"), ("me", "c3")], []),
    ],
)
def test_an_echo_from_this_aid_confirms_one_message(
    echoes: list[tuple[str, str | None]], left: list[str]
) -> None:
    """A newMessage from this AID with a sent clientMsgId removes that one message only."""
    session = in_room()
    for sent in ["c1", "c2", "c3"]:
        session.sent_message(frame(sent))
    for seq, (sender, client_msg_id) in enumerate(echoes, start=1):
        session.receive(msg(seq, sender=sender, client_msg_id=client_msg_id))
    assert session.unechoed("r1") == [frame(c) for c in left]


def test_an_echo_in_another_room_confirms_nothing() -> None:
    """An echo with the same clientMsgId in another room leaves this room's message."""
    session = in_room("r1")
    session.receive(joined("r2"), None)
    session.sent_message(frame("c1", "r1"))
    session.receive(msg(1, "r2", sender=ME, client_msg_id="c1"))
    assert session.unechoed("r1") == [frame("c1", "r1")]


def test_a_repeated_echo_is_dropped_and_confirms_nothing_new() -> None:
    """A repeat of an echo (seq already seen) does not confirm a message sent again since."""
    session = in_room()
    session.sent_message(frame("c1"))
    session.receive(msg(1, sender=ME, client_msg_id="c1"))
    session.sent_message(frame("c1"))
    assert session.receive(msg(1, sender=ME, client_msg_id="c1")) == Received([], [])
    assert session.unechoed("r1") == [frame("c1")]


def test_forget_message_drops_one_and_tolerates_unknowns() -> None:
    """forget_message removes that message; unknown ids and rooms are no error."""
    session = in_room()
    session.sent_message(frame("c1"))
    session.sent_message(frame("c2"))
    session.forget_message("r1", "c1")
    session.forget_message("r1", "nope")
    session.forget_message("rX", "c2")
    assert session.unechoed("r1") == [frame("c2")]


def test_messages_for_rooms_not_held_are_not_recorded() -> None:
    """sent_message for a room the session is not in records nothing."""
    session = in_room()
    session.sent_message(frame("c1", "rX"))
    assert session.unechoed("rX") == []
    assert session.unechoed("r1") == []


def test_after_a_replay_unechoed_is_what_the_replay_did_not_echo() -> None:
    """Messages echoed by the replay are confirmed; the rest are left for the shell to resend."""
    session = in_room(last_seq=2)
    for client_msg_id in ["c1", "c2", "c3"]:
        session.sent_message(frame(client_msg_id))
    session.rejoin_frames()
    session.receive(joined("r1", 4, recovered=True))
    session.receive(msg(3, sender=ME, client_msg_id="c2"))
    assert session.receive(msg(4, sender="bob", client_msg_id="c1")).ready == ["r1"]
    assert session.unechoed("r1") == [frame("c1"), frame("c3")]


# -- forgetting rooms -----------------------------------------------------------------------

LEAVES = [
    LeftRoom("r1", "left"),
    LeftRoom("r1", "kicked"),
    RoomDeleted("r1", "deleted"),
    RoomDeleted("r1", "expired"),
]


@pytest.mark.parametrize("leave", LEAVES)
def test_leaving_forgets_the_room(leave: Event) -> None:
    """leftChatroom and roomDeleted are passed on and the room gets no rejoin frame afterwards."""
    session = in_room("r1", 3)
    session.receive(joined("r2", 0), None)
    session.sent_message(frame("c1"))
    assert session.receive(leave) == Received([leave], [])
    assert [f["roomId"] for f in session.rejoin_frames()] == ["r2"]
    assert session.unechoed("r1") == []
    # Messages of the forgotten room are no longer filtered.
    assert seqs(passed(session, [msg(2)])) == [2]


@pytest.mark.parametrize("leave", LEAVES)
def test_leaving_while_rejoining_ends_the_wait(leave: Event) -> None:
    """A room left or deleted while its rejoin or replay is outstanding is waited for no more."""
    session = in_room("r1", 3)
    session.rejoin_frames()
    session.receive(leave)
    assert not session.replaying()
    session = in_room("r1", 3)
    session.rejoin_frames()
    session.receive(joined("r1", 8, recovered=True))
    session.receive(leave)
    assert not session.replaying()


def test_rejoin_failed_forgets_the_room() -> None:
    """A room roomd refused to rejoin is not waited for, not rejoined again, has no unechoed."""
    session = in_room("r1", 3)
    session.receive(joined("r2", 0), None)
    session.sent_message(frame("c1"))
    session.rejoin_frames()
    session.rejoin_failed("r1")
    session.receive(joined("r2", 0, recovered=True))
    assert not session.replaying()
    assert [f["roomId"] for f in session.rejoin_frames()] == ["r2"]
    assert session.unechoed("r1") == []
    session.rejoin_failed("never-held")


def test_the_leave_of_an_unknown_room_is_passed_on() -> None:
    """A leave for a room the session does not hold is passed on and changes nothing."""
    session = in_room("r1", 3)
    leave = LeftRoom("rX", "left")
    assert session.receive(leave) == Received([leave], [])
    assert list(session.rooms) == ["r1"]


# -- any interleaving -----------------------------------------------------------------------


# `queue` is what the current connection will still deliver, in order. The server
# orders live messages (others' and ours), the connection drops (the queue is lost,
# and maybe our last frame with it), and a rejoin is answered `recovered: true` and
# replays from up to a few seqs before `since`; frames already seen also come again
# anywhere. The shell resends `unechoed` on ready, as Client._dispatch does.
class Reconnects(RuleBasedStateMachine):
    """The application sees each seq once and in order, and each sent message is ordered once."""

    def __init__(self) -> None:
        super().__init__()
        self.session = ClientSession(aid=ME)
        self.stream: list[NewMessage] = []  # the room's stream; seq n is stream[n - 1]
        self.queue: list[NewMessage] = []
        self.connected = True
        self.seen: list[int] = []  # the seqs the application saw
        self.sent = 0
        self.start = 0

    @initialize(start=st.integers(0, 3))
    def join(self, start: int) -> None:
        """Join the room after `start` messages by others."""
        self.start = start
        for _ in range(start):
            self.order("bob", None)
        self.deliver_all(self.session.receive(joined("r1", start), KEY))

    def order(self, sender: str, client_msg_id: str | None) -> None:
        """Let the server order one message, and queue it if connected."""
        event = msg(len(self.stream) + 1, sender=sender, client_msg_id=client_msg_id)
        self.stream.append(event)
        if self.connected:
            self.queue.append(event)

    def deliver_all(self, received: Received) -> None:
        """Pass `received` to the application, and resend what a ready room left unechoed."""
        self.seen += seqs(received.events)
        for room_id in received.ready:
            for unechoed in self.session.unechoed(room_id):
                self.order(ME, unechoed["clientMsgId"])

    @rule(sender=st.sampled_from(["bob", "carol"]))
    def others_post(self, sender: str) -> None:
        """Another member's message is ordered (queued behind any replay)."""
        self.order(sender, None)

    @precondition(lambda self: self.connected and not self.session.replaying())
    @rule(fate=st.sampled_from(["echoed", "ordered then drop", "lost with the drop"]))
    def send(self, fate: str) -> None:
        """Send a message: ordered, or cut by a drop before or after roomd orders it."""
        self.sent += 1
        client_msg_id = f"c{self.sent}"
        self.session.sent_message(frame(client_msg_id))
        if fate != "lost with the drop":
            self.order(ME, client_msg_id)
        if fate != "echoed":
            self.drop()

    @precondition(lambda self: self.queue)
    @rule()
    def deliver(self) -> None:
        """The connection delivers its next event to the session."""
        self.deliver_all(self.session.receive(self.queue.pop(0)))

    @precondition(lambda self: self.seen)
    @rule(data=st.data())
    def repeat(self, data: st.DataObject) -> None:
        """A frame already seen arrives again, anywhere in the queue."""
        seq = data.draw(st.integers(1, self.seen[-1]))
        where = data.draw(st.integers(0, len(self.queue)))
        self.queue.insert(where, self.stream[seq - 1])

    @precondition(lambda self: self.connected)
    @rule()
    def drop(self) -> None:
        """The connection drops: what it had not delivered is lost."""
        self.connected = False
        self.queue = []

    @precondition(lambda self: not self.connected)
    @rule(overlap=st.integers(0, 3))
    def reconnect(self, overlap: int) -> None:
        """Rejoin with since; roomd answers recovered and replays, starting `overlap` early."""
        self.connected = True
        [rejoin] = self.session.rejoin_frames()
        since = rejoin["since"]
        assert since["epoch"] == "e1"
        assert rejoin["publicKey"] == KEY
        assert since["seq"] == (self.seen[-1] if self.seen else self.start)
        head = len(self.stream)
        self.queue = self.stream[max(0, since["seq"] - overlap) : head]
        self.deliver_all(self.session.receive(joined("r1", head, recovered=True)))

    @invariant()
    def each_seq_once_and_in_order(self) -> None:
        """The application has seen a contiguous run of seqs, each once, increasing."""
        assert self.seen == list(range(self.start + 1, self.start + 1 + len(self.seen)))

    @invariant()
    def caught_up_when_the_queue_is_empty(self) -> None:
        """Connected with nothing left to deliver: seen up to the head, ready, all confirmed."""
        if self.connected and not self.queue:
            head = len(self.stream)
            assert not self.seen or self.seen[-1] == head
            assert not self.session.replaying()
            assert self.session.unechoed("r1") == []
            # Every message this client sent was ordered exactly once: none lost, none twice.
            ours = Counter(m.client_msg_id for m in self.stream if m.sender == ME)
            assert ours == Counter(f"c{n}" for n in range(1, self.sent + 1))


Reconnects.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestReconnects = Reconnects.TestCase
