"""Write roomd/client/e2ee_vectors.json, the shipped E2EE.md test vectors.

Run `.venv/bin/python -m tests.client.make_vectors`. The output is deterministic:
every key, secret, nonce and iv is `sha256("roomd-e2ee-v1 vectors: " + label)`
cut to length (the first key delivery uses RFC 7748's Alice and Bob instead).

The expected bytes are computed here without `roomd.client`, so that the
vectors test is a cross-check rather than the SDK testing itself: HKDF written
out from RFC 5869 with `hmac`, AES-GCM through cryptography's low-level
`Cipher(AES, GCM)`, X25519 through its key classes, lp and ad with `struct`,
the JSON body with a transcription of ECMAScript's `QuoteJSONString`, and the
invite fragment with `quote_plus` patched to `URLSearchParams`' safe set.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import struct
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

OUT = Path(__file__).resolve().parents[2] / "roomd" / "client" / "e2ee_vectors.json"

INVITE_INFO = "roomd-e2ee-v1 invite"
KEY_WRAP_INFO = "roomd-e2ee-v1 key-wrap"
KNOCK_INFO = "roomd-e2ee-v1 knock"
MAX_SAFE = 2**53 - 1
SENT_AT = 1_700_000_000_000

NOTE = (
    "Test vectors of roomd's E2EE.md, version 1. Bytes are lowercase hex, strings are "
    "text (their UTF-8 is what the scheme uses), private keys are raw 32-byte X25519 "
    "scalars, 'out' of message and reaction is the ciphertext with its 16-byte tag "
    "appended, and 'plaintext' is the padded JSON body. Every input is fixed: "
    "sha256('roomd-e2ee-v1 vectors: ' + a label) cut to length, except the first key "
    "delivery, which uses RFC 7748 section 6.1's Alice (sender) and Bob (recipient). "
    "Made by tests/client/make_vectors.py independently of the SDK: HKDF-SHA256 from "
    "RFC 5869 with hmac, AES-256-GCM and X25519 from cryptography's low-level classes, "
    "lp and ad with struct, the JSON body as ECMAScript's JSON.stringify quotes strings. "
    "Every 'refused' entry must fail to open: a sealedRoomKey, keyDelivery or message "
    "with an error; a knock either fails to parse (length, first byte) or does not "
    "match under the inputs given."
)


def label_bytes(label: str, n: int = 32) -> bytes:
    """Return the fixed input named `label`: n bytes of its SHA-256."""
    return hashlib.sha256(b"roomd-e2ee-v1 vectors: " + label.encode()).digest()[:n]


# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
ALICE_BOB_SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")


# --- Primitives, written out ---------------------------------------------------------------


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869: extract then expand, with HMAC-SHA256."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def aes_gcm(key: bytes, iv: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """AES-GCM with a 16-byte tag appended, through the low-level cipher interface."""
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    encryptor.authenticate_additional_data(ad)
    ciphertext = encryptor.update(plaintext) + encryptor.finalize()
    return ciphertext + encryptor.tag


def x25519(private: bytes, public: bytes) -> bytes:
    """RFC 7748 X25519 of a raw scalar and a raw public key."""
    key = X25519PrivateKey.from_private_bytes(private)
    return key.exchange(X25519PublicKey.from_public_bytes(public))


def x25519_public(private: bytes) -> bytes:
    """The raw public key of a raw scalar."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def lp(x: bytes) -> bytes:
    return struct.pack(">H", len(x)) + x


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def ad(room_id: str, epoch: int) -> bytes:
    return lp(room_id.encode()) + u64(epoch)


def wrap_key(ikm: bytes, room_id: str, info: str) -> bytes:
    return hkdf_sha256(ikm, room_id.encode(), info.encode(), 32)


def quote_json_string(value: str) -> str:
    """ECMAScript's QuoteJSONString (ES2019 and later), for well-formed strings."""
    short = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}
    short |= {0x22: '\\"', 0x5C: "\\\\"}
    out = ['"']
    for ch in value:
        cp = ord(ch)
        if cp in short:
            out.append(short[cp])
        elif cp < 0x20 or 0xD800 <= cp <= 0xDFFF:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def pad(body: str) -> bytes:
    data = body.encode()
    while len(data) % 256:
        data += b" "
    return data


