"""SecureRoom without a network: admission, deliveries, rotation and reading, event by event."""

from __future__ import annotations

import itertools

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomd.client import e2ee
from roomd.client.events import (
    ErrorEvent,
    HostUpdated,
    Joined,
    Member,
    NewMessage,
    RoomKeyUpdated,
    Signal,
    UserJoined,
    UserLeft,
)
from roomd.client.plaintext import Text, encode_body
from roomd.client.secure_room import (
    DELIVERED_EPOCHS,
    Admitted,
    KeyRotated,
    Message,
    Outcome,
    SecureRoom,
    Signals,
    Unreadable,
    UpdateKey,
)

ROOM = "room-1"


def joined(
    room: SecureRoom, host: str, *others: SecureRoom, key: bytes | None = None, epoch: int = 0
) -> Joined:
    """Return the joinSuccess `room`'s client gets, with `host` and members in that order."""
    members = tuple(Member(r.me, r.public_key) for r in (*others, room))
    return Joined(ROOM, room.me, host, key, members, 0, "ep", epoch, None)


@attrs.define
class Relay:
    """Carries the rooms' actions as roomd would: signals to their `to`, key updates to all."""

    rooms: dict[str, SecureRoom]
    shown: dict[str, list[object]] = attrs.field(factory=dict)

    def feed(self, aid: str, event: object) -> None:
        """Give `event` to `aid`'s room and carry out what it sets off."""
        outcome = self.rooms[aid].receive(event)  # type: ignore[arg-type]
        self.shown.setdefault(aid, []).extend(outcome.events)
        self.carry(aid, outcome)

    def carry(self, sender: str, outcome: Outcome) -> None:
        """Deliver `outcome`'s actions from `sender`."""
        for action in outcome.actions:
            if isinstance(action, Signals):
                for to, payload in action.signals:
                    if to in self.rooms:
                        self.feed(to, Signal(ROOM, sender, payload))
            else:
                assert isinstance(action, UpdateKey)
                update = RoomKeyUpdated(ROOM, action.sealed, sender, action.key_epoch)
                for aid in list(self.rooms):
                    self.feed(aid, update)


def new_room(aid: str, *secrets: bytes) -> SecureRoom:
    """Return the SecureRoom of a new client `aid` holding `secrets`."""
    return SecureRoom(ROOM, aid, e2ee.new_device_key(), list(secrets))


def created_room() -> tuple[SecureRoom, Relay]:
    """Return alice's freshly created room at epoch 1, and a relay with her in it."""
    alice = new_room("alice")
    relay = Relay({"alice": alice})
    relay.feed("alice", joined(alice, "alice"))
    return alice, relay


def invite(alice: SecureRoom, relay: Relay, aid: str, secret: bytes | None = None) -> SecureRoom:
    """Let `aid` join alice's room holding `secret` (her invite secret by default)."""
    secret = alice.invite_secret if secret is None else secret
    assert secret is not None
    member = new_room(aid, secret)
    relay.rooms[aid] = member
    relay.feed("alice", UserJoined(ROOM, aid, member.public_key))
    for other in relay.rooms.values():
        if other is not member and other is not alice:
            other.receive(UserJoined(ROOM, aid, member.public_key))
    others = [r for r in relay.rooms.values() if r is not member]
    sealed = _sealed_for(alice)
    relay.feed(aid, joined(member, "alice", *others, key=sealed, epoch=alice.key_epoch))
    return member


def _sealed_for(alice: SecureRoom) -> bytes:
    secret = alice.invite_secret
    assert secret is not None
    return e2ee.seal_room_key(secret, ROOM, alice.key_epoch, alice.keys[alice.key_epoch])


