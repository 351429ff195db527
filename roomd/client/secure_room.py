"""One end-to-end-encrypted room as one client sees it: the sans-I/O half of E2EE.md.

Theory of operation. A `SecureRoom` takes the room's events in the order roomd
sent them (`receive`) and returns what the application sees (plaintext
messages and reactions, key rotations, admissions, and the presence events as
they came) and what the shell must send (`Signals`, `UpdateKey`). It holds the
room keys of every epoch it learnt, the invite secrets it knows, and, while
this client is host, the AIDs it admitted. It never awaits and never reads a
clock.

- Every joiner knocks to the host with each invite secret it holds; a host
  admits a knock that matches a secret it knows and delivers, in one batch,
  every key it holds from the knock's epoch on (at most `DELIVERED_EPOCHS`).
- The host rotates (new room key and invite secret, `UpdateKey` of the next
  epoch) when an admitted member leaves, when it kicks anyone (retiring every
  invite secret: they still let admitted members knock back, never a new
  AID), when `hostUpdated` names it, and when a `joinSuccess` names it host of
  a room whose current key it lacks or whose rotation it still owes. Once
  `roomKeyUpdated` confirms the rotation, it delivers the new key to every
  admitted member still present, in one batch; a batch roomd refuses because
  one recipient left goes again without them (once this client has seen them
  go), and one refused with `rateLimited` or `unavailable` goes again to those
  still present (the shell holds its sends for `retryAfter`), three sends in
  all. A member whose key stays missing knocks again when the shell asks
  (`knock_again`).
- A delivery is taken only from the current host, sealed by the public key
  the room lists for it. A message whose key is not held yet is reported
  `Unreadable` and read (reported as a `Message` with the same `seq`) when the
  key arrives.
"""

from __future__ import annotations

import attrs
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from roomd.client import e2ee
from roomd.client.events import (
    ErrorEvent,
    Event,
    HostUpdated,
    Joined,
    NewMessage,
    RoomKeyUpdated,
    Signal,
    UserJoined,
    UserLeft,
)
from roomd.client.plaintext import Reaction, Text, decode_body

# A host delivers at most this many of the newest epochs to a knocking member.
DELIVERED_EPOCHS = 16
# A joiner knocks with at most this many of the invite secrets it holds.
KNOCK_SECRETS = 4
# A batch of signals refused for now (rateLimited, unavailable) goes at most this many
# times in all; a member still without the room's key knocks again anyway (`knock_again`).
SIGNAL_TRIES = 3
# A member whose key of the room's epoch is missing knocks again after this many seconds,
# then after twice as long each time, up to KNOCK_AGAIN_LONGEST.
KNOCK_AGAIN = 3.0
KNOCK_AGAIN_LONGEST = 60.0
# Batches resent after such a refusal whose tries are counted (the oldest forgotten first).
COUNTED_BATCHES = 64
ROTATING_REASONS = frozenset({"left", "kicked"})


@attrs.frozen
class Message:
    """A decrypted text message of a room."""

    room_id: str
    seq: int
    message_id: str
    sender: str
    text: str
    sent_at: int
    key_epoch: int


@attrs.frozen
class ReactionMessage:
    """A decrypted reaction: `sender` reacted to `message_id` (or took it back: `remove`)."""

    room_id: str
    seq: int
    sender: str
    message_id: str
    emoji: str
    remove: bool


@attrs.frozen
class Unreadable:
    """A message whose room key this client does not hold (yet), or that failed to open."""

    room_id: str
    seq: int
    sender: str
    key_epoch: int
    reason: str


@attrs.frozen
class KeyRotated:
    """The room moved to `key_epoch`; `readable` says whether this client holds its key."""

    room_id: str
    key_epoch: int
    by: str
    readable: bool


@attrs.frozen
class Admitted:
    """As host, this client admitted `aid`: its knock proved an invite secret."""

    room_id: str
    aid: str


SecureEvent = Message | ReactionMessage | Unreadable | KeyRotated | Admitted | Event