def text_body(text: str, sent_at: int) -> str:
    return '{"text":' + quote_json_string(text) + ',"sentAt":' + str(sent_at) + "}"


def reaction_body(message_id: str, emoji: str, remove: bool, sent_at: int) -> str:
    return (
        '{"reaction":{"messageId":'
        + quote_json_string(message_id)
        + ',"emoji":'
        + quote_json_string(emoji)
        + ',"remove":'
        + ("true" if remove else "false")
        + '},"sentAt":'
        + str(sent_at)
        + "}"
    )


def form_encode(value: str) -> str:
    """URLSearchParams' serialiser: alphanumerics and *-._ raw, space '+', else %XX."""
    return urllib.parse.quote_plus(value, safe="*").replace("~", "%7E")


def self_check() -> None:
    """Check the written-out primitives against their RFCs before trusting them."""
    # RFC 5869, test case 1.
    okm = hkdf_sha256(
        bytes.fromhex("0b" * 22),
        bytes.fromhex("000102030405060708090a0b0c"),
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        42,
    )
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert x25519_public(ALICE_PRIVATE) == ALICE_PUBLIC
    assert x25519_public(BOB_PRIVATE) == BOB_PUBLIC
    assert x25519(ALICE_PRIVATE, BOB_PUBLIC) == x25519(BOB_PRIVATE, ALICE_PUBLIC)
    assert x25519(ALICE_PRIVATE, BOB_PUBLIC) == ALICE_BOB_SHARED


# --- Blobs ---------------------------------------------------------------------------------


def sealed_room_key(
    secret: bytes, room_id: str, epoch: int, room_key: bytes, nonce: bytes
) -> bytes:
    key = wrap_key(secret, room_id, INVITE_INFO)
    return b"\x01" + nonce + aes_gcm(key, nonce, room_key, ad(room_id, epoch))


def key_delivery(
    sender_private: bytes,
    recipient_public: bytes,
    room_id: str,
    epoch: int,
    room_key: bytes,
    nonce: bytes,
) -> bytes:
    key = wrap_key(x25519(sender_private, recipient_public), room_id, KEY_WRAP_INFO)
    sealed = aes_gcm(key, nonce, room_key, ad(room_id, epoch))
    return b"\x01" + u64(epoch) + x25519_public(sender_private) + nonce + sealed


def knock_mac(
    secret: bytes, room_id: str, aid: str, device_public: bytes, next_epoch: int
) -> bytes:
    key = wrap_key(secret, room_id, KNOCK_INFO)
    signed = lp(room_id.encode()) + lp(aid.encode()) + device_public + u64(next_epoch)
    return hmac.new(key, signed, hashlib.sha256).digest()


def knock(secret: bytes, room_id: str, aid: str, device_public: bytes, next_epoch: int) -> bytes:
    return b"\x02" + u64(next_epoch) + knock_mac(secret, room_id, aid, device_public, next_epoch)


def message_ad(room_id: str, sender: str, epoch: int) -> bytes:
    return lp(room_id.encode()) + lp(sender.encode()) + u64(epoch)


