"""The broker ciphertext format (docs/ciphertext-format.md).

    offset  size  field
    0       2     magic b"KB"
    2       1     format version (1)
    3       1     scheme: 1 = provider AEAD, 2 = envelope (local AES-256-GCM, data key wrapped by the provider),
                  3 = multi-wrap (one data key wrapped under every member of a multi-key)
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
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from broker.canonical_json import Encoder

MAGIC = b"KB"
FORMAT_VERSION = 1
_FIXED = struct.Struct(">2sBBH")  # magic, version, scheme, key id length
_VERSION = struct.Struct(">I")
MAX_KEY_ID = 256


class Scheme(enum.IntEnum):
    PROVIDER_AEAD = 1
    ENVELOPE = 2
    MULTI_WRAP = 3  # a multi-key (envelope keyring): one data key wrapped under every member (see below)


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


# json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False) byte for byte (the AAD of every
# existing ciphertext), through orjson where that is provably the same bytes (broker/canonical_json.py)
_CONTEXT = Encoder(sort_keys=True, ensure_ascii=False)


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """Sorted, compact JSON: the same context always gives the same AAD bytes, whatever the key order."""
    if not context:
        return b""
    return _CONTEXT.encode(dict(context))


def pack_envelope(wrapped_key: bytes, nonce_and_ciphertext: bytes) -> bytes:
    return struct.pack(">H", len(wrapped_key)) + wrapped_key + nonce_and_ciphertext


def unpack_envelope(body: bytes) -> tuple[bytes, bytes]:
    if len(body) < 2:
        raise MalformedCiphertext("envelope is truncated")
    (n,) = struct.unpack_from(">H", body)
    if len(body) < 2 + n + 12 + 16:
        raise MalformedCiphertext("envelope is truncated")
    return body[2:2 + n], body[2 + n:]


# ------------------------------------------------------------------------------------ scheme 3: multi-wrap
#
# Header: the usual header with scheme 3, the multi-key's id and key version 1 (the multi-wrap body revision; it
# stays fixed so a rewrap can replace the wraps without touching the authenticated data).
# Body:   1 byte m (number of wraps, 1..64) ‖ m × (2-byte length w ‖ w bytes wrap) ‖ 32-byte key commitment
#         ‖ 12-byte nonce ‖ AES-256-GCM ciphertext ‖ 16-byte tag.
# Each wrap is itself a complete broker ciphertext (scheme 1 or 2) of the 32-byte data key under one member key.
# The commitment is HMAC-SHA-256(data key, "kmsb-multiwrap-commit" ‖ header): an unwrapped data key that does not
# match it is rejected before the AEAD is tried.

MULTI_WRAP_MAX = 64
COMMITMENT_LEN = 32
MULTI_WRAP_BODY_VERSION = 1


def pack_multi_wrap(wraps: list[bytes], commitment: bytes, nonce_and_ciphertext: bytes) -> bytes:
    if not 1 <= len(wraps) <= MULTI_WRAP_MAX:
        raise ValueError(f"a multi-wrap ciphertext carries 1..{MULTI_WRAP_MAX} wraps")
    if len(commitment) != COMMITMENT_LEN:
        raise ValueError("commitment must be 32 bytes")
    out = bytearray([len(wraps)])
    for wrap in wraps:
        out += struct.pack(">H", len(wrap)) + wrap
    return bytes(out) + commitment + nonce_and_ciphertext


def unpack_multi_wrap(body: bytes) -> tuple[list[bytes], bytes, bytes]:
    """-> (wraps, commitment, nonce ‖ ciphertext ‖ tag)."""
    if not body:
        raise MalformedCiphertext("multi-wrap body is truncated")
    count, offset, wraps = body[0], 1, []
    if not 1 <= count <= MULTI_WRAP_MAX:
        raise MalformedCiphertext("multi-wrap body has a bad wrap count")
    for _ in range(count):
        if len(body) < offset + 2:
            raise MalformedCiphertext("multi-wrap body is truncated")
        (n,) = struct.unpack_from(">H", body, offset)
        offset += 2
        if n == 0 or len(body) < offset + n:
            raise MalformedCiphertext("multi-wrap body is truncated")
        wraps.append(body[offset:offset + n])
        offset += n
    if len(body) < offset + COMMITMENT_LEN + 12 + 16:
        raise MalformedCiphertext("multi-wrap body is truncated")
    return wraps, body[offset:offset + COMMITMENT_LEN], body[offset + COMMITMENT_LEN:]
