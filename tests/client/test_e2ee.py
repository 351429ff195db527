"""The E2EE primitives: layouts, round trips, and refusal of anything tampered or misused."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from roomd.client import e2ee
from roomd.client.e2ee import E2EEError

ROOM = "r-7Hq2xN0pLk3vYb9sWcZtEa"
SECRET = bytes(range(32))
ROOM_KEY = bytes(range(100, 132))
NONCE = bytes(12)
PADDED = b'{"text":"hi","sentAt":1}'.ljust(256)

HOST = X25519PrivateKey.from_private_bytes(bytes([7]) * 32)
BOB = X25519PrivateKey.from_private_bytes(bytes([9]) * 32)
SEALED = e2ee.seal_room_key(SECRET, ROOM, 1, ROOM_KEY, nonce=NONCE)
DELIVERY = e2ee.deliver_key(HOST, e2ee.public_bytes(BOB), ROOM, 1, ROOM_KEY, nonce=NONCE)
IV, CIPHERTEXT = e2ee.encrypt_message(ROOM_KEY, ROOM, "alice", 1, PADDED, iv=NONCE)


def tampered(blob: bytes) -> st.SearchStrategy[bytes]:
    """Every blob that differs from `blob` by flipped bits, a cut or extra bytes."""
    flipped = st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)).map(
        lambda change: (
            blob[: change[0]] + bytes([blob[change[0]] ^ change[1]]) + blob[change[0] + 1 :]
        )
    )
    cut = st.integers(0, len(blob) - 1).map(lambda n: blob[:n])
    extended = st.binary(min_size=1, max_size=32).map(lambda extra: blob + extra)
    return st.one_of(flipped, cut, extended)


def test_lp_prefixes_the_length_as_two_big_endian_bytes() -> None:
    """lp writes len(x) as 2 big-endian bytes, then x."""
    assert e2ee.lp(b"") == b"\x00\x00"
    assert e2ee.lp(b"abc") == b"\x00\x03abc"
    assert e2ee.lp(bytes(0xFFFF))[:2] == b"\xff\xff"


def test_lp_refuses_more_than_65535_bytes() -> None:
    """lp refuses data whose length does not fit 2 bytes."""
    with pytest.raises(ValueError, match="at most 65535"):
        e2ee.lp(bytes(0x10000))


def test_ad_is_the_room_ids_utf8_with_its_length_then_the_epoch() -> None:
    """ad is lp(UTF-8 of the room id) || epoch as 8 big-endian bytes."""
    assert e2ee.ad("é", 258) == b"\x00\x02\xc3\xa9" + b"\x00" * 6 + b"\x01\x02"


@pytest.mark.parametrize("epoch", [-1, 2**64])
def test_an_epoch_outside_eight_unsigned_bytes_is_a_value_error(epoch: int) -> None:
    """Epochs are 0..2**64-1: anything else is the caller's bug, not a bad blob."""
    with pytest.raises(ValueError, match="epoch"):
        e2ee.ad(ROOM, epoch)


def test_wrap_key_separates_rooms_and_uses() -> None:
    """wrap_key gives 32 bytes, and another room or another info gives another key."""
    key = e2ee.wrap_key(SECRET, ROOM, b"roomd-e2ee-v1 invite")
    assert len(key) == 32
    assert key != e2ee.wrap_key(SECRET, ROOM + "x", b"roomd-e2ee-v1 invite")
    assert key != e2ee.wrap_key(SECRET, ROOM, b"roomd-e2ee-v1 knock")


def test_a_sealed_room_key_opens_under_its_secret_room_and_epoch() -> None:
    """seal_room_key writes 0x01 || nonce || 48 bytes, and open_room_key gives the key back."""
    assert len(SEALED) == 61
    assert SEALED[:13] == b"\x01" + NONCE
    assert e2ee.open_room_key(SECRET, ROOM, 1, SEALED) == ROOM_KEY


