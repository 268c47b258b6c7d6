"""The ADB wire protocol as a device sees it: 24-byte message headers, and the RSA check of AUTH.

References: AOSP `system/core/adb/protocol.txt` and `adb.h` (message layout, A_VERSION), and
`libcrypto_utils/android_pubkey.c` (the public key format adb sends: modulus and R^2 as
little-endian 2048-bit numbers between a word count/n0inv header and the exponent).
"""

from __future__ import annotations

import base64
import hashlib
import struct
from dataclasses import dataclass

A_SYNC, A_CNXN, A_OPEN, A_OKAY, A_CLSE, A_WRTE, A_AUTH = (
    int.from_bytes(tag, "little") for tag in (b"SYNC", b"CNXN", b"OPEN", b"OKAY", b"CLSE", b"WRTE", b"AUTH")
)
NAMES = {value: name for name, value in (("SYNC", A_SYNC), ("CNXN", A_CNXN), ("OPEN", A_OPEN), ("OKAY", A_OKAY),
                                         ("CLSE", A_CLSE), ("WRTE", A_WRTE), ("AUTH", A_AUTH))}
A_VERSION = 0x01000001  # skips the payload checksum once both sides speak it
MAX_PAYLOAD = 256 * 1024
AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20
HEADER = struct.Struct("<6I")

# DER DigestInfo for SHA-1: adb signs the 20-byte token as if it were a SHA-1 digest.
_SHA1_DIGEST_INFO = bytes.fromhex("3021300906052b0e03021a05000414")


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return NAMES.get(self.command, f"0x{self.command:08x}")


def pack(message: Message) -> bytes:
    # The checksum is always filled in: until CNXN is exchanged the adb server checks it.
    checksum = sum(message.data) & 0xFFFFFFFF
    header = HEADER.pack(message.command, message.arg0, message.arg1, len(message.data), checksum,
                         message.command ^ 0xFFFFFFFF)
    return header + message.data


def unpack_header(raw: bytes) -> tuple[int, int, int, int]:
    command, arg0, arg1, length, _checksum, magic = HEADER.unpack(raw)
    if magic != command ^ 0xFFFFFFFF:
        raise ValueError(f"bad ADB message magic for command 0x{command:08x}")
    if length > MAX_PAYLOAD:
        raise ValueError(f"ADB payload of {length} bytes is over the {MAX_PAYLOAD} limit")
    return command, arg0, arg1, length


@dataclass(frozen=True)
class PublicKey:
    modulus: int
    exponent: int
    comment: str

    def verifies(self, token: bytes, signature: bytes) -> bool:
        """PKCS#1 v1.5 verification of an RSA/SHA-1 signature over the (pre-hashed) token."""
        size = (self.modulus.bit_length() + 7) // 8
        if len(signature) != size:
            return False
        decrypted = pow(int.from_bytes(signature, "big"), self.exponent, self.modulus).to_bytes(size, "big")
        suffix = b"\x00" + _SHA1_DIGEST_INFO + token
        expected = b"\x00\x01" + b"\xff" * (size - 2 - len(suffix)) + suffix
        return decrypted == expected

    @property
    def fingerprint(self) -> str:
        return hashlib.md5(self.modulus.to_bytes(256, "little")).hexdigest()


def parse_public_key(text: str | bytes) -> PublicKey:
    """An `adbkey.pub` line (or an AUTH RSAPUBLICKEY payload): base64 struct, then a comment."""
    if isinstance(text, bytes):
        text = text.rstrip(b"\x00").decode("ascii", errors="replace")
    encoded, _, comment = text.strip().partition(" ")
    raw = base64.b64decode(encoded)
    words, _n0inv = struct.unpack_from("<II", raw)
    size = words * 4
    modulus = int.from_bytes(raw[8:8 + size], "little")
    (exponent,) = struct.unpack_from("<I", raw, 8 + 2 * size)
    return PublicKey(modulus, exponent, comment)