def message(room: SecureRoom, seq: int, text: str) -> NewMessage:
    """Return the newMessage of `text` encrypted by `room`'s client with its current key."""
    current = room.current_key()
    assert current is not None
    epoch, key = current
    iv, ciphertext = e2ee.encrypt_message(key, ROOM, room.me, epoch, encode_body(Text(text, 1)))
    return NewMessage(ROOM, seq, f"m{seq}", room.me, ciphertext, iv, None, 1, epoch)


def test_a_creator_gives_its_room_epoch_1_and_an_invite_secret() -> None:
    """Creating a room (keyEpoch 0, no key) rotates to epoch 1; the creator holds key and secret."""
    alice = new_room("alice")
    outcome = alice.receive(joined(alice, "alice"))
    (update,) = outcome.actions
    assert isinstance(update, UpdateKey) and update.key_epoch == 1
    assert alice.current_key() is None
    confirmed = alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", 1))
    assert confirmed.events[0] == KeyRotated(ROOM, 1, "alice", True)
    assert confirmed.actions == ()
    assert alice.current_key() is not None and alice.invite_secret is not None
    assert alice.admitted == {"alice"}


def test_an_invited_joiner_opens_the_sealed_key_knocks_and_is_admitted() -> None:
    """The link's secret opens the joinSuccess key; the knock admits; nothing older to deliver."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    assert bob.keys == alice.keys
    assert Admitted(ROOM, "bob") in relay.shown["alice"]
    assert "bob" in alice.admitted


def test_a_joiner_without_the_current_sealed_key_gets_it_delivered() -> None:
    """A member whose secret does not open the current key gets it from the host on its knock."""
    alice, relay = created_room()
    secret = alice.invite_secret
    relay.feed("alice", UserLeft(ROOM, "nobody", "left"))  # not admitted: no rotation
    assert alice.key_epoch == 1
    alice.secrets.append(e2ee.new_secret())  # alice issued a newer invite; bob holds the old one
    assert secret is not None
    bob = new_room("bob", secret)
    relay.rooms["bob"] = bob
    relay.feed("alice", UserJoined(ROOM, "bob", bob.public_key))
    sealed_with_other = e2ee.seal_room_key(e2ee.new_secret(), ROOM, 1, alice.keys[1])
    relay.feed("bob", joined(bob, "alice", alice, key=sealed_with_other, epoch=1))
    assert bob.keys == alice.keys


@pytest.mark.parametrize("secret", [None, b"\x00" * 32])
def test_no_key_without_a_matching_invite_secret(secret: bytes | None) -> None:
    """A joiner with no secret, or a wrong one, is not admitted and receives no key."""
    alice, relay = created_room()
    eve = new_room("eve", *([secret] if secret else []))
    relay.rooms["eve"] = eve
    relay.feed("alice", UserJoined(ROOM, "eve", eve.public_key))
    relay.feed("eve", joined(eve, "alice", alice))
    assert eve.keys == {} and "eve" not in alice.admitted
    assert not any(isinstance(e, Admitted) for e in relay.shown["alice"])
    unread = eve.receive(message(alice, 1, "hello"))
    assert isinstance(unread.events[0], Unreadable)


def test_a_knock_for_another_device_key_is_refused() -> None:
    """The knock binds the device key the room lists: one made for another key admits nothing."""
    alice, _ = created_room()
    secret = alice.invite_secret
    assert secret is not None
    listed, other = e2ee.new_device_key(), e2ee.new_device_key()
    alice.receive(UserJoined(ROOM, "bob", e2ee.public_bytes(listed)))
    knock = e2ee.knock(secret, ROOM, "bob", e2ee.public_bytes(other), 0)
    assert alice.receive(Signal(ROOM, "bob", knock)) == Outcome()
    assert "bob" not in alice.admitted


def test_deliveries_only_from_the_current_host_with_its_listed_key() -> None:
    """A key delivered by a non-host, or by the host under another key, is ignored."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    mallory_key = e2ee.new_device_key()
    fake = e2ee.new_secret()
    from_mallory = e2ee.deliver_key(mallory_key, bob.public_key, ROOM, 7, fake)
    bob.receive(UserJoined(ROOM, "mallory", e2ee.public_bytes(mallory_key)))
    assert bob.receive(Signal(ROOM, "mallory", from_mallory)) == Outcome()
    as_host_other_key = e2ee.deliver_key(mallory_key, bob.public_key, ROOM, 7, fake)
    assert bob.receive(Signal(ROOM, "alice", as_host_other_key)) == Outcome()
    assert 7 not in bob.keys


