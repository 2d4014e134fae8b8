"""The broker ciphertext format (docs/ciphertext-format.md).

    offset  size  field
    0       2     magic b"KB"
    2       1     format version (1)
    3       1     scheme: 1 = provider AEAD, 2 = envelope (local AES-256-GCM, data key wrapped by the provider)
    4       2     key id length n (big-endian)
    6       n     key id (UTF-8)
    6+n     4     key version (big-endian)
    10+n    ...   body (scheme-specific)

The header (bytes 0 .. 10+n) names key, version and scheme, so Decrypt needs no key id. It is authenticated: the
AAD given to the AEAD is `header || canonical(encryption context)`. The context itself is never stored.

Envelope body (scheme 2):  2-byte length w ‖ w bytes wrapped data key ‖ 12-byte nonce ‖ ciphertext ‖ 16-byte tag.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass

MAGIC = b"KB"
FORMAT_VERSION = 1
_FIXED = struct.Struct(">2sBBH")  # magic, version, scheme, key id length
_VERSION = struct.Struct(">I")
MAX_KEY_ID = 256


class Scheme(enum.IntEnum):
    PROVIDER_AEAD = 1
    ENVELOPE = 2


class MalformedCiphertext(ValueError):
    """The bytes are not a broker ciphertext (wrong magic, version, truncated, …)."""


@dataclass(frozen=True)
class Header:
    scheme: Scheme
    key_id: str
    key_version: int

    def pack(self) -> bytes:
        key_id = self.key_id.encode()
        if not key_id or len(key_id) > MAX_KEY_ID:
            raise ValueError("key id must be 1..256 bytes")
        return _FIXED.pack(MAGIC, FORMAT_VERSION, self.scheme, len(key_id)) + key_id + _VERSION.pack(self.key_version)


@dataclass(frozen=True)
class Ciphertext:
    header: Header
    header_bytes: bytes
    body: bytes

    def aad(self, context: Mapping[str, str] | None) -> bytes:
        return self.header_bytes + canonical_context(context)


def pack(header: Header, body: bytes) -> bytes:
    return header.pack() + body


def unpack(blob: bytes) -> Ciphertext:
    if len(blob) < _FIXED.size:
        raise MalformedCiphertext("ciphertext is truncated")
    magic, version, scheme, key_len = _FIXED.unpack_from(blob)
    if magic != MAGIC:
        raise MalformedCiphertext("not a broker ciphertext")
    if version != FORMAT_VERSION:
        raise MalformedCiphertext(f"unsupported ciphertext format version {version}")
    try:
        scheme = Scheme(scheme)
    except ValueError:
        raise MalformedCiphertext(f"unknown ciphertext scheme {scheme}") from None
    end = _FIXED.size + key_len
    if key_len == 0 or key_len > MAX_KEY_ID or len(blob) < end + _VERSION.size:
        raise MalformedCiphertext("ciphertext is truncated")
    try:
        key_id = blob[_FIXED.size:end].decode()
    except UnicodeDecodeError:
        raise MalformedCiphertext("ciphertext key id is not UTF-8") from None
    (key_version,) = _VERSION.unpack_from(blob, end)
    header_end = end + _VERSION.size
    return Ciphertext(Header(scheme, key_id, key_version), blob[:header_end], blob[header_end:])


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """Sorted, compact JSON: the same context always gives the same AAD bytes, whatever the key order."""
    if not context:
        return b""
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def pack_envelope(wrapped_key: bytes, nonce_and_ciphertext: bytes) -> bytes:
    return struct.pack(">H", len(wrapped_key)) + wrapped_key + nonce_and_ciphertext


def unpack_envelope(body: bytes) -> tuple[bytes, bytes]:
    if len(body) < 2:
        raise MalformedCiphertext("envelope is truncated")
    (n,) = struct.unpack_from(">H", body)
    if len(body) < 2 + n + 12 + 16:
        raise MalformedCiphertext("envelope is truncated")
    return body[2:2 + n], body[2 + n:]
