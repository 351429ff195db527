"""Room operations as calls of the `roomd` functions, and what Redis answers.

A node turns each room operation into a `Call` (the function, the room's key,
the arguments: the deadline and operation id first, functions.py) and reads
the reply into `Applied`, `Refused` or `Late`; a join's reply is a `Snapshot`
of the room as the join left it. Client content (public keys, ciphertext,
keys, signal payloads) travels as one CBOR body that Redis stores and
publishes without reading it. `decode_event` reads what a room's channel
carries into a `RoomEvent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import cbor2
import orjson

from roomd.cluster import functions as fn
from roomd.core import message as m
from roomd.core.history import StoredMessage
from roomd.errors import ErrorCode, ProtocolError

Arg = str | bytes | int


def room_key(room_id: str) -> str:
    """Return the key of room `room_id`'s state (also the name of its channel)."""
    return f"roomd:{{{room_id}}}"


def stream_key(room_id: str) -> str:
    """Return the key of room `room_id`'s message stream (its history)."""
    return f"roomd:{{{room_id}}}:stream"


def node_key(node_id: str) -> str:
    """Return the key of node `node_id`'s liveness (expires unless the node refreshes it)."""
    return f"roomd:node:{node_id}"


def node_rooms_key(node_id: str) -> str:
    """Return the key of the set of rooms where node `node_id` holds a connection."""
    return f"roomd:node:{node_id}:rooms"


@attrs.frozen
class Call:
    """One call of a `roomd` function on one room."""

    function: str
    room_id: str
    args: tuple[Arg, ...]

    @property
    def keys(self) -> list[str]:
        """The keys the call names (the room's state key)."""
        return [room_key(self.room_id)]


@attrs.frozen
class Applied:
    """Redis applied the operation; `event` is the room's event number after it."""

    event: int
    rest: tuple[Any, ...] = ()


@attrs.frozen
class Refused:
    """Redis refused the operation and changed nothing: answer `error` with this."""

    error: ProtocolError


@attrs.frozen
class Late:
    """Redis's clock had passed the operation's deadline: nothing was applied."""


@attrs.frozen
class Exists:
    """A room with that id exists already: nothing was created."""


Reply = Applied | Refused | Late | Exists


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _opt(value: int | None) -> Arg:
    return "" if value is None else value


def pack(value: object) -> bytes:
    """Return `value` as the CBOR body Redis carries for a node."""
    return cbor2.dumps(value)


def unpack(body: bytes) -> Any:
    """Return the value of a CBOR body `pack` made."""
    return cbor2.loads(body)


# -- calls ---------------------------------------------------------------------


def create(
    room_id: str,
    op: tuple[int, str],
    *,
    host: str | None,
    encrypted_room_key: bytes | None,
    epoch: str,
    prefix: str,
    max_rooms: int,
    max_rooms_per_aid: int,
    by_api: bool,
    elsewhere: tuple[int, int] = (0, 0),
) -> Call:
    """Return the call that creates an empty room (refused past the room quotas).

    `elsewhere`: the rooms, and those `host` hosts, on the cluster's other Redis
    instances, which the quotas count too.
    """
    key = encrypted_room_key or b""
    args = (host or "", _flag(encrypted_room_key is not None), key, epoch, prefix)
    limits = (max_rooms, max_rooms_per_aid, _flag(by_api), *elsewhere)
    return Call(fn.CREATE, room_id, (*op, *args, *limits))


def restore(
    room_id: str,
    *,
    host: str | None,
    encrypted_room_key: bytes | None,
    key_epoch: int,
    epoch: str,
    prefix: str,
    seq: int,
) -> Call:
    """Return the call that brings back a room Redis lost, empty, with a new `epoch`."""
    key = encrypted_room_key or b""
    args = (host or "", _flag(encrypted_room_key is not None), key, key_epoch, epoch, prefix, seq)
    return Call(fn.RESTORE, room_id, args)


def join(
    room_id: str,
    op: tuple[int, str],
    *,
    conn: str,
    aid: str,
    public_key: bytes | None,
    max_members: int,
    since: m.Position | None,
    recovery_limit: int,
) -> Call:
    """Return the call that adds connection `conn` of `aid` to the room."""
    epoch, seq = ("", 0) if since is None else (since.epoch, since.seq)
    args = (conn, aid, pack(public_key), max_members, epoch, seq, recovery_limit)
    return Call(fn.JOIN, room_id, (*op, *args))


