"""Server-to-client events: one typed builder per type of PROTOCOL.md section 5.

Every event roomd sends is built here and nowhere else, as the plain dict the
codecs encode (a dict, not a class: an event is built once and encoded at most
once per codec, and on the fan-out path an extra object per event is measurable).
Blobs are `bytes`; the JSON codec writes them as base64, CBOR as byte strings.

A direct reply to a client request echoes the request's `id`: `reply` attaches
it, and is the only place that does.
"""

from __future__ import annotations

from typing import Any

from roomd.core.message import RequestId
from roomd.errors import ProtocolError

Event = dict[str, Any]


def reply(event: Event, request_id: RequestId | None) -> Event:
    """Return `event` as the answer to the request `request_id` (echoing it when given)."""
    if request_id is not None:
        event["id"] = request_id
    return event


def hello(
    protocol: str,
    heartbeat_interval: float,
    auth_timeout: float,
    limits: Event,
    features: list[str],
) -> Event:
    """Return the `hello` a connection gets right after the upgrade."""
    return {
        "type": "hello",
        "protocol": protocol,
        "heartbeatInterval": heartbeat_interval,
        "authTimeout": auth_timeout,
        "limits": limits,
        "features": features,
    }


def auth_ok(aid: str, expires_at: int, request_id: RequestId | None) -> Event:
    """Return the answer to a valid `auth`: who the connection is, until when."""
    return reply({"type": "authOk", "aid": aid, "expiresAt": expires_at}, request_id)


def error(exc: ProtocolError, request_id: RequestId | None, room_id: str | None) -> Event:
    """Return the `error` answering a refused request (with its `id` and `roomId` when known)."""
    event: Event = {"type": "error", "code": str(exc.code), "message": exc.message}
    if exc.retry_after is not None:
        event["retryAfter"] = exc.retry_after
    if exc.key_epoch is not None:
        event["keyEpoch"] = exc.key_epoch
    if room_id is not None:
        event["roomId"] = room_id
    return reply(event, request_id)


def join_success(
    room_id: str,
    you: str,
    host: str | None,
    encrypted_room_key: bytes | None,
    members: list[Event],
    last_seq: int,
    epoch: str,
    key_epoch: int,
    recovered: bool | None,
    request_id: RequestId | None,
) -> Event:
    """Return the answer to a join (or create): the room as the joiner first sees it.

    `recovered` is None for a join without `since` (the field is then absent).
    """
    event: Event = {
        "type": "joinSuccess",
        "roomId": room_id,
        "you": you,
        "host": host,
        "encryptedRoomKey": encrypted_room_key,
        "members": members,
        "lastSeq": last_seq,
        "epoch": epoch,
        "keyEpoch": key_epoch,
    }
    if recovered is not None:
        event["recovered"] = recovered
    return reply(event, request_id)


def member(aid: str, public_key: bytes | None) -> Event:
    """Return one entry of `joinSuccess.members`."""
    return {"aid": aid, "publicKey": public_key}


def user_joined(room_id: str, aid: str, public_key: bytes | None) -> Event:
    """Return the news, to the members already there, that `aid` joined."""
    return {"type": "userJoined", "roomId": room_id, "aid": aid, "publicKey": public_key}


def user_left(room_id: str, aid: str, reason: str) -> Event:
    """Return the news that `aid` is gone (`left`, `disconnected`, `timeout`, `kicked`)."""
    return {"type": "userLeft", "roomId": room_id, "aid": aid, "reason": reason}


def host_updated(room_id: str, host: str | None) -> Event:
    """Return the news of who the host is now."""
    return {"type": "hostUpdated", "roomId": room_id, "host": host}


def left_chatroom(room_id: str, reason: str, request_id: RequestId | None = None) -> Event:
    """Return the notice to a connection that it is out of a room (`left` or `kicked`)."""
    return reply({"type": "leftChatroom", "roomId": room_id, "reason": reason}, request_id)


def room_deleted(room_id: str, reason: str) -> Event:
    """Return the notice that a room is gone (`deleted` or `expired`)."""
    return {"type": "roomDeleted", "roomId": room_id, "reason": reason}


def typing(room_id: str, aid: str, is_typing: bool) -> Event:
    """Return `aid`'s typing indicator."""
    return {"type": "typing", "roomId": room_id, "aid": aid, "isTyping": is_typing}


def reaction(room_id: str, message_id: str, aid: str, emoji: str, remove: bool) -> Event:
    """Return `aid`'s reaction to (or withdrawal from) a message."""
    return {
        "type": "reaction",
        "roomId": room_id,
        "messageId": message_id,
        "aid": aid,
        "emoji": emoji,
        "remove": remove,
    }


def signal(room_id: str, sender: str, payload: bytes) -> Event:
    """Return a key-exchange signal from `sender`, for the connections of its target."""
    return {"type": "signal", "roomId": room_id, "from": sender, "payload": payload}


def room_key_updated(room_id: str, encrypted_room_key: bytes, by: str, key_epoch: int) -> Event:
    """Return the news that the host replaced the room key, opening `key_epoch`."""
    return {
        "type": "roomKeyUpdated",
        "roomId": room_id,
        "encryptedRoomKey": encrypted_room_key,
        "by": by,
        "keyEpoch": key_epoch,
    }


def unbanned(room_id: str, aid: str, request_id: RequestId | None) -> Event:
    """Return the host's answer to `unban`: `aid` may join again."""
    return reply({"type": "unbanned", "roomId": room_id, "aid": aid}, request_id)


def history(
    room_id: str, epoch: str, messages: list[Event], more: bool, request_id: RequestId | None
) -> Event:
    """Return a page of the room's history, oldest first; `more` when older ones exist."""
    event: Event = {
        "type": "history",
        "roomId": room_id,
        "epoch": epoch,
        "messages": messages,
        "more": more,
    }
    return reply(event, request_id)


def new_message(
    room_id: str,
    seq: int,
    message_id: str,
    sender: str,
    ciphertext: bytes,
    iv: bytes | None,
    client_msg_id: str | None,
    ts: int,
    key_epoch: int | None,
) -> Event:
    """Return one relayed message with its `seq`; `iv`, `clientMsgId`, `keyEpoch` when given."""
    event: Event = {
        "type": "newMessage",
        "roomId": room_id,
        "seq": seq,
        "messageId": message_id,
        "from": sender,
        "ciphertext": ciphertext,
    }
    if iv is not None:
        event["iv"] = iv
    if client_msg_id is not None:
        event["clientMsgId"] = client_msg_id
    event["ts"] = ts
    if key_epoch is not None:
        event["keyEpoch"] = key_epoch
    return event