def test_sealing_without_a_nonce_picks_a_fresh_random_one() -> None:
    """Two seals of the same key differ (random nonces) and both open."""
    first = e2ee.seal_room_key(SECRET, ROOM, 0, ROOM_KEY)
    second = e2ee.seal_room_key(SECRET, ROOM, 0, ROOM_KEY)
    assert first[1:13] != second[1:13]
    assert e2ee.open_room_key(SECRET, ROOM, 0, first) == ROOM_KEY
    assert e2ee.open_room_key(SECRET, ROOM, 0, second) == ROOM_KEY


@pytest.mark.parametrize(
    ("secret", "room", "epoch", "sealed", "rule"),
    [
        (SECRET, ROOM, 2, SEALED, "does not open for epoch 2"),
        (SECRET, ROOM + "x", 1, SEALED, "does not open"),
        (bytes(32), ROOM, 1, SEALED, "does not open"),
        (SECRET, ROOM, 1, b"\x02" + SEALED[1:], "version 0x02 is unknown"),
        (SECRET, ROOM, 1, SEALED[:-1], "61 bytes, got 60"),
        (SECRET, ROOM, 1, b"", "61 bytes, got 0"),
    ],
)
def test_a_sealed_room_key_opens_for_nothing_else(
    secret: bytes, room: str, epoch: int, sealed: bytes, rule: str
) -> None:
    """open_room_key refuses another secret, room or epoch, an unknown version, a bad length."""
    with pytest.raises(E2EEError, match=rule) as refused:
        e2ee.open_room_key(secret, room, epoch, sealed)
    assert secret.hex() not in str(refused.value)
    assert ROOM_KEY.hex() not in str(refused.value)


@pytest.mark.parametrize(
    ("invite_secret", "room_key", "nonce"),
    [
        (SECRET[:31], ROOM_KEY, NONCE),
        (SECRET, ROOM_KEY + b"x", NONCE),
        (SECRET, ROOM_KEY, NONCE[:11]),
    ],
)
def test_sealing_with_a_wrong_length_is_a_value_error(
    invite_secret: bytes, room_key: bytes, nonce: bytes
) -> None:
    """A secret or room key that is not 32 bytes, or a nonce that is not 12, is a bug."""
    with pytest.raises(ValueError, match="bytes, got"):
        e2ee.seal_room_key(invite_secret, ROOM, 1, room_key, nonce=nonce)


@given(tampered(SEALED))
def test_any_tampering_of_a_sealed_room_key_is_refused(blob: bytes) -> None:
    """Any flipped bit, cut or extension of a sealed room key fails to open."""
    with pytest.raises(E2EEError):
        e2ee.open_room_key(SECRET, ROOM, 1, blob)


def test_a_key_delivery_carries_the_epoch_and_the_senders_public_key() -> None:
    """deliver_key writes 0x01 || epoch || sender_public || nonce || 48 bytes, 101 in all."""
    assert len(DELIVERY) == 101
    assert DELIVERY[:9] == b"\x01" + (1).to_bytes(8, "big")
    assert DELIVERY[9:41] == e2ee.public_bytes(HOST)
    assert DELIVERY[41:53] == NONCE
    assert e2ee.payload_kind(DELIVERY) == e2ee.KEY_DELIVERY


def test_a_key_delivery_opens_with_the_recipients_device_key() -> None:
    """open_delivery gives the epoch, the sender's public key and the room key."""
    delivery = e2ee.open_delivery(BOB, ROOM, DELIVERY)
    assert delivery == e2ee.KeyDelivery(
        epoch=1, sender_public=e2ee.public_bytes(HOST), room_key=ROOM_KEY
    )


def test_a_key_delivery_opens_for_no_other_device_or_room() -> None:
    """Another device key, or the same key in another room, cannot open a delivery."""
    with pytest.raises(E2EEError, match="does not open"):
        e2ee.open_delivery(e2ee.new_device_key(), ROOM, DELIVERY)
    with pytest.raises(E2EEError, match="does not open"):
        e2ee.open_delivery(BOB, ROOM + "x", DELIVERY)