def leave(room_id: str, op: tuple[int, str], *, conn: str, reason: str, asked: bool) -> Call:
    """Return the call that takes `conn` out (`asked`: its own `leaveChatroom`)."""
    return Call(fn.LEAVE, room_id, (*op, conn, reason, _flag(asked)))


def act(
    msg: m.RoomMessage, op: tuple[int, str], *, conn: str, history_size: int, max_members: int
) -> Call:
    """Return the call for member `conn`'s room message `msg` (not a join, leave or history)."""
    room_id = msg.room_id
    match msg:
        case m.SendMessage():
            body = pack([msg.ciphertext, msg.iv, msg.client_msg_id, msg.key_epoch])
            args: tuple[Arg, ...] = (conn, history_size, _opt(msg.key_epoch), body)
            return Call(fn.MESSAGE, room_id, (*op, *args))
        case m.Typing():
            return Call(fn.TYPING, room_id, (*op, conn, _flag(msg.is_typing)))
        case m.Reaction():
            body = pack([msg.message_id, msg.emoji, msg.remove])
            return Call(fn.REACTION, room_id, (*op, conn, body))
        case m.Signal():
            entries = msg.entries
            body = pack([entry.payload for entry in entries])
            targets = [entry.to for entry in entries]
            return Call(fn.SIGNAL, room_id, (*op, conn, max_members, body, *targets))
        case m.UpdateRoomKey():
            args = (conn, _opt(msg.key_epoch), msg.encrypted_room_key)
            return Call(fn.UPDATE_KEY, room_id, (*op, *args))
        case m.TransferHost():
            return Call(fn.TRANSFER_HOST, room_id, (*op, conn, msg.to))
        case m.Kick():
            return kick(room_id, op, conn=conn, aid=msg.aid, ban=msg.ban)
        case m.Unban():
            return unban(room_id, op, conn=conn, aid=msg.aid)
        case m.DeleteChatroom():
            return delete(room_id, op, conn=conn, reason="deleted")
    raise AssertionError(f"{msg.TYPE} has no room function")


def kick(room_id: str, op: tuple[int, str], *, conn: str, aid: str, ban: bool) -> Call:
    """Return the call that kicks (and with `ban` bans) `aid`; `conn` '' for the server API."""
    return Call(fn.KICK, room_id, (*op, conn, aid, _flag(ban)))


def unban(room_id: str, op: tuple[int, str], *, conn: str, aid: str) -> Call:
    """Return the call that lets `aid` join again; `conn` '' for the server API."""
    return Call(fn.UNBAN, room_id, (*op, conn, aid))


def delete(room_id: str, op: tuple[int, str], *, conn: str, reason: str) -> Call:
    """Return the call that deletes the room; `conn` '' for the server API."""
    return Call(fn.DELETE, room_id, (*op, conn, reason))


# -- replies -------------------------------------------------------------------


def text(value: object) -> str:
    """Return a Redis reply's string (bytes as UTF-8)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def read_reply(raw: object) -> Reply:
    """Return what Redis answered to one call."""
    assert isinstance(raw, list | tuple) and raw, f"not a roomd reply: {raw!r}"
    kind = text(raw[0])
    if kind == "ok":
        return Applied(int(raw[1]), tuple(raw[2:]))
    if kind == "late":
        return Late()
    if kind == "exists":
        return Exists()
    assert kind == "err", f"not a roomd reply: {raw!r}"
    key_epoch = int(raw[3]) if len(raw) > 3 else None
    return Refused(ProtocolError(ErrorCode(text(raw[1])), text(raw[2]), key_epoch=key_epoch))


@attrs.frozen
class Snapshot:
    """The room as a join left it (its `joinSuccess`), and the messages it replays."""

    event: int
    host: str | None
    encrypted_room_key: bytes | None
    key_epoch: int
    seq: int
    epoch: str
    prefix: str
    created_at: int
    members: tuple[tuple[str, bytes | None], ...]
    replay: tuple[StoredMessage, ...]


def read_snapshot(room_id: str, applied: Applied) -> Snapshot:
    """Return the `Snapshot` in an applied join's reply."""
    host, key, key_epoch, seq, epoch, prefix, created, flat, replay = applied.rest
    members = tuple((text(flat[i]), unpack(flat[i + 1])) for i in range(0, len(flat), 2))
    prefix_text = text(prefix)
    return Snapshot(
        event=applied.event,
        host=text(host) or None,
        encrypted_room_key=bytes(key) or None,
        key_epoch=int(key_epoch),
        seq=int(seq),
        epoch=text(epoch),
        prefix=prefix_text,
        created_at=int(created),
        members=members,
        replay=tuple(
            stored_message(room_id, prefix_text, entry_id, sender, ts, body)
            for entry_id, sender, ts, body in replay
        ),
    )