@pytest.mark.parametrize(
    ("reason", "rotates"),
    [("left", True), ("kicked", True), ("disconnected", False), ("timeout", False)],
)
def test_the_host_rotates_when_an_admitted_member_leaves_or_is_kicked(
    reason: str, rotates: bool
) -> None:
    """Leaving and kicks rotate; a disconnect or timeout does not (the member comes back)."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    carol = invite(alice, relay, "carol")
    del relay.rooms["carol"]
    relay.feed("bob", UserLeft(ROOM, "carol", reason))
    relay.feed("alice", UserLeft(ROOM, "carol", reason))
    assert alice.key_epoch == (2 if rotates else 1)
    assert bob.current_key() == alice.current_key()
    assert (2 in carol.keys) is False
    assert ("carol" in alice.admitted) is not rotates


def test_a_member_never_admitted_sets_off_no_rotation() -> None:
    """An uninvited member leaving changes no key."""
    alice, relay = created_room()
    relay.feed("alice", UserJoined(ROOM, "eve", e2ee.public_bytes(e2ee.new_device_key())))
    assert alice.receive(UserLeft(ROOM, "eve", "left")).actions == ()
    assert alice.key_epoch == 1


def test_a_new_host_rotates_and_the_others_knock_to_it() -> None:
    """hostUpdated naming this client: it forgets old admissions and rotates; others knock to it."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    carol = invite(alice, relay, "carol")
    del relay.rooms["alice"]
    for aid in ("bob", "carol"):
        relay.feed(aid, UserLeft(ROOM, "alice", "left"))
    # roomd sends hostUpdated to both before anything either of them sends in reply.
    rotation = bob.receive(HostUpdated(ROOM, "bob"))
    knock = carol.receive(HostUpdated(ROOM, "bob"))
    relay.carry("bob", rotation)
    relay.carry("carol", knock)
    assert bob.admitted == {"bob", "carol"}
    assert bob.key_epoch == carol.key_epoch == 2
    assert carol.current_key() == bob.current_key()


def test_a_refused_rotation_starts_again_from_the_rooms_epoch() -> None:
    """conflict with keyEpoch 5 during a rotation: the next UpdateKey names epoch 6."""
    alice = new_room("alice")
    alice.receive(joined(alice, "alice"))
    outcome = alice.rotation_refused(5)
    (update,) = outcome.actions
    assert isinstance(update, UpdateKey) and update.key_epoch == 6


def test_a_message_read_once_its_key_arrives() -> None:
    """Unreadable while the key is missing; the same seq shows as a Message when it comes."""
    alice, relay = created_room()
    secret = alice.invite_secret
    assert secret is not None
    bob = new_room("bob", secret)
    early = message(alice, 1, "early")
    first = bob.receive(early)
    assert isinstance(first.events[0], Unreadable)
    relay.rooms["bob"] = bob
    relay.feed("alice", UserJoined(ROOM, "bob", bob.public_key))
    relay.feed("bob", joined(bob, "alice", alice, epoch=1))  # no sealed key: delivery
    shown = [e for e in relay.shown["bob"] if isinstance(e, Message)]
    assert [(m.seq, m.text) for m in shown] == [(1, "early")]


