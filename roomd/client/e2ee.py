"""The derivations and blobs of E2EE.md, byte for byte: pure, synchronous, no I/O.

Theory of operation: three secrets exist (a device's X25519 key pair, a room key
per `keyEpoch`, an invite secret per invite). Each blob is built from one of them
through `wrap_key` (HKDF-SHA256 with the room id as salt and a fixed info string
per use), so a key made for one room, one use or one epoch never opens another:

- a sealed room key (`0x01 || nonce || AES-GCM`) travels in `encryptedRoomKey`
  and opens with the invite secret;
- a key delivery (`0x01 || epoch || sender_public || nonce || AES-GCM`) travels
  in a `signal` and opens with the recipient's device key;
- a knock (`0x02 || next_epoch || HMAC`) travels in a `signal` to the host and
  proves that its sender holds an invite secret;
- a message's ciphertext opens with the room key of its `keyEpoch`.

Openers check the first byte and the exact length before any cryptography, and
every failure to open is one `E2EEError`. Misuse by the caller (a key of the
wrong length, an epoch out of range) is a `ValueError`: a bug, not a bad blob.
The wire fields themselves (base64 or not) are the transport's business: these
functions take and return raw bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_DELIVERY = 1
"""First byte of a `signal` payload that delivers a room key."""
KNOCK = 2
"""First byte of a `signal` payload that knocks to the host."""

_SEALED_VERSION = 1
_INVITE_INFO = b"roomd-e2ee-v1 invite"
_KEY_WRAP_INFO = b"roomd-e2ee-v1 key-wrap"
_KNOCK_INFO = b"roomd-e2ee-v1 knock"

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_EPOCH = struct.Struct(">Q")
_MAX_EPOCH = 2**64 - 1
_MAX_LP = 0xFFFF

_SEALED_LEN = 1 + _NONCE_LEN + _KEY_LEN + _TAG_LEN  # 61
_DELIVERY_LEN = 1 + _EPOCH.size + _KEY_LEN + _NONCE_LEN + _KEY_LEN + _TAG_LEN  # 101
_KNOCK_LEN = 1 + _EPOCH.size + hashlib.sha256().digest_size  # 41
_PADDING_BLOCK = 256


class E2EEError(Exception):
    """A blob that cannot be opened: wrong key, tampered, unknown first byte, wrong length.

    The message names the rule that failed and never holds key bytes.
    """


@attrs.frozen
class KeyDelivery:
    """An opened key delivery: the room key of `epoch`, sealed by `sender_public`."""

    epoch: int
    sender_public: bytes
    room_key: bytes = attrs.field(repr=False)  # never in a log line or a traceback


@attrs.frozen
class Knock:
    """A parsed knock, not yet checked: see `knock_matches`."""

    next_epoch: int
    mac: bytes


def lp(data: bytes) -> bytes:
    """Prefix `data` with its length as 2 big-endian bytes.

    Raises:
        ValueError: `data` is longer than 65535 bytes.
    """
    if len(data) > _MAX_LP:
        raise ValueError(f"lp takes at most {_MAX_LP} bytes, got {len(data)}")
    return struct.pack(">H", len(data)) + data


def wrap_key(ikm: bytes, room_id: str, info: bytes) -> bytes:
    """Derive a 32-byte key from `ikm`: HKDF-SHA256, salt the UTF-8 of `room_id`."""
    hkdf = HKDF(algorithm=hashes.SHA256(), length=_KEY_LEN, salt=room_id.encode(), info=info)
    return hkdf.derive(ikm)


def ad(room_id: str, epoch: int) -> bytes:
    """Return the associated data of a room key: `lp(room_id) || epoch(8)`.

    Raises:
        ValueError: `epoch` does not fit 8 unsigned bytes, or the room id is too long.
    """
    return lp(room_id.encode()) + _epoch(epoch)


def seal_room_key(
    invite_secret: bytes,
    room_id: str,
    epoch: int,
    room_key: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal the room key of `epoch` under an invite secret, for `encryptedRoomKey`.

    Args:
        nonce: 12 bytes; random when omitted (tests pass one to be deterministic).

    Returns:
        The 61 bytes `0x01 || nonce || AES-GCM(room_key)`.

    Raises:
        ValueError: a secret, key or nonce of the wrong length, or a bad epoch.
    """
    _check_len("invite secret", invite_secret, _KEY_LEN)
    _check_len("room key", room_key, _KEY_LEN)
    nonce = _nonce(nonce)
    key = wrap_key(invite_secret, room_id, _INVITE_INFO)
    sealed = AESGCM(key).encrypt(nonce, room_key, ad(room_id, epoch))
    return bytes([_SEALED_VERSION]) + nonce + sealed


