"""The shipped vectors: the SDK reproduces every byte, opens every blob, refuses every tamper.

The vectors were computed by tests/client/make_vectors.py without the SDK, so
these tests are a cross-check of two implementations of E2EE.md.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from roomd.client import e2ee
from roomd.client.e2ee import E2EEError
from roomd.client.invite import Invite, invite_link, parse_invite
from roomd.client.plaintext import Reaction, Text, decode_body, encode_body
from tests.client import make_vectors

SHIPPED = resources.files("roomd.client").joinpath("e2ee_vectors.json").read_text("ascii")
VECTORS: dict[str, Any] = json.loads(SHIPPED)


def cases(section: str) -> pytest.MarkDecorator:
    """Parametrise over one section of the vectors, each case named by its index."""
    entries = VECTORS[section]
    return pytest.mark.parametrize("v", entries, ids=[f"{section}{i}" for i in range(len(entries))])


def b(text: str) -> bytes:
    return bytes.fromhex(text)


def private(text: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(b(text))


def test_the_shipped_file_is_what_the_generator_writes() -> None:
    """roomd/client/e2ee_vectors.json is exactly make_vectors' output: nobody hand-edited it."""
    assert make_vectors.render() == SHIPPED


def test_the_vectors_cover_the_edges() -> None:
    """Epochs 0, 1 and 2**53-1, unpadded 256-byte bodies, both reaction flags, all refusals."""
    for section, key in [("sealedRoomKey", "keyEpoch"), ("keyDelivery", "epoch")]:
        assert {0, 1, 2**53 - 1} <= {v[key] for v in VECTORS[section]}
    assert {0, 1, 2**53 - 1} <= {v["nextEpoch"] for v in VECTORS["knock"]}
    json_sizes = {len(b(v["plaintext"]).rstrip(b" ")) for v in VECTORS["message"]}
    assert {255, 256, 257} <= json_sizes
    assert {v["remove"] for v in VECTORS["reaction"]} == {True, False}
    assert {"sealedRoomKey", "keyDelivery", "message", "knock"} == {
        v["what"] for v in VECTORS["refused"]
    }


@cases("lp")
def test_lp_vectors(v: dict[str, Any]) -> None:
    """lp reproduces every lp vector."""
    assert e2ee.lp(b(v["x"])).hex() == v["out"]


@cases("wrapKey")
def test_wrap_key_vectors(v: dict[str, Any]) -> None:
    """wrap_key reproduces every HKDF vector."""
    assert e2ee.wrap_key(b(v["ikm"]), v["roomId"], v["info"].encode()).hex() == v["out"]


@cases("ad")
def test_ad_vectors(v: dict[str, Any]) -> None:
    """ad reproduces every associated-data vector."""
    assert e2ee.ad(v["roomId"], v["epoch"]).hex() == v["out"]


@cases("sealedRoomKey")
def test_sealed_room_key_vectors(v: dict[str, Any]) -> None:
    """seal_room_key writes every sealed key byte for byte, and open_room_key opens it."""
    secret, epoch = b(v["inviteSecret"]), v["keyEpoch"]
    sealed = e2ee.seal_room_key(secret, v["roomId"], epoch, b(v["roomKey"]), nonce=b(v["nonce"]))
    assert sealed.hex() == v["out"]
    assert e2ee.open_room_key(secret, v["roomId"], epoch, b(v["out"])).hex() == v["roomKey"]


@cases("keyDelivery")
def test_key_delivery_vectors(v: dict[str, Any]) -> None:
    """deliver_key writes every delivery byte for byte, and the recipient opens it."""
    sender, recipient = private(v["senderPrivate"]), private(v["recipientPrivate"])
    assert e2ee.public_bytes(sender).hex() == v["senderPublic"]
    assert e2ee.public_bytes(recipient).hex() == v["recipientPublic"]
    assert e2ee.wrap_key(b(v["sharedSecret"]), v["roomId"], b"roomd-e2ee-v1 key-wrap") == b(
        v["wrapKey"]
    )
    payload = e2ee.deliver_key(
        sender,
        b(v["recipientPublic"]),
        v["roomId"],
        v["epoch"],
        b(v["roomKey"]),
        nonce=b(v["nonce"]),
    )
    assert payload.hex() == v["out"]
    assert e2ee.payload_kind(payload) == e2ee.KEY_DELIVERY
    assert e2ee.open_delivery(recipient, v["roomId"], payload) == e2ee.KeyDelivery(
        epoch=v["epoch"], sender_public=b(v["senderPublic"]), room_key=b(v["roomKey"])
    )