def test_a_knock_after_a_long_absence_gets_at_most_the_last_16_keys() -> None:
    """Catch-up delivers every held key from next_epoch on, capped at DELIVERED_EPOCHS."""
    alice, relay = created_room()
    for epoch in range(2, 30):
        alice.keys[epoch] = e2ee.new_secret()
    alice.key_epoch = 29
    secret = alice.invite_secret
    assert secret is not None
    bob = new_room("bob", secret)
    relay.rooms["bob"] = bob
    relay.feed("alice", UserJoined(ROOM, "bob", bob.public_key))
    relay.feed("bob", joined(bob, "alice", alice, epoch=29))
    assert sorted(bob.keys) == list(range(30 - DELIVERED_EPOCHS, 30))


def test_a_message_that_fails_to_open_is_unreadable_not_an_error() -> None:
    """Tampered ciphertext under a held key shows as Unreadable ("cannot open")."""
    alice, _ = created_room()
    sent = message(alice, 1, "x")
    tampered = attrs.evolve(sent, ciphertext=bytes([sent.ciphertext[0] ^ 1]) + sent.ciphertext[1:])
    (shown,) = alice.receive(tampered).events
    assert isinstance(shown, Unreadable) and shown.reason == "cannot open"


@given(payload=st.binary(max_size=200), sender=st.sampled_from(["alice", "bob", "zed"]))
def test_any_signal_payload_is_handled_without_error(payload: bytes, sender: str) -> None:
    """A signal of any bytes, from anyone, never raises and never adds a key or an admission."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    keys, admitted = dict(bob.keys), set(alice.admitted)
    for room in (alice, bob):
        room.receive(Signal(ROOM, sender, payload))
    assert bob.keys == keys and alice.admitted == admitted


def test_a_listed_key_of_the_wrong_size_never_crashes_the_host() -> None:
    """A member listing a 33-byte publicKey and knocking gets nothing, and nothing raises."""
    alice, _ = created_room()
    secret = alice.invite_secret
    assert secret is not None
    odd_key = bytes(33)
    alice.receive(UserJoined(ROOM, "odd", odd_key))
    knock = e2ee.knock(secret, ROOM, "odd", bytes(32), 0)
    assert alice.receive(Signal(ROOM, "odd", knock)) == Outcome()
    assert "odd" not in alice.admitted


def test_a_member_rejoining_with_a_low_order_key_gets_no_delivery_and_crashes_no_rotation() -> None:
    """bob comes back listing an all-zero key (no shared secret): the rotation skips him."""
    alice, relay = created_room()
    invite(alice, relay, "bob")
    invite(alice, relay, "carol")
    alice.receive(UserLeft(ROOM, "bob", "disconnected"))
    alice.receive(UserJoined(ROOM, "bob", bytes(32)))
    (update,) = alice.receive(UserLeft(ROOM, "carol", "left")).actions
    assert isinstance(update, UpdateKey)
    confirmed = alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", update.key_epoch))
    assert confirmed.actions == ()


def refusal(code: str, batch: Signals, retry_after: float | None = None) -> ErrorEvent:
    """Return roomd's `code` refusal of `batch`, naming the frame as the SDK's client does."""
    signals = [{"to": to, "payload": payload} for to, payload in batch.signals]
    request = {"type": "signal", "roomId": ROOM, "signals": signals}
    return ErrorEvent(code, "refused", ROOM, retry_after, None, request)


def rotated_for(alice: SecureRoom, relay: Relay, *aids: str) -> Signals:
    """Invite `aids` and one more who leaves; return the batch of the rotation that follows."""
    for aid in (*aids, "zed"):
        invite(alice, relay, aid)
    del relay.rooms["zed"]
    (update,) = alice.receive(UserLeft(ROOM, "zed", "left")).actions
    assert isinstance(update, UpdateKey)
    confirmed = alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", update.key_epoch))
    (batch,) = confirmed.actions
    assert isinstance(batch, Signals) and [to for to, _ in batch.signals] == list(aids)
    return batch


def test_a_refused_delivery_batch_goes_again_to_those_still_present() -> None:
    """notFound for a batch (someone left meanwhile): the same deliveries, minus the absent."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob", "carol")
    # carol's connection went before roomd took the batch: roomd refused all of it.
    alice.receive(UserLeft(ROOM, "carol", "disconnected"))
    (retry,) = alice.receive(refusal("notFound", batch)).actions
    assert isinstance(retry, Signals) and retry.signals == batch.signals[:1]


