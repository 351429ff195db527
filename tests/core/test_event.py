"""Server-to-client events (PROTOCOL.md section 5): their types, fields and both encodings."""

from __future__ import annotations

import base64
from collections.abc import Callable

import cbor2
import orjson
import pytest

from roomd.core import event as ev
from roomd.core.codec import CBOR, JSON
from roomd.core.event import Event
from roomd.core.message import RequestId
from roomd.errors import ErrorCode, ProtocolError

R = "r1"
LIMITS: Event = {"rate": 10.0, "burst": 30.0, "maxFrame": 131072, "maxMembers": 256}
MEMBERS = [ev.member("alice", b"\x00pk"), ev.member("bob", None)]

# (builder call, its `type`, its fields) for every builder, per PROTOCOL.md section 5
# (version 1 fields; optional ones given, so every field is there).
BUILDERS: list[tuple[Callable[[], Event], str, set[str]]] = [
    (
        lambda: ev.hello("roomd.v1", 25.0, 10.0, LIMITS, ["history", "keyEpochs"]),
        "hello",
        {"protocol", "heartbeatInterval", "authTimeout", "limits", "features"},
    ),
    (lambda: ev.auth_ok("alice", 1_700_000_000, 1), "authOk", {"aid", "expiresAt", "id"}),
    (
        lambda: ev.join_success(R, "alice", "alice", b"KEY", MEMBERS, 7, "E0", 2, True, "j"),
        "joinSuccess",
        {
            "roomId",
            "you",
            "host",
            "encryptedRoomKey",
            "members",
            "lastSeq",
            "epoch",
            "keyEpoch",
            "recovered",
            "id",
        },
    ),
    (
        lambda: ev.new_message(R, 1, "px1", "alice", b"\xffct", b"iv", "c1", 1_000, 3),
        "newMessage",
        {"roomId", "seq", "messageId", "from", "ciphertext", "iv", "clientMsgId", "ts", "keyEpoch"},
    ),
    (lambda: ev.user_joined(R, "bob", b"pk"), "userJoined", {"roomId", "aid", "publicKey"}),
    (lambda: ev.user_left(R, "bob", "timeout"), "userLeft", {"roomId", "aid", "reason"}),
    (lambda: ev.host_updated(R, "bob"), "hostUpdated", {"roomId", "host"}),
    (lambda: ev.typing(R, "bob", True), "typing", {"roomId", "aid", "isTyping"}),
    (
        lambda: ev.reaction(R, "px1", "bob", "+1", False),
        "reaction",
        {"roomId", "messageId", "aid", "emoji", "remove"},
    ),
    (lambda: ev.signal(R, "alice", b"\x00sig"), "signal", {"roomId", "from", "payload"}),
    (
        lambda: ev.room_key_updated(R, b"KEY2", "alice", 1),
        "roomKeyUpdated",
        {"roomId", "encryptedRoomKey", "by", "keyEpoch"},
    ),
    (lambda: ev.unbanned(R, "bob", 4), "unbanned", {"roomId", "aid", "id"}),
    (
        lambda: ev.history(R, "E0", [], False, 5),
        "history",
        {"roomId", "epoch", "messages", "more", "id"},
    ),
    (lambda: ev.left_chatroom(R, "left", 3), "leftChatroom", {"roomId", "reason", "id"}),
    (lambda: ev.room_deleted(R, "expired"), "roomDeleted", {"roomId", "reason"}),
    (
        lambda: ev.error(ProtocolError(ErrorCode.RATE_LIMITED, "slow", retry_after=0.5), 2, R),
        "error",
        {"code", "message", "id", "roomId", "retryAfter"},
    ),
]
BUILDER_IDS = [kind for _, kind, _ in BUILDERS]