def open_room_key(invite_secret: bytes, room_id: str, epoch: int, sealed: bytes) -> bytes:
    """Open a sealed room key that claims to be the key of `epoch` in `room_id`.

    Returns:
        The 32-byte room key.

    Raises:
        E2EEError: `sealed` is not 61 bytes, its version is not 0x01, or it does
            not open under this secret, room and epoch (wrong or tampered).
        ValueError: an invite secret that is not 32 bytes, or a bad epoch.
    """
    _check_len("invite secret", invite_secret, _KEY_LEN)
    if len(sealed) != _SEALED_LEN:
        raise E2EEError(f"a sealed room key is {_SEALED_LEN} bytes, got {len(sealed)}")
    if sealed[0] != _SEALED_VERSION:
        raise E2EEError(f"sealed room key version 0x{sealed[0]:02x} is unknown (expected 0x01)")
    nonce, body = sealed[1 : 1 + _NONCE_LEN], sealed[1 + _NONCE_LEN :]
    key = wrap_key(invite_secret, room_id, _INVITE_INFO)
    try:
        return AESGCM(key).decrypt(nonce, body, ad(room_id, epoch))
    except InvalidTag:
        raise E2EEError(
            f"sealed room key does not open for epoch {epoch}: "
            "wrong invite secret, room or epoch, or tampered"
        ) from None


def deliver_key(
    sender_private: X25519PrivateKey,
    recipient_public: bytes,
    room_id: str,
    epoch: int,
    room_key: bytes,
    *,
    nonce: bytes | None = None,
) -> bytes:
    """Seal the room key of `epoch` to one member's device key, for a `signal`.

    Args:
        sender_private: the sender's (the host's) device key, the one the room lists.
        recipient_public: the raw 32-byte `publicKey` the room lists for the recipient.
        nonce: 12 bytes; random when omitted.

    Returns:
        The whole 101-byte payload `0x01 || epoch || sender_public || nonce || AES-GCM`.

    Raises:
        ValueError: a key or nonce of the wrong length, a bad epoch, or a
            `recipient_public` of low order (no shared secret exists).
    """
    _check_len("recipient public key", recipient_public, _KEY_LEN)
    _check_len("room key", room_key, _KEY_LEN)
    nonce = _nonce(nonce)
    # cryptography refuses an all-zero shared secret with ValueError, as WebCrypto does.
    shared = sender_private.exchange(X25519PublicKey.from_public_bytes(recipient_public))
    key = wrap_key(shared, room_id, _KEY_WRAP_INFO)
    sealed = AESGCM(key).encrypt(nonce, room_key, ad(room_id, epoch))
    return bytes([KEY_DELIVERY]) + _epoch(epoch) + public_bytes(sender_private) + nonce + sealed


def can_receive_deliveries(public_key: bytes) -> bool:
    """Return whether a key delivery can be sealed to `public_key` (`deliver_key` takes it).

    That is: 32 bytes, and not a point of low order, with which no shared secret exists.
    """
    if len(public_key) != _KEY_LEN:
        return False
    try:
        # Any scalar gives the all-zero secret with a low-order point (X25519 clamps to x8).
        _LOW_ORDER_PROBE.exchange(X25519PublicKey.from_public_bytes(public_key))
    except ValueError:
        return False
    return True


_LOW_ORDER_PROBE = X25519PrivateKey.generate()