def test_a_batch_refused_before_its_absent_recipient_is_seen_to_go_waits_for_it() -> None:
    """In a cluster roomd's refusal can come before the userLeft it saw: resent after it."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob", "carol")
    # Sent now, it would be refused again: carol is still listed here.
    assert alice.receive(refusal("notFound", batch)).actions == ()
    (retry,) = alice.receive(UserLeft(ROOM, "carol", "disconnected")).actions
    assert isinstance(retry, Signals) and retry.signals == batch.signals[:1]
    # Sent once: later departures send nothing more.
    assert alice.receive(UserLeft(ROOM, "bob", "disconnected")).actions == ()


def test_the_refusal_of_an_older_batch_resends_that_batch_not_the_newest() -> None:
    """Each refusal names its frame: bob's catch-up batch goes again, not carol's."""
    alice, relay = created_room()
    bobs = rotated_for(alice, relay, "bob")
    # A newer batch goes out: carol's delivery after her knock.
    assert invite(alice, relay, "carol").current_key() is not None
    # roomd refused the older one, which also named dave, who is gone.
    bob_and_dave = Signals(ROOM, (*bobs.signals, ("dave", b"for dave")))
    (retry,) = alice.receive(refusal("notFound", bob_and_dave)).actions
    assert isinstance(retry, Signals) and retry.signals == bobs.signals


@pytest.mark.parametrize("code", ["rateLimited", "unavailable"])
def test_a_batch_refused_for_now_goes_again_to_those_still_present(code: str) -> None:
    """rateLimited or unavailable: roomd did nothing, so the signals go again, unshown."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob", "carol", "dave")
    alice.receive(UserLeft(ROOM, "dave", "disconnected"))
    again = alice.receive(refusal(code, batch, retry_after=0.5))
    assert again.events == ()  # the application sent none of them
    (retry,) = again.actions
    assert isinstance(retry, Signals) and retry.signals == batch.signals[:2]


def test_a_knock_refused_for_now_is_sent_again_and_admits() -> None:
    """A joiner's knock refused by the rate limit goes again, and the host admits it."""
    alice, relay = created_room()
    secret = alice.invite_secret
    assert secret is not None
    bob = new_room("bob", secret)
    alice.receive(UserJoined(ROOM, "bob", bob.public_key))
    (knock,) = bob.receive(joined(bob, "alice", alice)).actions
    assert isinstance(knock, Signals) and [to for to, _ in knock.signals] == ["alice"]
    (again,) = bob.receive(refusal("rateLimited", knock, retry_after=0.2)).actions
    relay.rooms["bob"] = bob
    relay.carry("bob", Outcome(actions=(again,)))
    assert Admitted(ROOM, "bob") in relay.shown["alice"]


