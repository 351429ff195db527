"""The generator's ciphertext: who sent it, their sequence number and when.

A real client's ciphertext is opaque to the server; ours opens with a 24-byte
stamp (sender index, sender seq, send time in Unix ns, little-endian u64s) and
is padded with random bytes to the configured size. 24 bytes are exactly 32
base64 characters with no padding, so the receiver decodes only the first 32
characters of the blob and the sender base64-encodes the padding once.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct

STAMP = struct.Struct("<QQQ")
STAMP_B64 = 32


class Stamper:
    """Build base64 ciphertexts of `size` bytes (at least the stamp) carrying a stamp."""

    def __init__(self, size: int) -> None:
        pad = max(0, size - STAMP.size)
        self._pad_b64 = base64.b64encode(os.urandom(pad)).decode()

    def ciphertext(self, sender: int, sender_seq: int, sent_ns: int) -> str:
        """Return the base64 ciphertext stamped with `sender`, `sender_seq`, `sent_ns`."""
        return base64.b64encode(STAMP.pack(sender, sender_seq, sent_ns)).decode() + self._pad_b64


def read_stamp(ciphertext: str) -> tuple[int, int, int]:
    """Return (sender, sender_seq, sent_ns) from a ciphertext built by `Stamper`."""
    return STAMP.unpack(binascii.a2b_base64(ciphertext[:STAMP_B64]))