@attrs.frozen
class Signals:
    """Send these `(to, payload)` signals in one `signal.signals` batch."""

    room_id: str
    signals: tuple[tuple[str, bytes], ...]


@attrs.frozen
class UpdateKey:
    """Send `updateRoomKey` with this epoch and sealed key (a rotation, host only)."""

    room_id: str
    key_epoch: int
    sealed: bytes


Action = Signals | UpdateKey


@attrs.frozen
class Outcome:
    """What one input to a `SecureRoom` gives the application and the shell."""

    events: tuple[SecureEvent, ...] = ()
    actions: tuple[Action, ...] = ()


@attrs.frozen
class _Rotation:
    key_epoch: int
    room_key: bytes = attrs.field(repr=False)
    invite_secret: bytes = attrs.field(repr=False)


@attrs.define
class SecureRoom:
    """The keys, secrets and admissions of one room, fed its events in roomd's order."""

    room_id: str
    me: str
    # Secrets stay out of reprs: a traceback that shows locals must not print them.
    device: X25519PrivateKey = attrs.field(repr=False)
    secrets: list[bytes] = attrs.field(factory=list, repr=False)
    host: str = ""
    members: dict[str, bytes | None] = attrs.field(factory=dict)
    key_epoch: int = 0
    keys: dict[int, bytes] = attrs.field(factory=dict, repr=False)
    admitted: set[str] = attrs.field(factory=set)
    _rotation: _Rotation | None = attrs.field(default=None, repr=False)
    # A rotation that could not be sent (the connection dropped): made on the next join.
    _rotation_owed: bool = False
    # Signals of a batch roomd refused because a recipient had gone, kept until this
    # client sees that recipient go too; then the rest go again.
    _refused: tuple[tuple[str, bytes], ...] = attrs.field(default=(), repr=False)
    # How many times each batch resent after a refusal for now has gone.
    _tries: dict[tuple[tuple[str, bytes], ...], int] = attrs.field(factory=dict, repr=False)
    # When this client next knocks again while the key stays missing, and the wait after.
    _knock_at: float | None = None
    _knock_wait: float = KNOCK_AGAIN
    _held: dict[int, list[NewMessage]] = attrs.field(factory=dict, repr=False)
    # Secrets a kick retired: they still let an admitted member back from an absence
    # knock, never anyone new.
    _retired: list[bytes] = attrs.field(factory=list, repr=False)

    @property
    def public_key(self) -> bytes:
        """This client's device public key, the one it joins with."""
        return e2ee.public_bytes(self.device)

    @property
    def invite_secret(self) -> bytes | None:
        """The newest invite secret this client knows: the one to put in an invite link."""
        return self.secrets[-1] if self.secrets else None

    def current_key(self) -> tuple[int, bytes] | None:
        """Return the room's current epoch and its key, or None while the key is not held."""
        key = self.keys.get(self.key_epoch)
        return None if key is None else (self.key_epoch, key)

    def receive(self, event: Event) -> Outcome:
        """Return what `event`, the room's next event, shows and sets off."""
        match event:
            case Joined():
                self._tries.clear()
                joined = self._joined(event)
                return Outcome(joined.events, joined.actions + self._resend_refused(rejoined=True))
            case NewMessage():
                return Outcome(self._read(event))
            case Signal():
                return self._signal(event)
            case RoomKeyUpdated():
                return self._key_updated(event)
            case UserJoined(aid=aid, public_key=public_key):
                self.members.setdefault(aid, public_key)
            case UserLeft(aid=aid, reason=reason):
                left = self._left(event, aid, reason)
                return Outcome(left.events, left.actions + self._resend_refused())
            case HostUpdated(host=host):
                return self._host_updated(event, host)
            case ErrorEvent(request={"type": "signal"}):
                return self._signals_refused(event)
        return Outcome((event,))

    def rotation_refused(self, current: int) -> Outcome:
        """roomd refused this host's rotation with `conflict`: the room is at `current`.

        The rotation starts again from there.
        """
        self.key_epoch = current
        self._rotation = None
        if self.host != self.me:
            return Outcome()
        return Outcome(actions=(self._rotate(),))

    def message_refused(self, current: int) -> None:
        """roomd refused a message with `conflict`: the room is at `current`.

        The shell encrypts the message again once `current_key` is not None;
        a rotation of this host's own in flight is left alone.
        """
        self.key_epoch = current

    def knock_again(self, now: float) -> Outcome:
        """Return a knock to the host if this client's key has stayed missing long enough.

        The shell calls it every second or so. A member that lacks the key of
        the room's epoch, and could be given it (a host with a usable listed
        key, an invite secret to knock with), knocks `KNOCK_AGAIN` s after it
        was first seen missing, then after twice as long each time, up to
        `KNOCK_AGAIN_LONGEST`; a new epoch, host or join starts over. That
        mends a delivery roomd dropped (a rate limit answers only its first
        refusal) or one given up after `SIGNAL_TRIES`: the host answers every
        matching knock.
        """
        if (
            self.host == self.me
            or self.current_key() is not None
            or not self.secrets
            or not self._deliverable(self.host)
        ):
            self._knock_at = None
            return Outcome()
        if self._knock_at is None:
            self._knock_at, self._knock_wait = now + KNOCK_AGAIN, KNOCK_AGAIN
            return Outcome()
        if now < self._knock_at:
            return Outcome()
        knocks = self._knock()
        self._knock_wait = min(KNOCK_AGAIN_LONGEST, 2 * self._knock_wait)
        self._knock_at = now + self._knock_wait
        return Outcome(actions=knocks)

    def rotation_failed(self) -> None:
        """The shell could not send the rotation (the connection dropped, roomd is away).

        It is owed: the next `joinSuccess` naming this client host makes it.
        """
        self._rotation = None
        self._rotation_owed = True

    # -- handlers ----------------------------------------------------------------------

    def _joined(self, event: Joined) -> Outcome:
        previous_host = self.host
        self.host = event.host
        self.members = {m.aid: m.public_key for m in event.members}
        self.key_epoch = event.key_epoch  # roomd's order decides, even after it lost data
        events: tuple[SecureEvent, ...] = (event,)
        if event.encrypted_room_key is not None and event.key_epoch not in self.keys:
            self._open_sealed(event.key_epoch, event.encrypted_room_key)
            events += self._release(event.key_epoch)
        if self.host != self.me:
            return Outcome(events, self._knock())
        if previous_host != self.me:
            self.admitted = {self.me}
        if (self.current_key() is None or self._rotation_owed) and self._rotation is None:
            return Outcome(events, (self._rotate(),))
        return Outcome(events)

    def _left(self, event: UserLeft, aid: str, reason: str) -> Outcome:
        self.members.pop(aid, None)
        if reason == "kicked" and self.host == self.me:
            # This host's own kick: the member may hold the key from a link's sealed key
            # without ever knocking, and every secret it knew must stop admitting.
            self.admitted.discard(aid)
            self._retired.extend(self.secrets)
            self.secrets.clear()
            return Outcome((event,), () if self._rotation else (self._rotate(),))
        if reason not in ROTATING_REASONS or aid not in self.admitted:
            # A disconnect is not leaving: the member stays admitted and comes back.
            return Outcome((event,))
        self.admitted.discard(aid)
        if self.host == self.me and self._rotation is None:
            return Outcome((event,), (self._rotate(),))
        return Outcome((event,))

    def _host_updated(self, event: HostUpdated, host: str) -> Outcome:
        previous, self.host = self.host, host
        if host != self.me:
            return Outcome((event,), self._knock())
        if previous == self.me:
            return Outcome((event,))
        self.admitted = {self.me}
        if self._rotation is not None:
            return Outcome((event,))
        return Outcome((event,), (self._rotate(),))

    def _key_updated(self, event: RoomKeyUpdated) -> Outcome:
        self.key_epoch = event.key_epoch
        self._knock_at = None  # a new epoch: knocking again starts over
        rotation = self._rotation
        if rotation is not None and event.by == self.me and event.key_epoch == rotation.key_epoch:
            self._rotation = None
            self.keys[rotation.key_epoch] = rotation.room_key
            self.secrets.append(rotation.invite_secret)
            deliveries = tuple(
                (aid, self._delivery(aid, rotation.key_epoch))
                for aid in self.members
                if aid in self.admitted and aid != self.me and self._deliverable(aid)
            )
            rotated = KeyRotated(self.room_id, event.key_epoch, event.by, True)
            events = (rotated, *self._release(rotation.key_epoch))
            return Outcome(events, _batch(self.room_id, deliveries))
        if event.key_epoch not in self.keys:
            self._open_sealed(event.key_epoch, event.encrypted_room_key)
        readable = event.key_epoch in self.keys
        events = (KeyRotated(self.room_id, event.key_epoch, event.by, readable),)
        return Outcome(events + self._release(event.key_epoch))

    def _signal(self, event: Signal) -> Outcome:
        try:
            kind = e2ee.payload_kind(event.payload)
            if kind == e2ee.KEY_DELIVERY:
                return self._delivered(event)
            return self._knocked(event)
        except (e2ee.E2EEError, ValueError):
            # A bad signal is ignored, as E2EE.md says; ValueError: a listed key of
            # the wrong size, which no signal may turn into a crash of this client.
            return Outcome()

    def _delivered(self, event: Signal) -> Outcome:
        if event.sender != self.host:
            return Outcome()
        delivery = e2ee.open_delivery(self.device, self.room_id, event.payload)
        if delivery.sender_public != self.members.get(self.host):
            return Outcome()
        # The current host's delivery wins over a key this client already held for the
        # epoch: a room roomd lost and restored may reuse an epoch number.
        self.keys[delivery.epoch] = delivery.room_key
        # A knock batch has no nonce: one retried and answered must not count against the next.
        self._tries.clear()
        return Outcome(self._release(delivery.epoch))

    def _knocked(self, event: Signal) -> Outcome:
        public_key = self.members.get(event.sender)
        if self.host != self.me or public_key is None or not self._deliverable(event.sender):
            return Outcome()
        knock = e2ee.read_knock(event.payload)
        usable = self.secrets + (self._retired if event.sender in self.admitted else [])
        if not any(
            e2ee.knock_matches(knock, secret, self.room_id, event.sender, public_key)
            for secret in usable
        ):
            return Outcome()
        first_new = event.sender not in self.admitted
        self.admitted.add(event.sender)
        newest = max(self.keys, default=-1)
        epochs = [
            epoch
            for epoch in sorted(self.keys)
            if epoch >= knock.next_epoch and epoch > newest - DELIVERED_EPOCHS
        ]
        deliveries = tuple((event.sender, self._delivery(event.sender, e)) for e in epochs)
        events = (Admitted(self.room_id, event.sender),) if first_new else ()
        return Outcome(events, _batch(self.room_id, deliveries))

    def _signals_refused(self, error: ErrorEvent) -> Outcome:
        assert error.request is not None
        refused = tuple(
            (signal["to"], signal["payload"]) for signal in error.request.get("signals", ())
        )
        present = tuple((aid, payload) for aid, payload in refused if aid in self.members)
        if error.retryable:
            # Shown only when given up: the application sent none of these signals.
            tries = self._tries.pop(refused, 1) + 1  # sends so far: 1 unless a resend
            if not present or tries > SIGNAL_TRIES:
                return Outcome((error,))
            self._tries[present] = tries
            if len(self._tries) > COUNTED_BATCHES:
                del self._tries[next(iter(self._tries))]
            return Outcome(actions=_batch(self.room_id, present))
        if error.code != "notFound":
            return Outcome((error,))
        # roomd refuses a whole batch when one recipient has gone (PROTOCOL.md 8.6). Once
        # this client has seen them go too, the rest goes again; until then resending
        # would be refused the same way (in a cluster the refusal can come first).
        self._refused += tuple(signal for signal in refused if signal not in self._refused)
        return Outcome(actions=self._resend_refused())

    def _resend_refused(self, *, rejoined: bool = False) -> tuple[Action, ...]:
        # Once this client has seen the absent recipient go, or a joinSuccess has listed
        # who is present, the refused signals go again to those present.
        present = tuple((aid, payload) for aid, payload in self._refused if aid in self.members)
        if not rejoined and len(present) == len(self._refused):
            return ()
        self._refused = ()
        # A host no longer: its deliveries would be dropped, the new host's rotation delivers.
        return _batch(self.room_id, present) if self.host == self.me else ()

    def _deliverable(self, aid: str) -> bool:
        key = self.members.get(aid)
        return key is not None and e2ee.can_receive_deliveries(key)

    # -- helpers -------------------------------------------------------------------------

    def _read(self, message: NewMessage) -> tuple[SecureEvent, ...]:
        epoch = message.key_epoch or 0
        if epoch not in self.keys:
            self._held.setdefault(epoch, []).append(message)
        return (self.read(message),)

    def read(self, message: NewMessage) -> Message | ReactionMessage | Unreadable:
        """Return `message` decrypted, or `Unreadable` (a history page's messages, say)."""
        epoch = message.key_epoch or 0
        key = self.keys.get(epoch)
        if key is None:
            return Unreadable(self.room_id, message.seq, message.sender, epoch, "no key yet")
        try:
            body = decode_body(
                e2ee.decrypt_message(
                    key, self.room_id, message.sender, epoch, message.iv or b"", message.ciphertext
                )
            )
        except (e2ee.E2EEError, ValueError):
            return Unreadable(self.room_id, message.seq, message.sender, epoch, "cannot open")
        if isinstance(body, Text):
            return Message(
                self.room_id,
                message.seq,
                message.message_id,
                message.sender,
                body.text,
                body.sent_at,
                epoch,
            )
        assert isinstance(body, Reaction)
        return ReactionMessage(
            self.room_id, message.seq, message.sender, body.message_id, body.emoji, body.remove
        )

    def _release(self, epoch: int) -> tuple[SecureEvent, ...]:
        return tuple(self.read(message) for message in self._held.pop(epoch, []))

    def _open_sealed(self, epoch: int, sealed: bytes) -> None:
        for secret in reversed(self.secrets):
            try:
                self.keys[epoch] = e2ee.open_room_key(secret, self.room_id, epoch, sealed)
                return
            except e2ee.E2EEError:
                continue

    def _knock(self) -> tuple[Action, ...]:
        self._knock_at = None  # a knock of a join or host change: knocking again starts over
        next_epoch = max(self.keys, default=-1) + 1
        knocks = tuple(
            (self.host, e2ee.knock(secret, self.room_id, self.me, self.public_key, next_epoch))
            for secret in self.secrets[-KNOCK_SECRETS:]
        )
        return _batch(self.room_id, knocks)

    def _rotate(self) -> UpdateKey:
        rotation = _Rotation(self.key_epoch + 1, e2ee.new_secret(), e2ee.new_secret())
        self._rotation = rotation
        self._rotation_owed = False
        sealed = e2ee.seal_room_key(
            rotation.invite_secret, self.room_id, rotation.key_epoch, rotation.room_key
        )
        return UpdateKey(self.room_id, rotation.key_epoch, sealed)

    def _delivery(self, aid: str, epoch: int) -> bytes:
        recipient = self.members[aid]
        assert recipient is not None
        return e2ee.deliver_key(self.device, recipient, self.room_id, epoch, self.keys[epoch])


def _batch(room_id: str, signals: tuple[tuple[str, bytes], ...]) -> tuple[Action, ...]:
    return (Signals(room_id, signals),) if signals else ()