def test_other_refusals_of_a_batch_send_nothing() -> None:
    """A refusal resending cannot mend (badRequest, forbidden) is shown, not retried."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob")
    for code in ("badRequest", "forbidden", "tooLarge"):
        outcome = alice.receive(refusal(code, batch))
        assert outcome.actions == ()
        assert outcome.events == (refusal(code, batch),)  # shown: nothing was resent


def test_a_rotation_that_could_not_be_sent_is_made_on_the_next_join_as_host() -> None:
    """A rotation lost with the connection is owed: the rejoin as host makes it."""
    alice, relay = created_room()
    invite(alice, relay, "bob")
    (update,) = alice.receive(UserLeft(ROOM, "bob", "left")).actions
    assert isinstance(update, UpdateKey) and update.key_epoch == 2
    alice.rotation_failed()
    again = alice.receive(joined(alice, "alice", epoch=1))
    (retry,) = again.actions
    assert isinstance(retry, UpdateKey) and retry.key_epoch == 2


def test_the_hosts_own_kick_rotates_and_retires_every_invite_secret() -> None:
    """Kicking rotates even a member never admitted (it may hold the key from its link's
    sealed key), and the old invite secrets stop admitting."""
    alice, _ = created_room()
    old_secret = alice.invite_secret
    alice.receive(UserJoined(ROOM, "lurker", e2ee.public_bytes(e2ee.new_device_key())))
    (update,) = alice.receive(UserLeft(ROOM, "lurker", "kicked")).actions
    assert isinstance(update, UpdateKey)
    alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", update.key_epoch))
    assert alice.secrets == [alice.invite_secret] and alice.invite_secret != old_secret
    newcomer = e2ee.new_device_key()
    alice.receive(UserJoined(ROOM, "newcomer", e2ee.public_bytes(newcomer)))
    assert old_secret is not None
    knock = e2ee.knock(old_secret, ROOM, "newcomer", e2ee.public_bytes(newcomer), 0)
    assert alice.receive(Signal(ROOM, "newcomer", knock)) == Outcome()


def test_a_member_admitted_before_a_kick_knocks_back_with_the_old_secret() -> None:
    """Back from a disconnect after a kick retired its secret, an admitted member gets keys."""
    alice, relay = created_room()
    bob = invite(alice, relay, "bob")
    del relay.rooms["bob"]
    alice.receive(UserLeft(ROOM, "bob", "disconnected"))
    relay.feed("alice", UserJoined(ROOM, "carol", e2ee.public_bytes(e2ee.new_device_key())))
    relay.feed("alice", UserLeft(ROOM, "carol", "kicked"))
    assert alice.key_epoch == 2
    relay.rooms["bob"] = bob
    relay.feed("alice", UserJoined(ROOM, "bob", bob.public_key))
    relay.feed("bob", joined(bob, "alice", alice, epoch=2))
    assert bob.current_key() == alice.current_key()


def test_a_refused_message_leaves_the_hosts_rotation_in_flight_alone() -> None:
    """conflict on a message while this host's rotation is being confirmed: the rotation stands."""
    alice, _ = created_room()
    alice.receive(UserJoined(ROOM, "bob", e2ee.public_bytes(e2ee.new_device_key())))
    (update,) = alice.receive(UserLeft(ROOM, "bob", "kicked")).actions
    assert isinstance(update, UpdateKey)
    alice.message_refused(2)
    confirmed = alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", 2))
    assert confirmed.events[0] == KeyRotated(ROOM, 2, "alice", True)


def test_messages_held_for_a_key_are_read_when_a_rejoin_opens_its_sealed_key() -> None:
    """A message held without its key shows as a Message once joinSuccess's sealed key opens."""
    alice, _ = created_room()
    secret = alice.invite_secret
    assert secret is not None
    bob = new_room("bob", secret)
    bob.receive(message(alice, 1, "early"))
    shown = bob.receive(joined(bob, "alice", alice, key=_sealed_for(alice), epoch=1)).events
    assert [(e.seq, e.text) for e in shown if isinstance(e, Message)] == [(1, "early")]


def lost_rotation(alice: SecureRoom, relay: Relay) -> SecureRoom:
    """Return bob, admitted, after a rotation whose delivery to him was lost on the way."""
    bob = invite(alice, relay, "bob")
    carol = invite(alice, relay, "carol")
    del relay.rooms["carol"]
    (update,) = alice.receive(UserLeft(ROOM, carol.me, "left")).actions
    assert isinstance(update, UpdateKey)
    bob.receive(UserLeft(ROOM, carol.me, "left"))
    alice.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", update.key_epoch))
    bob.receive(RoomKeyUpdated(ROOM, update.sealed, "alice", update.key_epoch))
    assert bob.current_key() is None
    return bob