def stored_message(
    room_id: str, prefix: str, entry_id: object, sender: object, ts: object, body: object
) -> StoredMessage:
    """Return the message a stream entry (`<seq>-0`, sender, ts, body) holds."""
    assert isinstance(body, bytes), "the client's content is CBOR"
    seq = int(text(entry_id).split("-", 1)[0])
    ciphertext, iv, client_msg_id, key_epoch = unpack(body)
    return StoredMessage(
        room_id,
        seq,
        f"{prefix}{seq:x}",
        text(sender),
        ciphertext,
        iv,
        client_msg_id,
        int(text(ts)),
        key_epoch,
    )


# -- events --------------------------------------------------------------------


@attrs.frozen
class Joined:
    """Connection `conn` of `aid` joined (`new_aid`: the AID's first; `new_host`: it hosts)."""

    event: int
    conn: str
    aid: str
    new_aid: bool
    new_host: bool
    public_key: bytes | None


@attrs.frozen
class Left:
    """Connection `conn` of `aid` left (`gone`: its AID's last); `new_host` or None."""

    event: int
    conn: str
    aid: str
    reason: str
    gone: bool
    new_host: str | None


@attrs.frozen
class Said:
    """A message: its `seq`, sender, `ts` and body."""

    event: int
    seq: int
    aid: str
    ts: int
    body: bytes


@attrs.frozen
class Typed:
    """`aid` started or stopped typing."""

    event: int
    aid: str
    is_typing: bool


@attrs.frozen
class Reacted:
    """`aid` reacted to a message."""

    event: int
    aid: str
    message_id: str
    emoji: str
    remove: bool


@attrs.frozen
class Signalled:
    """`aid` sent each payload to the AID beside it."""

    event: int
    aid: str
    entries: tuple[tuple[str, bytes], ...]


@attrs.frozen
class KeyUpdated:
    """The host `aid` set a new room key, opening `key_epoch`."""

    event: int
    aid: str
    key_epoch: int
    encrypted_room_key: bytes


@attrs.frozen
class HostMoved:
    """The host handed the room to `aid`."""

    event: int
    aid: str


@attrs.frozen
class Kicked:
    """`aid` was kicked: its connections `conns` are out; `new_host` or None."""

    event: int
    aid: str
    new_host: str | None
    conns: tuple[str, ...]


@attrs.frozen
class Deleted:
    """The room was deleted (`reason`: `deleted` or `expired`)."""

    event: int
    reason: str


RoomEvent = (
    Joined | Left | Said | Typed | Reacted | Signalled | KeyUpdated | HostMoved | Kicked | Deleted
)


def _texts(value: object) -> tuple[str, ...]:
    # Lua's cjson writes an empty table as {}, not [].
    return tuple(value) if isinstance(value, list) else ()


def decode_event(data: bytes) -> RoomEvent:
    """Return the room event a channel message carries (a JSON header, a newline, a body)."""
    head, _, body = data.partition(b"\n")
    header: list[Any] = orjson.loads(head)
    kind, event = header[0], int(header[1])
    match kind:
        case "joined":
            _, _, conn, aid, new_aid, new_host = header
            public_key = unpack(body) if new_aid else None
            return Joined(event, conn, aid, bool(new_aid), bool(new_host), public_key)
        case "left":
            _, _, conn, aid, reason, gone, new_host = header
            return Left(event, conn, aid, reason, bool(gone), new_host or None)
        case "message":
            _, _, seq, aid, ts = header
            return Said(event, int(seq), aid, int(ts), body)
        case "typing":
            return Typed(event, header[2], bool(header[3]))
        case "reaction":
            message_id, emoji, remove = unpack(body)
            return Reacted(event, header[2], message_id, emoji, remove)
        case "signal":
            payloads: Sequence[bytes] = unpack(body)
            entries = tuple(zip(_texts(header[3]), payloads, strict=True))
            return Signalled(event, header[2], entries)
        case "key":
            return KeyUpdated(event, header[2], int(header[3]), body)
        case "host":
            return HostMoved(event, header[2])
        case "kicked":
            return Kicked(event, header[2], header[3] or None, _texts(header[4]))
        case "deleted":
            return Deleted(event, header[2])
    raise ValueError(f"unknown room event {kind!r}")