def test_a_key_delivery_from_a_low_order_key_is_refused() -> None:
    """A sender public key of low order (no shared secret) is an E2EEError, not a crash."""
    payload = DELIVERY[:9] + bytes(32) + DELIVERY[41:]
    with pytest.raises(E2EEError, match="low order"):
        e2ee.open_delivery(BOB, ROOM, payload)


def test_delivering_to_a_low_order_key_is_a_value_error() -> None:
    """deliver_key refuses a recipient public key with which no shared secret exists."""
    with pytest.raises(ValueError):
        e2ee.deliver_key(HOST, bytes(32), ROOM, 1, ROOM_KEY)


@pytest.mark.parametrize(
    ("payload", "rule"),
    [
        (b"\x02" + DELIVERY[1:], "not a key delivery"),
        (DELIVERY[:-1], "101 bytes, got 100"),
        (DELIVERY + b"\x00", "101 bytes, got 102"),
    ],
)
def test_a_key_delivery_of_the_wrong_kind_or_length_is_refused(payload: bytes, rule: str) -> None:
    """open_delivery checks the first byte and the length before any cryptography."""
    with pytest.raises(E2EEError, match=rule):
        e2ee.open_delivery(BOB, ROOM, payload)


@given(tampered(DELIVERY))
def test_any_tampering_of_a_key_delivery_is_refused(payload: bytes) -> None:
    """Any flipped bit, cut or extension of a key delivery fails to open."""
    with pytest.raises(E2EEError):
        e2ee.open_delivery(BOB, ROOM, payload)


def test_a_knock_matches_the_secret_aid_and_device_it_was_made_with() -> None:
    """knock writes 0x02 || next_epoch || 32-byte HMAC, which knock_matches accepts."""
    device = e2ee.public_bytes(BOB)
    payload = e2ee.knock(SECRET, ROOM, "bob", device, 3)
    assert len(payload) == 41
    assert e2ee.payload_kind(payload) == e2ee.KNOCK
    read = e2ee.read_knock(payload)
    assert read.next_epoch == 3
    assert e2ee.knock_matches(read, SECRET, ROOM, "bob", device)


@pytest.mark.parametrize(
    ("secret", "room", "aid", "device"),
    [
        (bytes(32), ROOM, "bob", e2ee.public_bytes(BOB)),
        (SECRET, ROOM + "x", "bob", e2ee.public_bytes(BOB)),
        (SECRET, ROOM, "bobby", e2ee.public_bytes(BOB)),
        (SECRET, ROOM, "bob", e2ee.public_bytes(HOST)),
    ],
)
def test_a_knock_matches_nothing_else(secret: bytes, room: str, aid: str, device: bytes) -> None:
    """Another secret, room, AID or device key does not match a knock."""
    read = e2ee.read_knock(e2ee.knock(SECRET, ROOM, "bob", e2ee.public_bytes(BOB), 0))
    assert not e2ee.knock_matches(read, secret, room, aid, device)


def test_a_knock_with_a_changed_next_epoch_does_not_match() -> None:
    """The MAC covers next_epoch: a knock whose epoch was changed matches no secret."""
    payload = e2ee.knock(SECRET, ROOM, "bob", e2ee.public_bytes(BOB), 1)
    changed = payload[:8] + b"\x05" + payload[9:]
    assert not e2ee.knock_matches(
        e2ee.read_knock(changed), SECRET, ROOM, "bob", e2ee.public_bytes(BOB)
    )


@pytest.mark.parametrize(
    ("payload", "rule"),
    [(b"\x01" + bytes(40), "not a knock"), (b"\x02" + bytes(39), "41 bytes, got 40")],
)
def test_a_knock_of_the_wrong_kind_or_length_is_refused(payload: bytes, rule: str) -> None:
    """read_knock checks the first byte and the length."""
    with pytest.raises(E2EEError, match=rule):
        e2ee.read_knock(payload)