def test_a_member_without_the_current_key_knocks_again_and_gets_it() -> None:
    """A lost delivery: 3 s after the key is first seen missing, bob knocks, and reads."""
    alice, relay = created_room()
    bob = lost_rotation(alice, relay)
    assert bob.knock_again(100.0) == Outcome()  # first seen missing
    assert bob.knock_again(102.9) == Outcome()
    again = bob.knock_again(103.0)
    (knock,) = again.actions
    assert isinstance(knock, Signals) and {to for to, _ in knock.signals} == {"alice"}
    relay.carry("bob", again)
    assert bob.current_key() == alice.current_key()
    assert bob.knock_again(200.0) == Outcome()  # holds the key: nothing to ask for


def test_knocking_again_backs_off_to_a_minute_and_starts_over_at_a_new_epoch() -> None:
    """Knocks at 3, 9, 21, 45, 93 s..., at most a minute apart; a rotation starts over."""
    alice, relay = created_room()
    bob = lost_rotation(alice, relay)
    knocked = [t for t in range(0, 400) if bob.knock_again(float(t)).actions]
    assert knocked[:5] == [3, 9, 21, 45, 93]
    assert {later - earlier for earlier, later in itertools.pairwise(knocked[4:])} == {60}
    update = RoomKeyUpdated(ROOM, b"sealed", "alice", 3)
    bob.receive(update)
    assert bob.knock_again(400.0) == Outcome() and bob.knock_again(402.0) == Outcome()
    assert bob.knock_again(403.0).actions


def test_no_knock_again_where_no_key_could_come() -> None:
    """The host never knocks; nor a member without an invite secret, nor to a keyless host."""
    alice, relay = created_room()
    lost_rotation(alice, relay)
    alice.receive(RoomKeyUpdated(ROOM, b"sealed", "alice", 9))  # even lacking its key
    uninvited = new_room("eve")
    uninvited.receive(joined(uninvited, "alice", alice))
    secret = alice.invite_secret
    assert secret is not None
    dave = new_room("dave", secret)
    keyless_host = Joined(
        ROOM,
        "dave",
        "zed",
        None,
        (Member("zed", None), Member("dave", dave.public_key)),
        0,
        "ep",
        1,
        None,
    )
    dave.receive(keyless_host)
    for room in (alice, uninvited, dave):
        assert [room.knock_again(float(t)).actions for t in range(0, 100, 3)] == [()] * 34


def test_a_batch_refused_for_now_goes_at_most_three_times_then_is_shown() -> None:
    """rateLimited again and again: two resends (three sends in all), then the error shows."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob")
    first = alice.receive(refusal("rateLimited", batch, retry_after=0.1))
    second = alice.receive(refusal("rateLimited", batch, retry_after=0.1))
    third = alice.receive(refusal("rateLimited", batch, retry_after=0.1))
    assert first.events == second.events == ()
    assert [*first.actions, *second.actions] == [batch] * 2
    assert third.actions == () and [type(e) for e in third.events] == [ErrorEvent]


def test_deliveries_refused_before_a_rejoin_go_to_those_the_rejoin_lists() -> None:
    """The host rejoins (its AID had another connection) still host: the fresh list decides."""
    alice, relay = created_room()
    batch = rotated_for(alice, relay, "bob", "carol")
    assert alice.receive(refusal("notFound", batch)).actions == ()  # carol still listed
    rejoined = Joined(
        ROOM,
        "alice",
        "alice",
        None,
        (Member("alice", alice.public_key), Member("bob", relay.rooms["bob"].public_key)),
        0,
        "ep",
        alice.key_epoch,
        True,
    )
    (resent,) = alice.receive(rejoined).actions
    assert isinstance(resent, Signals) and resent.signals == batch.signals[:1]
