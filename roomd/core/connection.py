"""The rules of one client connection, sans-I/O: a state machine fed frames and time.

Theory of operation
-------------------
Rule 1: everything that decides what happens on one connection, between the
upgrade and the close frame, lives here. The trio shell (`roomd.daemon.reader`)
owns one `Connection` per accepted WebSocket and feeds it what happened:

- `frame_part(size, finished=...)` for every piece of a client data frame, so
  an oversized frame is refused before it is whole;
- `receive_frame(payload, now, wall_ms, room_ids)` for every complete frame;
- `receive_control(now, ping=...)` for every ping or pong (they pay the bucket too);
- `heard(now)` whenever bytes arrived;
- `wake(now)`, then `ping_due(now)`, at `next_timer`, from the server's one
  timekeeper (a reader waits only for bytes);
- `room_created`, `room_gone` when a room the connection addressed answered
  from outside (the registry);
- `join_arrived`, `attached`, `detached` from the room loops.

Each input returns what the shell must do, in order, as actions: `Reply(event)`
(encode and send to this client), `Authenticated(aid, reply)` (log it, send
`reply`), `SendPong(payload)`, `Close(code)` (close with `code`: the shell's session calls
`close(code)`, and the reader stops),
`CreateRoom(...)` (create a room, then call `room_created`), `JoinRoom(...)`
and `ToRoom(...)` (hand it to that room's loop; if the room is gone, call
`room_gone`).

Phases:

    AWAITING_AUTH --auth ok--> AUTHENTICATED
         |                          |
         +---------close(code)------+--> CLOSING (final; the first code wins)

Before auth, every frame but `auth` is answered `unauthenticated`. The auth
deadline closes 4001; silence past `heartbeat_timeout` closes 4002; the token's
`exp` closes 4005, and a fresh token for the same AID extends it (an older one
never shortens it). A connection is in at most `max_rooms_per_conn` rooms,
counting joins not yet applied. In CLOSING, frames are ignored and a join that
reaches its room is not applied.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Container, Mapping

import attrs

from roomd.core import event as ev
from roomd.core import message as m
from roomd.core.bucket import LeakyBucket, Verdict
from roomd.core.codec import decode_frame
from roomd.core.deadline import ConnectionDeadlines
from roomd.core.event import Event
from roomd.core.stats import Stats
from roomd.core.token import verify_token
from roomd.errors import CloseCode, ErrorCode, ProtocolError


class Phase(enum.Enum):
    """Where a connection is in its life."""

    AWAITING_AUTH = "awaiting auth"
    AUTHENTICATED = "authenticated"
    CLOSING = "closing"


@attrs.frozen(kw_only=True)
class ConnectionLimits:
    """The settings the rules of a connection apply (PROTOCOL.md sections 1 and 6)."""

    protocol: str
    auth_timeout: float
    heartbeat_interval: float
    heartbeat_timeout: float
    rate: float
    burst: float
    max_frame: int
    max_members: int
    max_rooms_per_conn: int
    max_rooms_per_aid: int
    history_size: int = 0
    recovery_limit: int = 0

    def hello(self) -> Event:
        """Return the `hello` that tells a new client these limits."""
        limits = {
            "rate": self.rate,
            "burst": self.burst,
            "maxFrame": self.max_frame,
            "maxMembers": self.max_members,
            "maxRoomsPerConnection": self.max_rooms_per_conn,
            "maxRoomsPerAid": self.max_rooms_per_aid,
            "historySize": self.history_size,
            "recoveryLimit": self.recovery_limit,
        }
        features = ["history", "keyEpochs"] if self.history_size else ["keyEpochs"]
        return ev.hello(self.protocol, self.heartbeat_interval, self.auth_timeout, limits, features)


@attrs.frozen
class Reply:
    """Send `event` to this client."""

    event: Event


@attrs.frozen
class Authenticated:
    """The connection is (still) `aid`: send `reply` (`authOk`); `renewed` on a re-auth."""

    aid: str
    reply: Event
    renewed: bool = False


@attrs.frozen
class SendPong:
    """Answer the client's ping carrying `payload`."""

    payload: bytes


@attrs.frozen
class Close:
    """Close the connection with `code`: the shell closes its session (which calls `close`)."""

    code: CloseCode