@pytest.mark.parametrize(
    ("payload", "rule"),
    [(b"", "at least 1 byte"), (b"\x00", "0x00 is unknown"), (b"\x03" + bytes(40), "0x03")],
)
def test_payload_kind_refuses_what_is_no_kind_of_version_1(payload: bytes, rule: str) -> None:
    """payload_kind refuses an empty payload and any first byte but 0x01 and 0x02."""
    with pytest.raises(E2EEError, match=rule):
        e2ee.payload_kind(payload)


def test_a_message_round_trips_and_its_size_is_256k_plus_16() -> None:
    """encrypt_message appends a 16-byte tag, and decrypt_message gives the body back."""
    assert IV == NONCE
    assert len(CIPHERTEXT) == 256 + 16
    assert e2ee.decrypt_message(ROOM_KEY, ROOM, "alice", 1, IV, CIPHERTEXT) == PADDED


def test_a_message_without_an_iv_gets_a_random_one() -> None:
    """encrypt_message picks a fresh 12-byte iv per message when none is given."""
    first, _ = e2ee.encrypt_message(ROOM_KEY, ROOM, "alice", 1, PADDED)
    second, _ = e2ee.encrypt_message(ROOM_KEY, ROOM, "alice", 1, PADDED)
    assert len(first) == 12
    assert first != second


@pytest.mark.parametrize("size", [0, 255, 257])
def test_an_unpadded_message_is_a_value_error(size: int) -> None:
    """encrypt_message takes only bodies padded to a non-empty multiple of 256 bytes."""
    with pytest.raises(ValueError, match="multiple of 256"):
        e2ee.encrypt_message(ROOM_KEY, ROOM, "alice", 1, bytes(size))


@pytest.mark.parametrize(
    ("room", "sender", "epoch", "iv", "ciphertext", "rule"),
    [
        (ROOM, "alice", 2, IV, CIPHERTEXT, "does not open"),
        (ROOM, "bob", 1, IV, CIPHERTEXT, "does not open"),
        (ROOM + "x", "alice", 1, IV, CIPHERTEXT, "does not open"),
        (ROOM, "alice", 1, IV[:11], CIPHERTEXT, "12 bytes, got 11"),
        (ROOM, "alice", 1, IV, CIPHERTEXT[:15], "at least 16 bytes"),
    ],
)
def test_a_message_opens_for_no_other_room_sender_or_epoch(
    room: str, sender: str, epoch: int, iv: bytes, ciphertext: bytes, rule: str
) -> None:
    """The room id, the sender's AID and the epoch are all bound to the ciphertext."""
    with pytest.raises(E2EEError, match=rule):
        e2ee.decrypt_message(ROOM_KEY, room, sender, epoch, iv, ciphertext)


@given(st.booleans(), st.data())
def test_any_tampering_of_a_message_is_refused(in_iv: bool, data: st.DataObject) -> None:
    """Any flipped bit, cut or extension of a message's iv or ciphertext fails to open."""
    iv, ciphertext = IV, CIPHERTEXT
    if in_iv:
        iv = data.draw(tampered(IV))
    else:
        ciphertext = data.draw(tampered(CIPHERTEXT))
    with pytest.raises(E2EEError):
        e2ee.decrypt_message(ROOM_KEY, ROOM, "alice", 1, iv, ciphertext)


def test_device_keys_and_secrets_are_fresh_32_byte_values() -> None:
    """new_device_key and new_secret give new random values; public_bytes is raw 32 bytes."""
    assert len(e2ee.public_bytes(e2ee.new_device_key())) == 32
    assert e2ee.public_bytes(e2ee.new_device_key()) != e2ee.public_bytes(e2ee.new_device_key())
    assert len(e2ee.new_secret()) == 32
    assert e2ee.new_secret() != e2ee.new_secret()