def open_delivery(recipient_private: X25519PrivateKey, room_id: str, payload: bytes) -> KeyDelivery:
    """Open a key delivery with the recipient's device key.

    The ECDH uses the `sender_public` written in the payload, so a delivery that
    opens proves only that its sender knew that key pair, not that it is the
    host: the caller must accept the result only when it comes from the room's
    current host and `sender_public` equals the `publicKey` the room lists for
    that host (E2EE.md, "Key delivery").

    Raises:
        E2EEError: `payload` is not 101 bytes or not a key delivery, its sender
            key is of low order, or it does not open (wrong key, room or
            epoch, or tampered).
    """
    if len(payload) != _DELIVERY_LEN:
        raise E2EEError(f"a key delivery is {_DELIVERY_LEN} bytes, got {len(payload)}")
    if payload[0] != KEY_DELIVERY:
        raise E2EEError(f"payload kind 0x{payload[0]:02x} is not a key delivery (0x01)")
    (epoch,) = _EPOCH.unpack_from(payload, 1)
    at = 1 + _EPOCH.size
    sender_public = payload[at : at + _KEY_LEN]
    nonce = payload[at + _KEY_LEN : at + _KEY_LEN + _NONCE_LEN]
    body = payload[at + _KEY_LEN + _NONCE_LEN :]
    try:
        shared = recipient_private.exchange(X25519PublicKey.from_public_bytes(sender_public))
    except ValueError:
        raise E2EEError("key delivery's sender public key is of low order") from None
    key = wrap_key(shared, room_id, _KEY_WRAP_INFO)
    try:
        room_key = AESGCM(key).decrypt(nonce, body, ad(room_id, epoch))
    except InvalidTag:
        raise E2EEError(
            f"key delivery for epoch {epoch} does not open: "
            "not sealed to this device key or room, or tampered"
        ) from None
    return KeyDelivery(epoch=epoch, sender_public=sender_public, room_key=room_key)


def knock(
    invite_secret: bytes, room_id: str, aid: str, device_public: bytes, next_epoch: int
) -> bytes:
    """Write a knock: proof, for the host, that `aid` holds `invite_secret`.

    Args:
        next_epoch: one more than the newest epoch whose key the joiner holds,
            0 when it holds none.

    Returns:
        The whole 41-byte payload `0x02 || next_epoch || HMAC-SHA256`.

    Raises:
        ValueError: a secret or public key that is not 32 bytes, or a bad epoch.
    """
    mac = _knock_mac(invite_secret, room_id, aid, device_public, next_epoch)
    return bytes([KNOCK]) + _epoch(next_epoch) + mac


def read_knock(payload: bytes) -> Knock:
    """Parse a knock without checking it; `knock_matches` checks it against a secret.

    Raises:
        E2EEError: `payload` is not 41 bytes or not a knock.
    """
    if len(payload) != _KNOCK_LEN:
        raise E2EEError(f"a knock is {_KNOCK_LEN} bytes, got {len(payload)}")
    if payload[0] != KNOCK:
        raise E2EEError(f"payload kind 0x{payload[0]:02x} is not a knock (0x02)")
    (next_epoch,) = _EPOCH.unpack_from(payload, 1)
    return Knock(next_epoch=next_epoch, mac=payload[1 + _EPOCH.size :])


def knock_matches(
    knock: Knock, invite_secret: bytes, room_id: str, aid: str, device_public: bytes
) -> bool:
    """Tell whether `knock` was made by `aid`, with this device key, from this secret.

    The host calls it once per invite secret it knows for the room and admits
    `aid` when one matches; the comparison takes constant time.

    Raises:
        ValueError: a secret or public key that is not 32 bytes.
    """
    expected = _knock_mac(invite_secret, room_id, aid, device_public, knock.next_epoch)
    return hmac.compare_digest(expected, knock.mac)


def payload_kind(payload: bytes) -> int:
    """Return the kind of a `signal` payload: `KEY_DELIVERY` or `KNOCK`.

    Raises:
        E2EEError: `payload` is empty or its first byte is no kind of version 1.
    """
    if not payload:
        raise E2EEError("a signal payload is at least 1 byte, got 0")
    if payload[0] not in (KEY_DELIVERY, KNOCK):
        raise E2EEError(f"payload kind 0x{payload[0]:02x} is unknown (expected 0x01 or 0x02)")
    return payload[0]