def as_json(value: object) -> object:
    """Return `value` as the JSON codec writes it: bytes as padded standard base64."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


# -- reply ------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["r", "x" * 64, 0, 7, -(2**53), 2**53])
def test_reply_echoes_a_given_id(request_id: RequestId) -> None:
    """reply attaches `id` unchanged, str or int (0 included), to the event it returns."""
    event: Event = {"type": "authOk"}
    result = ev.reply(event, request_id)
    assert result is event
    assert result == {"type": "authOk", "id": request_id}
    assert type(result["id"]) is type(request_id)


def test_reply_without_an_id_attaches_no_id() -> None:
    """reply with no request id leaves the event without an `id` key."""
    assert ev.reply({"type": "authOk"}, None) == {"type": "authOk"}


# -- error ------------------------------------------------------------------------


@pytest.mark.parametrize("code", list(ErrorCode))
def test_an_error_carries_its_code_and_message(code: ErrorCode) -> None:
    """error has type, code (a plain string, PROTOCOL.md section 7's name) and message."""
    event = ev.error(ProtocolError(code, "it broke a rule"), None, None)
    assert event == {"type": "error", "code": code.value, "message": "it broke a rule"}
    assert type(event["code"]) is str


@pytest.mark.parametrize(
    ("retry_after", "request_id", "room_id", "extra"),
    [
        (None, None, None, {}),
        (1.5, None, None, {"retryAfter": 1.5}),
        (0.0, None, None, {"retryAfter": 0.0}),  # zero is a value, not "unset"
        (None, "q", None, {"id": "q"}),
        (None, 0, None, {"id": 0}),
        (None, None, R, {"roomId": R}),
        (0.1, 9, R, {"retryAfter": 0.1, "roomId": R, "id": 9}),
    ],
)
def test_an_error_has_retry_after_id_and_room_id_only_when_given(
    retry_after: float | None,
    request_id: RequestId | None,
    room_id: str | None,
    extra: Event,
) -> None:
    """error adds retryAfter, id and roomId exactly when each is set, and nothing else."""
    exc = ProtocolError(ErrorCode.RATE_LIMITED, "slow down", retry_after=retry_after)
    event = ev.error(exc, request_id, room_id)
    assert event == {"type": "error", "code": "rateLimited", "message": "slow down", **extra}


# -- newMessage -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iv", "client_msg_id", "extra"),
    [
        (None, None, {}),
        (b"\x01iv", None, {"iv": b"\x01iv"}),
        (b"", None, {"iv": b""}),  # an empty blob is a blob
        (None, "c1", {"clientMsgId": "c1"}),
        (b"iv", "c1", {"iv": b"iv", "clientMsgId": "c1"}),
    ],
)
def test_new_message_has_iv_and_client_msg_id_only_when_given(
    iv: bytes | None, client_msg_id: str | None, extra: Event
) -> None:
    """newMessage carries iv and clientMsgId only when given, and always its ts."""
    event = ev.new_message(R, 3, "px3", "alice", b"ct", iv, client_msg_id, 1_700_000_000_123, None)
    assert event == {
        "type": "newMessage",
        "roomId": R,
        "seq": 3,
        "messageId": "px3",
        "from": "alice",
        "ciphertext": b"ct",
        **extra,
        "ts": 1_700_000_000_123,
    }


def test_new_message_is_no_reply() -> None:
    """A broadcast carries no id (PROTOCOL.md section 1): newMessage has no id parameter."""
    assert "id" not in ev.new_message(R, 1, "px1", "alice", b"ct", None, "c1", 0, None)


# -- every builder ----------------------------------------------------------------


@pytest.mark.parametrize(("build", "kind", "fields"), BUILDERS, ids=BUILDER_IDS)
def test_each_builder_makes_its_protocol_type_with_its_fields(
    build: Callable[[], Event], kind: str, fields: set[str]
) -> None:
    """Each builder's `type` and field names are PROTOCOL.md section 5's."""
    event = build()
    assert event["type"] == kind
    assert set(event) == fields | {"type"}


def test_every_server_to_client_type_has_a_builder() -> None:
    """The builders cover every type of PROTOCOL.md section 5, the 1.1 ones included."""
    types = {
        *("hello", "authOk", "joinSuccess", "newMessage", "userJoined", "userLeft"),
        *("hostUpdated", "typing", "reaction", "signal", "roomKeyUpdated"),
        *("leftChatroom", "roomDeleted", "error", "history", "unbanned"),
    }
    assert set(BUILDER_IDS) == types


def test_a_member_entry_is_aid_and_public_key() -> None:
    """member() is one joinSuccess.members entry: {aid, publicKey}, publicKey possibly null."""
    assert ev.member("alice", b"pk") == {"aid": "alice", "publicKey": b"pk"}
    assert ev.member("bob", None) == {"aid": "bob", "publicKey": None}


@pytest.mark.parametrize(("build", "kind", "fields"), BUILDERS, ids=BUILDER_IDS)
def test_the_json_codec_encodes_every_event_with_blobs_as_base64(
    build: Callable[[], Event], kind: str, fields: set[str]
) -> None:
    """JSON.encode writes every event; blobs come out as padded standard base64."""
    event = build()
    assert orjson.loads(JSON.encode(event)) == as_json(event)


@pytest.mark.parametrize(("build", "kind", "fields"), BUILDERS, ids=BUILDER_IDS)
def test_the_cbor_codec_encodes_every_event_with_blobs_as_bytes(
    build: Callable[[], Event], kind: str, fields: set[str]
) -> None:
    """CBOR.encode writes every event; blobs stay byte strings."""
    event = build()
    decoded = cbor2.loads(CBOR.encode(event))
    assert decoded == event
    assert [type(v) for v in decoded.values()] == [type(v) for v in event.values()]


def test_blobs_decode_to_the_same_bytes_in_both_codecs() -> None:
    """A blob a JSON member reads (base64) and a CBOR member reads (bytes) are the same bytes."""
    blob = bytes(range(256))
    event = ev.signal(R, "alice", blob)
    assert base64.b64decode(orjson.loads(JSON.encode(event))["payload"]) == blob
    assert cbor2.loads(CBOR.encode(event))["payload"] == blob