def flip(blob: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(blob)
    changed[index] ^= mask
    return bytes(changed)


# --- Vectors -------------------------------------------------------------------------------

ROOM = "r-7Hq2xN0pLk3vYb9sWcZtEa"
ROOM_E = "salle-é"
ROOM_WORLD = "房间🌍"


def lp_vectors() -> list[dict[str, Any]]:
    inputs = [b"", b"a", "é".encode(), bytes(range(255)), bytes(256 * [0x5A])]
    return [{"x": x.hex(), "out": lp(x).hex()} for x in inputs]


def wrap_key_vectors() -> list[dict[str, Any]]:
    cases = [
        (label_bytes("invite secret 1"), ROOM, INVITE_INFO),
        (label_bytes("invite secret 2"), ROOM_E, INVITE_INFO),
        (ALICE_BOB_SHARED, ROOM, KEY_WRAP_INFO),
        (label_bytes("shared secret"), ROOM_WORLD, KEY_WRAP_INFO),
        (label_bytes("invite secret 1"), ROOM, KNOCK_INFO),
        (label_bytes("invite secret 3"), ROOM_WORLD, KNOCK_INFO),
    ]
    return [
        {"ikm": ikm.hex(), "roomId": room, "info": info, "out": wrap_key(ikm, room, info).hex()}
        for ikm, room, info in cases
    ]


def ad_vectors() -> list[dict[str, Any]]:
    cases = [(ROOM, 0), (ROOM, 1), (ROOM_E, 256), (ROOM_WORLD, MAX_SAFE)]
    return [{"roomId": r, "epoch": e, "out": ad(r, e).hex()} for r, e in cases]


def sealed_vectors() -> list[dict[str, Any]]:
    cases = [
        ("invite secret 1", ROOM, 0, "room key 0"),
        ("invite secret 1", ROOM, 1, "room key 1"),
        ("invite secret 2", ROOM_E, 2, "room key 2"),
        ("invite secret 3", ROOM_WORLD, MAX_SAFE, "room key max"),
    ]
    vectors = []
    for secret_label, room, epoch, key_label in cases:
        secret, room_key = label_bytes(secret_label), label_bytes(key_label)
        nonce = label_bytes(f"sealed nonce {epoch}", 12)
        out = sealed_room_key(secret, room, epoch, room_key, nonce)
        vectors.append(
            {
                "inviteSecret": secret.hex(),
                "roomId": room,
                "keyEpoch": epoch,
                "roomKey": room_key.hex(),
                "nonce": nonce.hex(),
                "out": out.hex(),
            }
        )
    return vectors


def delivery_vectors() -> list[dict[str, Any]]:
    cases = [
        (ALICE_PRIVATE, BOB_PRIVATE, ROOM, 1, "room key 1"),
        (label_bytes("host device"), label_bytes("bob device"), ROOM_E, 0, "room key 0"),
        (
            label_bytes("host device"),
            label_bytes("carol device"),
            ROOM_WORLD,
            MAX_SAFE,
            "room key max",
        ),
    ]
    vectors = []
    for sender, recipient, room, epoch, key_label in cases:
        room_key = label_bytes(key_label)
        nonce = label_bytes(f"delivery nonce {epoch}", 12)
        recipient_public = x25519_public(recipient)
        shared = x25519(sender, recipient_public)
        vectors.append(
            {
                "senderPrivate": sender.hex(),
                "senderPublic": x25519_public(sender).hex(),
                "recipientPrivate": recipient.hex(),
                "recipientPublic": recipient_public.hex(),
                "roomId": room,
                "epoch": epoch,
                "roomKey": room_key.hex(),
                "nonce": nonce.hex(),
                "sharedSecret": shared.hex(),
                "wrapKey": wrap_key(shared, room, KEY_WRAP_INFO).hex(),
                "out": key_delivery(sender, recipient_public, room, epoch, room_key, nonce).hex(),
            }
        )
    return vectors


def knock_vectors() -> list[dict[str, Any]]:
    cases = [
        ("invite secret 1", ROOM, "alice", "alice device", 0),
        ("invite secret 2", ROOM_E, "josé", "bob device", 1),
        ("invite secret 3", ROOM_WORLD, "用户🌍", "carol device", MAX_SAFE),
    ]
    vectors = []
    for secret_label, room, aid, device_label, next_epoch in cases:
        secret = label_bytes(secret_label)
        device_public = x25519_public(label_bytes(device_label))
        vectors.append(
            {
                "inviteSecret": secret.hex(),
                "roomId": room,
                "aid": aid,
                "devicePublic": device_public.hex(),
                "nextEpoch": next_epoch,
                "knockKey": wrap_key(secret, room, KNOCK_INFO).hex(),
                "out": knock(secret, room, aid, device_public, next_epoch).hex(),
            }
        )
    return vectors


def message_cases() -> list[tuple[str, str, int, str, int]]:
    """(room id, from, key epoch, text, sentAt): the shapes padding and quoting must get right."""
    overhead = len(text_body("", SENT_AT).encode())  # 34 bytes of JSON around the text
    specials = 'say "hi" \\ C:\\dir\nnext\ttab\r\x00\x01\x08\x0c\x1f\x7f\u2028\u2029 </script> / é'
    return [
        (ROOM, "alice", 1, "hello", SENT_AT),
        (ROOM, "alice", 0, "", 0),
        (ROOM, "alice", 1, "a" * (255 - overhead), SENT_AT),
        (ROOM, "alice", 1, "b" * (256 - overhead), SENT_AT),
        (ROOM, "alice", 1, "c" * (257 - overhead), SENT_AT),
        # 111 characters, 222 bytes: the JSON is 256 bytes, so no padding.
        (ROOM, "bob", 2, "é" * ((256 - overhead) // 2), SENT_AT),
        # 112 characters but 223 bytes: padding counts bytes, not characters.
        (ROOM, "bob", 2, "é" * ((256 - overhead) // 2) + "!", SENT_AT),
        (ROOM_WORLD, "josé", MAX_SAFE, "héllo 🌍 世界", MAX_SAFE),
        (ROOM_E, "用户🌍", 3, specials, SENT_AT + 1),
        (ROOM, "alice", 1, "世界" * 100, SENT_AT + 2),
    ]


def message_vectors() -> list[dict[str, Any]]:
    vectors = []
    for index, (room, sender, epoch, text, sent_at) in enumerate(message_cases()):
        room_key = label_bytes(f"room key {epoch}")
        iv = label_bytes(f"message iv {index}", 12)
        plaintext = pad(text_body(text, sent_at))
        vectors.append(
            {
                "roomKey": room_key.hex(),
                "roomId": room,
                "from": sender,
                "keyEpoch": epoch,
                "iv": iv.hex(),
                "text": text,
                "sentAt": sent_at,
                "plaintext": plaintext.hex(),
                "out": aes_gcm(room_key, iv, plaintext, message_ad(room, sender, epoch)).hex(),
            }
        )
    return vectors


def reaction_vectors() -> list[dict[str, Any]]:
    cases = [
        (ROOM, "bob", 1, "01HF3K2V9X4M7Q8R5T6Y0Z1A2B", "👍", False, SENT_AT + 10),
        (ROOM, "bob", 1, "01HF3K2V9X4M7Q8R5T6Y0Z1A2B", "👍", True, SENT_AT + 20),
        (ROOM_WORLD, "用户🌍", MAX_SAFE, 'm-é"42"', "👩\u200d💻", False, 0),
        (ROOM_E, "josé", 0, "m-7", "❤️", True, MAX_SAFE),
    ]
    vectors = []
    for index, (room, sender, epoch, message_id, emoji, remove, sent_at) in enumerate(cases):
        room_key = label_bytes(f"room key {epoch}")
        iv = label_bytes(f"reaction iv {index}", 12)
        plaintext = pad(reaction_body(message_id, emoji, remove, sent_at))
        vectors.append(
            {
                "roomKey": room_key.hex(),
                "roomId": room,
                "from": sender,
                "keyEpoch": epoch,
                "iv": iv.hex(),
                "messageId": message_id,
                "emoji": emoji,
                "remove": remove,
                "sentAt": sent_at,
                "plaintext": plaintext.hex(),
                "out": aes_gcm(room_key, iv, plaintext, message_ad(room, sender, epoch)).hex(),
            }
        )
    return vectors


def invite_vectors() -> list[dict[str, Any]]:
    # Bytes fb ff bf give base64url '-' and '_', which URLSearchParams leaves as they are.
    tricky_secret = bytes([0xFB, 0xFF, 0xBF] * 10 + [0xFF, 0xFE])
    cases = [
        ("ws://127.0.0.1:8765/v1", ROOM, label_bytes("invite secret 1")),
        ("wss://chat.example.com/v1", "salle é & co=1", tricky_secret),
        ("ws://[::1]:8765/v1", ROOM_WORLD, label_bytes("invite secret 3")),
        ("http://127.0.0.1:8080/demo", "a+b/c?d#e%f~g*h'(x)!", label_bytes("invite secret 2")),
        ("https://demo.example.com/demo", ROOM, label_bytes("invite secret 1")),
    ]
    vectors = []
    for base, room, secret in cases:
        encoded = base64.urlsafe_b64encode(secret).decode().rstrip("=")
        link = f"{base}#room={form_encode(room)}&secret={encoded}"
        vectors.append({"base": base, "roomId": room, "secret": secret.hex(), "link": link})
    return vectors


def refused_vectors() -> list[dict[str, Any]]:
    refused: list[dict[str, Any]] = []
    secret, room_key = label_bytes("invite secret 1"), label_bytes("room key 1")
    nonce = label_bytes("refused nonce", 12)
    sealed = sealed_room_key(secret, ROOM, 1, room_key, nonce)

    def sealed_entry(
        why: str, blob: bytes, *, s: bytes = secret, room: str = ROOM, epoch: int = 1
    ) -> None:
        refused.append(
            {
                "what": "sealedRoomKey",
                "why": why,
                "inviteSecret": s.hex(),
                "roomId": room,
                "keyEpoch": epoch,
                "blob": blob.hex(),
            }
        )

    sealed_entry("a flipped tag bit", flip(sealed, len(sealed) - 1))
    sealed_entry("a flipped nonce bit", flip(sealed, 1))
    sealed_entry("a flipped ciphertext bit", flip(sealed, 20, 0x80))
    sealed_entry("first byte 0x02, an unknown version", b"\x02" + sealed[1:])
    sealed_entry("first byte 0x00, an unknown version", b"\x00" + sealed[1:])
    sealed_entry("sealed for epoch 1, opened as epoch 2 (ad)", sealed, epoch=2)
    sealed_entry("sealed for epoch 1, opened as epoch 0 (ad)", sealed, epoch=0)
    sealed_entry("sealed in another room (salt and ad)", sealed, room=ROOM_E)
    sealed_entry("the wrong invite secret", sealed, s=label_bytes("invite secret 2"))
    sealed_entry("truncated by one byte", sealed[:-1])
    sealed_entry("one byte too many", sealed + b"\x00")
    sealed_entry(
        "a valid seal of a 33-byte room key: a sealed room key is 61 bytes",
        sealed_room_key(secret, ROOM, 1, room_key + b"\x00", nonce),
    )

    host, bob = label_bytes("host device"), label_bytes("bob device")
    delivery_nonce = label_bytes("refused delivery nonce", 12)
    delivery = key_delivery(host, x25519_public(bob), ROOM, 1, room_key, delivery_nonce)

    def delivery_entry(why: str, blob: bytes, *, recipient: bytes = bob, room: str = ROOM) -> None:
        refused.append(
            {
                "what": "keyDelivery",
                "why": why,
                "recipientPrivate": recipient.hex(),
                "roomId": room,
                "blob": blob.hex(),
            }
        )

    delivery_entry("a flipped tag bit", flip(delivery, len(delivery) - 1))
    delivery_entry("a flipped nonce bit", flip(delivery, 1 + 8 + 32))
    delivery_entry("first byte 0x02, a knock", b"\x02" + delivery[1:])
    delivery_entry("first byte 0x03, an unknown kind", b"\x03" + delivery[1:])
    delivery_entry("epoch field 1 changed to 2 (ad)", delivery[:8] + b"\x02" + delivery[9:])
    other_sender = x25519_public(label_bytes("mallory device"))
    delivery_entry(
        "sender_public replaced by another key (ECDH)", delivery[:9] + other_sender + delivery[41:]
    )
    delivery_entry(
        "sender_public of low order (all zeros): no shared secret",
        delivery[:9] + bytes(32) + delivery[41:],
    )
    delivery_entry("opened by another device key", delivery, recipient=label_bytes("carol device"))
    delivery_entry("sealed in another room (salt and ad)", delivery, room=ROOM_E)
    delivery_entry("truncated by one byte", delivery[:-1])
    delivery_entry(
        "a valid seal of a 33-byte room key: a key delivery is 101 bytes",
        key_delivery(host, x25519_public(bob), ROOM, 1, room_key + b"\x00", delivery_nonce),
    )

    iv = label_bytes("refused iv", 12)
    plaintext = pad(text_body("hello", SENT_AT))
    ciphertext = aes_gcm(room_key, iv, plaintext, message_ad(ROOM, "alice", 1))

    def message_entry(
        why: str,
        blob: bytes,
        *,
        key: bytes = room_key,
        room: str = ROOM,
        sender: str = "alice",
        epoch: int = 1,
        message_iv: bytes = iv,
    ) -> None:
        refused.append(
            {
                "what": "message",
                "why": why,
                "roomKey": key.hex(),
                "roomId": room,
                "from": sender,
                "keyEpoch": epoch,
                "iv": message_iv.hex(),
                "blob": blob.hex(),
            }
        )

    message_entry("a flipped tag bit", flip(ciphertext, len(ciphertext) - 1))
    message_entry("a flipped ciphertext bit", flip(ciphertext, 0))
    message_entry("a flipped iv bit", ciphertext, message_iv=flip(iv, 11))
    message_entry("sent under epoch 1, opened as epoch 2 (ad)", ciphertext, epoch=2)
    message_entry("sent by alice, opened as from bob (ad)", ciphertext, sender="bob")
    message_entry("sent in another room (ad)", ciphertext, room=ROOM_E)
    message_entry("the room key of another epoch", ciphertext, key=label_bytes("room key 2"))
    message_entry("the tag cut off", ciphertext[:-16])
    message_entry("shorter than a tag", ciphertext[:15])
    message_entry("an 11-byte iv", ciphertext, message_iv=iv[:11])

    device_public = x25519_public(label_bytes("alice device"))
    good_knock = knock(secret, ROOM, "alice", device_public, 1)

    def knock_entry(
        why: str,
        blob: bytes,
        *,
        s: bytes = secret,
        room: str = ROOM,
        aid: str = "alice",
        public: bytes = device_public,
    ) -> None:
        refused.append(
            {
                "what": "knock",
                "why": why,
                "inviteSecret": s.hex(),
                "roomId": room,
                "aid": aid,
                "devicePublic": public.hex(),
                "blob": blob.hex(),
            }
        )

    knock_entry("a flipped mac bit", flip(good_knock, len(good_knock) - 1))
    knock_entry("first byte 0x01, a key delivery", b"\x01" + good_knock[1:])
    knock_entry("next_epoch field 1 changed to 2", good_knock[:8] + b"\x02" + good_knock[9:])
    knock_entry("checked for another AID", good_knock, aid="bob")
    knock_entry(
        "checked for another device key",
        good_knock,
        public=x25519_public(label_bytes("mallory device")),
    )
    knock_entry(
        "checked against another invite secret", good_knock, s=label_bytes("invite secret 2")
    )
    knock_entry("checked in another room", good_knock, room=ROOM_E)
    knock_entry("truncated by one byte", good_knock[:-1])
    knock_entry("one byte too many", good_knock + b"\x00")
    return refused


def build() -> dict[str, Any]:
    """Return every vector, in the shipped file's layout."""
    self_check()
    return {
        "scheme": "roomd-e2ee-v1",
        "note": NOTE,
        "lp": lp_vectors(),
        "wrapKey": wrap_key_vectors(),
        "ad": ad_vectors(),
        "sealedRoomKey": sealed_vectors(),
        "keyDelivery": delivery_vectors(),
        "knock": knock_vectors(),
        "message": message_vectors(),
        "reaction": reaction_vectors(),
        "invite": invite_vectors(),
        "refused": refused_vectors(),
    }


def render() -> str:
    """Return the file's text: ASCII only (non-ASCII as JSON escapes), so no tool mangles it."""
    return json.dumps(build(), indent=2, ensure_ascii=True) + "\n"


def main() -> None:
    OUT.write_text(render(), encoding="ascii")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