def encrypt_message(
    room_key: bytes,
    room_id: str,
    sender: str,
    epoch: int,
    plaintext: bytes,
    *,
    iv: bytes | None = None,
) -> tuple[bytes, bytes]:
    """Encrypt a padded message body with the room key of `epoch`.

    Args:
        sender: the sender's AID, the `from` readers will see.
        plaintext: a padded body from `plaintext.encode_body`, a non-empty
            multiple of 256 bytes, so that the ciphertext's size is 256·k + 16.
        iv: 12 bytes; random when omitted.

    Returns:
        `(iv, ciphertext)`, the tag appended to the ciphertext: the `iv` and
        `ciphertext` of a `message`, whose `keyEpoch` must be `epoch`.

    Raises:
        ValueError: a key or iv of the wrong length, an unpadded plaintext, or a bad epoch.
    """
    _check_len("room key", room_key, _KEY_LEN)
    if not plaintext or len(plaintext) % _PADDING_BLOCK:
        raise ValueError(
            f"a message plaintext is padded to a multiple of {_PADDING_BLOCK} bytes, "
            f"got {len(plaintext)}"
        )
    iv = _nonce(iv)
    return iv, AESGCM(room_key).encrypt(iv, plaintext, _message_ad(room_id, sender, epoch))


def decrypt_message(
    room_key: bytes, room_id: str, sender: str, epoch: int, iv: bytes, ciphertext: bytes
) -> bytes:
    """Decrypt a message's ciphertext with the room key of its `keyEpoch`.

    Returns:
        The padded body, for `plaintext.decode_body`. Its length is not checked:
        readers never compare bytes.

    Raises:
        E2EEError: the iv is not 12 bytes, the ciphertext is shorter than its
            tag, or it does not open (wrong key, room, sender or epoch, or tampered).
        ValueError: a room key that is not 32 bytes, or a bad epoch.
    """
    _check_len("room key", room_key, _KEY_LEN)
    if len(iv) != _NONCE_LEN:
        raise E2EEError(f"a message iv is {_NONCE_LEN} bytes, got {len(iv)}")
    if len(ciphertext) < _TAG_LEN:
        raise E2EEError(f"a message ciphertext is at least {_TAG_LEN} bytes, got {len(ciphertext)}")
    try:
        return AESGCM(room_key).decrypt(iv, ciphertext, _message_ad(room_id, sender, epoch))
    except InvalidTag:
        raise E2EEError(
            f"message for epoch {epoch} does not open: "
            "wrong room key, room, sender or epoch, or tampered"
        ) from None


def public_bytes(private: X25519PrivateKey) -> bytes:
    """Return the raw 32-byte public key of a device key, the room's `publicKey`."""
    return private.public_key().public_bytes_raw()


def new_device_key() -> X25519PrivateKey:
    """Generate a device key; keep it for the client's whole life, across reconnects."""
    return X25519PrivateKey.generate()


def new_secret() -> bytes:
    """Return 32 random bytes: a new room key or invite secret."""
    return secrets.token_bytes(_KEY_LEN)


def _knock_mac(
    invite_secret: bytes, room_id: str, aid: str, device_public: bytes, next_epoch: int
) -> bytes:
    _check_len("invite secret", invite_secret, _KEY_LEN)
    _check_len("device public key", device_public, _KEY_LEN)
    key = wrap_key(invite_secret, room_id, _KNOCK_INFO)
    signed = lp(room_id.encode()) + lp(aid.encode()) + device_public + _epoch(next_epoch)
    return hmac.digest(key, signed, "sha256")


def _message_ad(room_id: str, sender: str, epoch: int) -> bytes:
    return lp(room_id.encode()) + lp(sender.encode()) + _epoch(epoch)


def _epoch(epoch: int) -> bytes:
    if not 0 <= epoch <= _MAX_EPOCH:
        raise ValueError(f"an epoch is 0..2**64-1, got {epoch}")
    return _EPOCH.pack(epoch)


def _nonce(nonce: bytes | None) -> bytes:
    if nonce is None:
        return secrets.token_bytes(_NONCE_LEN)
    _check_len("nonce", nonce, _NONCE_LEN)
    return nonce


def _check_len(what: str, value: bytes, length: int) -> None:
    if len(value) != length:
        raise ValueError(f"a {what} is {length} bytes, got {len(value)}")