@attrs.frozen
class CreateRoom:
    """Create a room with `aid` as host, then report it with `room_created`."""

    aid: str
    encrypted_room_key: bytes | None
    public_key: bytes | None
    request_id: m.RequestId | None


@attrs.frozen
class JoinRoom:
    """Ask room `room_id` to add this connection as `aid`; a pending join is counted."""

    room_id: str
    aid: str
    public_key: bytes | None
    request_id: m.RequestId | None
    # Where the client left off in the room's stream, to recover from (section 8.2).
    since: m.Position | None = None


@attrs.frozen
class ToRoom:
    """Hand `msg` to the loop of room `room_id`, of which this connection is a member."""

    room_id: str
    msg: m.RoomMessage


Action = Reply | Authenticated | SendPong | Close | CreateRoom | JoinRoom | ToRoom


@attrs.define(eq=False, slots=True)
class Connection:
    """The state of one client connection; see the module docstring for the rules."""

    limits: ConnectionLimits
    token_secret: str
    stats: Stats
    deadlines: ConnectionDeadlines
    bucket: LeakyBucket
    phase: Phase = Phase.AWAITING_AUTH
    aid: str | None = None
    close_code: int | None = None
    # Rooms this connection is in (set by the room loops).
    joined: set[str] = attrs.field(factory=set)
    # Joins handed to a room and not yet applied there, per room (a multiset: a
    # client may pipeline join, leave, join).
    joining: Counter[str] = attrs.field(factory=Counter)
    _frame_size: int = 0

    @classmethod
    def start(
        cls, limits: ConnectionLimits, token_secret: str, stats: Stats, now: float
    ) -> Connection:
        """Return the rules of a connection whose upgrade was accepted at `now`."""
        deadlines = ConnectionDeadlines.start(
            now,
            auth_timeout=limits.auth_timeout,
            heartbeat_interval=limits.heartbeat_interval,
            heartbeat_timeout=limits.heartbeat_timeout,
        )
        bucket = LeakyBucket(rate=limits.rate, burst=limits.burst, updated=now)
        return cls(limits, token_secret, stats, deadlines, bucket)

    # -- what the shell asks ---------------------------------------------------

    @property
    def member_of(self) -> set[str]:
        """Rooms this connection is in or has asked to join."""
        return self.joined | self.joining.keys()

    @property
    def leave_reason(self) -> str:
        """The `userLeft` reason the rooms give once this connection is closed."""
        return "timeout" if self.close_code == CloseCode.HEARTBEAT_TIMEOUT else "disconnected"

    def next_deadline(self) -> float:
        """Return when `wake` may first have a close to say, if no bytes arrive before."""
        return self.deadlines.next_wakeup()

    @property
    def next_timer(self) -> float:
        """When the shell must next call `wake`, then `ping_due` (a ping's time on its grid)."""
        return self.deadlines.next_timer()

    # -- time ------------------------------------------------------------------

    def heard(self, now: float) -> None:
        """Record that bytes arrived from the client at `now` (the heartbeat restarts)."""
        self.deadlines.heard(now)

    def wake(self, now: float) -> Close | None:
        """Return the close that is due at `now` (4001, 4002, 4005), or None."""
        due = self.deadlines.due(now)
        return None if due is None else Close(due)

    @property
    def next_ping(self) -> float:
        """When this connection's next ping is due (the server's timekeeper asks then)."""
        return self.deadlines.next_ping

    def ping_due(self, now: float) -> bool:
        """Return whether to send this connection a ping at `now` (never once closing)."""
        return self.phase is not Phase.CLOSING and self.deadlines.ping_due(now)

    # -- frames ----------------------------------------------------------------

    def frame_part(self, size: int, *, finished: bool) -> Close | None:
        """Count `size` bytes of the data frame being received; past `max_frame`, close 1009."""
        self._frame_size += size
        if self._frame_size > self.limits.max_frame:
            return Close(CloseCode.MESSAGE_TOO_BIG)
        if finished:
            self._frame_size = 0
        return None

    def receive_frame(
        self, payload: str | bytes, now: float, wall_ms: int, room_ids: Container[str]
    ) -> list[Action]:
        """Apply one complete client frame at `now`; return what the shell must do.

        `wall_ms` is the wall clock (token times are Unix seconds), `room_ids`
        the ids of the rooms that exist. A refused frame is answered with `error`
        and changes nothing else.
        """
        if self.phase is Phase.CLOSING:
            return []
        verdict = self.bucket.offer(now)
        if verdict is not Verdict.ACCEPT:
            return self._rate_limited(verdict, payload, now)
        self.stats.frames_in += 1
        fields: object = None
        try:
            fields = decode_frame(payload)
            if self.phase is Phase.AWAITING_AUTH and not _is_auth(fields):
                raise ProtocolError(ErrorCode.UNAUTHENTICATED, "authenticate first: send auth")
            msg = m.parse_message(fields, text=isinstance(payload, str))
        except ProtocolError as exc:
            return [Reply(ev.error(exc, *m.peek_context(fields)))]
        try:
            return [self._dispatch(msg, now, wall_ms, room_ids)]
        except ProtocolError as exc:
            return [Reply(ev.error(exc, msg.id, getattr(msg, "room_id", None)))]

    def receive_control(self, now: float, *, ping: bytes | None) -> SendPong | Close | None:
        """Apply one client ping (`ping` is its payload) or pong (`ping` None) at `now`.

        Control frames cost the bucket like any frame (PROTOCOL.md 1.1 §6): a
        ping that finds the bucket full gets no pong and no error, and keeping
        it full past the abuse limit closes 4004.
        """
        if self.phase is Phase.CLOSING:
            return None
        verdict = self.bucket.offer(now)
        if verdict is Verdict.ACCEPT:
            return None if ping is None else SendPong(ping)
        self.stats.rate_limited += 1
        return Close(CloseCode.RATE_LIMIT_ABUSE) if verdict is Verdict.ABUSE else None

    def _rate_limited(self, verdict: Verdict, payload: str | bytes, now: float) -> list[Action]:
        self.stats.rate_limited += 1
        if verdict is Verdict.ABUSE:
            return [Close(CloseCode.RATE_LIMIT_ABUSE)]
        if verdict is Verdict.DROP:
            return []
        error = ProtocolError(
            ErrorCode.RATE_LIMITED,
            f"rate limit of {self.limits.rate:g} messages/s exceeded",
            retry_after=self.bucket.retry_after(now),
        )
        # Decoded only for its `id` and `roomId`: this happens once per run of refusals.
        return [Reply(ev.error(error, *m.peek_context(_try_decode(payload))))]

    def _dispatch(
        self, msg: m.Message, now: float, wall_ms: int, room_ids: Container[str]
    ) -> Action:
        if isinstance(msg, m.Auth):
            return self._auth(msg, now, wall_ms / 1000)
        aid = self.aid
        assert aid is not None, "receive_frame answers every other message before auth"
        if isinstance(msg, m.CreateChatroom):
            self._check_room_quota()
            return CreateRoom(aid, msg.encrypted_room_key, msg.public_key, msg.id)
        if isinstance(msg, m.JoinChatroom):
            if msg.room_id not in room_ids:
                raise ProtocolError(ErrorCode.NOT_FOUND, f"no room '{msg.room_id}'")
            if msg.room_id not in self.member_of:
                self._check_room_quota()
            return self._join(msg.room_id, aid, msg.public_key, msg.id, msg.since)
        if isinstance(msg, m.RoomMessage):
            if msg.room_id not in room_ids or msg.room_id not in self.member_of:
                raise ProtocolError(ErrorCode.NOT_MEMBER, f"not a member of room '{msg.room_id}'")
            return ToRoom(msg.room_id, msg)
        raise AssertionError(f"no rule for {msg.TYPE}")  # every message type is handled above

    def _auth(self, msg: m.Auth, now: float, wall: float) -> Authenticated:
        identity = verify_token(self.token_secret, msg.token, now=wall)
        if self.aid is not None and identity.aid != self.aid:
            raise ProtocolError(
                ErrorCode.FORBIDDEN, f"this connection is already authenticated as '{self.aid}'"
            )
        token_deadline = now + (identity.expires_at - wall)
        renewed = self.aid is not None
        if renewed:
            # A fresh token extends the session; an older one never shortens it.
            token_deadline = max(token_deadline, self.deadlines.token_deadline)
        else:
            self.aid = identity.aid
            self.phase = Phase.AUTHENTICATED
        self.deadlines.authenticated(token_deadline)
        reply = ev.auth_ok(identity.aid, identity.expires_at, msg.id)
        return Authenticated(identity.aid, reply, renewed)

    def _check_room_quota(self) -> None:
        limit = self.limits.max_rooms_per_conn
        if len(self.member_of) >= limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS, f"this connection is already in {limit} rooms"
            )

    def _join(
        self,
        room_id: str,
        aid: str,
        public_key: bytes | None,
        request_id: m.RequestId | None,
        since: m.Position | None = None,
    ) -> JoinRoom:
        self.joining[room_id] += 1
        return JoinRoom(room_id, aid, public_key, request_id, since)

    # -- answers from rooms ----------------------------------------------------

    def room_created(self, request: CreateRoom, room_id: str | None) -> JoinRoom | Reply:
        """Return what follows a `CreateRoom`: its creator's join, or an error if none was made.

        `room_id` is None when no room could be created (128 random bits collided).
        """
        if room_id is None:
            error = ProtocolError(ErrorCode.INTERNAL, "could not create a room; try again")
            return Reply(ev.error(error, request.request_id, None))
        return self._join(room_id, request.aid, request.public_key, request.request_id)

    def room_refused(self, request: CreateRoom, exc: ProtocolError) -> Reply:
        """Return the answer to a `CreateRoom` the server refused (a room quota: `exc`)."""
        return Reply(ev.error(exc, request.request_id, None))

    def room_gone(self, action: JoinRoom | ToRoom) -> Reply:
        """Return the answer to `action` whose room ended before it could take it."""
        if isinstance(action, JoinRoom):
            self.join_settled(action.room_id)
            code, text, request_id = ErrorCode.NOT_FOUND, "no room", action.request_id
        else:
            code, text, request_id = ErrorCode.NOT_MEMBER, "not a member of room", action.msg.id
        error = ProtocolError(code, f"{text} '{action.room_id}'")
        return Reply(ev.error(error, request_id, action.room_id))

    def join_settled(self, room_id: str) -> None:
        """Record that `room_id` has applied, refused or dropped one pending join."""
        left = self.joining[room_id] - 1
        if left > 0:
            self.joining[room_id] = left
        else:
            del self.joining[room_id]

    def join_arrived(self, room_id: str) -> bool:
        """Settle a pending join that reached `room_id`; return whether to apply it.

        A connection that is closing may already have told its rooms it left,
        so its late join must not make it a member again.
        """
        self.join_settled(room_id)
        return self.phase is not Phase.CLOSING

    def attached(self, room_id: str) -> None:
        """Record that this connection is now a member of `room_id`."""
        self.joined.add(room_id)

    def detached(self, room_id: str) -> None:
        """Record that this connection is no longer a member of `room_id`."""
        self.joined.discard(room_id)

    # -- closing ---------------------------------------------------------------

    def close(self, code: int) -> bool:
        """Enter CLOSING with `code`; return False (changing nothing) if already closing."""
        if self.phase is Phase.CLOSING:
            return False
        self.phase = Phase.CLOSING
        self.close_code = code
        return True

    @staticmethod
    def flushes_queue(code: int) -> bool:
        """Return whether a close with `code` lets frames already queued go out first.

        A clean close (roomd's on shutdown, or the peer's 1000/1001) does; a close
        for cause drops them: they are not worth the wait.
        """
        return code in (CloseCode.NORMAL, CloseCode.GOING_AWAY)

    def close_code_after_read(self, peer_code: int | None, *, peer_spoke_first: bool) -> int:
        """Return the code to close with now that the reader stopped.

        `peer_code` is the code of the close frame read (None: the stream just
        ended); `peer_spoke_first` is False when the WebSocket layer made that
        close up itself for bad input (1002, 1007). A close roomd decided on was
        set already (the first code wins, see `close`). A peer's clean close is
        answered 1000 whatever code it chose: a client cannot make roomd count a
        timeout or a slow consumer.
        """
        if peer_code is None:
            return CloseCode.ABNORMAL
        if peer_spoke_first:
            return CloseCode.NORMAL
        return peer_code


def _try_decode(payload: str | bytes) -> object:
    try:
        return decode_frame(payload)
    except ProtocolError:
        return None


def _is_auth(fields: object) -> bool:
    return isinstance(fields, Mapping) and fields.get("type") == "auth"