@cases("knock")
def test_knock_vectors(v: dict[str, Any]) -> None:
    """knock writes every knock byte for byte, and it matches its own inputs."""
    secret, room, aid, device = b(v["inviteSecret"]), v["roomId"], v["aid"], b(v["devicePublic"])
    assert e2ee.wrap_key(secret, room, b"roomd-e2ee-v1 knock").hex() == v["knockKey"]
    payload = e2ee.knock(secret, room, aid, device, v["nextEpoch"])
    assert payload.hex() == v["out"]
    assert e2ee.payload_kind(payload) == e2ee.KNOCK
    read = e2ee.read_knock(payload)
    assert read == e2ee.Knock(next_epoch=v["nextEpoch"], mac=payload[9:])
    assert e2ee.knock_matches(read, secret, room, aid, device)


@cases("message")
def test_message_vectors(v: dict[str, Any]) -> None:
    """encode_body and encrypt_message reproduce every message; decryption reads it back."""
    key, room, sender, epoch = b(v["roomKey"]), v["roomId"], v["from"], v["keyEpoch"]
    plaintext = encode_body(Text(text=v["text"], sent_at=v["sentAt"]))
    assert plaintext.hex() == v["plaintext"]
    iv, ciphertext = e2ee.encrypt_message(key, room, sender, epoch, plaintext, iv=b(v["iv"]))
    assert (iv.hex(), ciphertext.hex()) == (v["iv"], v["out"])
    opened = e2ee.decrypt_message(key, room, sender, epoch, iv, b(v["out"]))
    assert decode_body(opened) == Text(text=v["text"], sent_at=v["sentAt"])


@cases("reaction")
def test_reaction_vectors(v: dict[str, Any]) -> None:
    """encode_body and encrypt_message reproduce every reaction; decryption reads it back."""
    key, room, sender, epoch = b(v["roomKey"]), v["roomId"], v["from"], v["keyEpoch"]
    body = Reaction(
        message_id=v["messageId"], emoji=v["emoji"], remove=v["remove"], sent_at=v["sentAt"]
    )
    plaintext = encode_body(body)
    assert plaintext.hex() == v["plaintext"]
    _, ciphertext = e2ee.encrypt_message(key, room, sender, epoch, plaintext, iv=b(v["iv"]))
    assert ciphertext.hex() == v["out"]
    opened = e2ee.decrypt_message(key, room, sender, epoch, b(v["iv"]), b(v["out"]))
    assert decode_body(opened) == body


@cases("invite")
def test_invite_vectors(v: dict[str, Any]) -> None:
    """invite_link writes every link character for character, and parse_invite reads it."""
    assert invite_link(v["base"], v["roomId"], b(v["secret"])) == v["link"]
    assert parse_invite(v["link"]) == Invite(
        url=v["base"], room_id=v["roomId"], secret=b(v["secret"])
    )


@cases("refused")
def test_refused_vectors(v: dict[str, Any]) -> None:
    """Every refused blob fails to open; a refused knock fails to parse or does not match."""
    blob = b(v["blob"])
    match v["what"]:
        case "sealedRoomKey":
            with pytest.raises(E2EEError):
                e2ee.open_room_key(b(v["inviteSecret"]), v["roomId"], v["keyEpoch"], blob)
        case "keyDelivery":
            with pytest.raises(E2EEError):
                e2ee.open_delivery(private(v["recipientPrivate"]), v["roomId"], blob)
        case "message":
            with pytest.raises(E2EEError):
                e2ee.decrypt_message(
                    b(v["roomKey"]), v["roomId"], v["from"], v["keyEpoch"], b(v["iv"]), blob
                )
        case "knock":
            try:
                read = e2ee.read_knock(blob)
            except E2EEError:
                return
            inputs = (b(v["inviteSecret"]), v["roomId"], v["aid"], b(v["devicePublic"]))
            assert not e2ee.knock_matches(read, *inputs)
        case other:
            pytest.fail(f"unknown refused kind {other!r}")
