"""The envelope message format, version 1 (docs/envelope.md): a header naming the wrapped data key(s) and the
encryption context, then AES-256-GCM frames.

    header   magic "KMBE" | version 1 | suite 1 | frame length u32 | message id 16 | commitment 32
             | context length u16 | canonical context | wrapped-key count u8 | (length u16 | wrapped key)*
    frame    sequence u32 (from 1) | final u8 | ciphertext length u32 | nonce 12 | ciphertext | tag 16

Every frame authenticates the whole header, its own sequence number, whether it is the last frame and its length
(AAD = header ‖ sequence ‖ final ‖ length), so a changed header, a reordered, dropped, duplicated or truncated
frame, or bytes after the last frame all fail. The data key never encrypts directly: HKDF-SHA-512 derives the
AES-256-GCM key and a 32-byte commitment from it; the header carries the commitment and decryption refuses a data
key that does not derive it (key commitment: one message cannot decrypt to two plaintexts under two keys).
Nonces are random (96 bits); a data key serves at most 2^32 frames (the data-key cache counts them).
"""

from __future__ import annotations

import hmac
import json
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.ciphertext import canonical_context

MAGIC = b"KMBE"
VERSION = 1
SUITE_AES256_GCM_HKDF_SHA512_COMMIT = 1
DEFAULT_FRAME = 64 * 1024
MAX_FRAME = 1 << 30
MAX_FRAMES_PER_DATA_KEY = 1 << 32
MAX_WRAPPED_KEYS = 16
MESSAGE_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
_LEAD = struct.Struct(">4sBBI")          # magic, version, suite, frame length
_FRAME = struct.Struct(">IBI")           # sequence, final, ciphertext length
_U16 = struct.Struct(">H")
_INFO = b"kms-broker envelope v1"
_COMMITMENT_AT = _LEAD.size + MESSAGE_ID_BYTES
_CONTEXT_AT = _COMMITMENT_AT + 32 + _U16.size  # after the context length


class MessageError(ValueError):
    """The bytes are not a valid envelope message, or do not authenticate (never says which secret failed)."""


@dataclass(frozen=True)
class DerivedKey:
    """What one data key gives: the frame cipher and the commitment the header carries."""

    aead: AESGCM
    commitment: bytes

    def __repr__(self) -> str:
        return "DerivedKey(<secret>)"


def derive(data_key: bytes) -> DerivedKey:
    if len(data_key) != 32:
        raise MessageError("a data key is 32 bytes")
    okm = HKDF(hashes.SHA512(), 64, salt=None, info=_INFO + bytes([SUITE_AES256_GCM_HKDF_SHA512_COMMIT])).derive(
        data_key)
    return DerivedKey(AESGCM(okm[:32]), okm[32:])


class Header(NamedTuple):
    """A parsed header (immutable; a NamedTuple because a message's decryption builds one, and a frozen dataclass
    costs three times as much to make)."""

    frame_length: int
    message_id: bytes
    commitment: bytes
    context: dict[str, str]
    wrapped_keys: tuple[bytes, ...]
    raw: bytes

    def check_commitment(self, key: DerivedKey) -> None:
        if not hmac.compare_digest(key.commitment, self.commitment):
            raise MessageError("the data key does not match the message's key commitment")


def header_tail(commitment: bytes, context: Mapping[str, str], wrapped_keys: Sequence[bytes]) -> bytes:
    """Everything after the message id: the same for every message made with one data key and context."""
    ctx = canonical_context(context)
    if len(ctx) > 0xFFFF:
        raise MessageError("the encryption context is too large")
    if not 1 <= len(wrapped_keys) <= MAX_WRAPPED_KEYS:
        raise MessageError(f"a message carries 1 to {MAX_WRAPPED_KEYS} wrapped keys")
    parts = [commitment, _U16.pack(len(ctx)), ctx, bytes([len(wrapped_keys)])]
    for blob in wrapped_keys:
        if not 1 <= len(blob) <= 0xFFFF:
            raise MessageError("a wrapped key is 1 to 65535 bytes")
        parts += [_U16.pack(len(blob)), blob]
    return b"".join(parts)


def header_lead(frame_length: int) -> bytes:
    if not 1 <= frame_length <= MAX_FRAME:
        raise MessageError(f"the frame length is 1 to {MAX_FRAME} bytes")
    return _LEAD.pack(MAGIC, VERSION, SUITE_AES256_GCM_HKDF_SHA512_COMMIT, frame_length)


def parse_header(data: bytes | memoryview) -> Header:
    """Parse a header from the start of `data` (which may hold more). MessageError if it is not one.

    The lengths are read in place, then the header is copied once and every field sliced from that copy."""
    view = memoryview(data)
    try:
        magic, version, suite, frame_length = _LEAD.unpack_from(view, 0)
        if magic != MAGIC:
            raise MessageError("not a kms-broker envelope message")
        if version != VERSION or suite != SUITE_AES256_GCM_HKDF_SHA512_COMMIT:
            raise MessageError(f"unsupported message version {version} / suite {suite}")
        if not 1 <= frame_length <= MAX_FRAME:
            raise MessageError("invalid frame length")
        (ctx_len,) = _U16.unpack_from(view, _CONTEXT_AT - 2)
        at = _CONTEXT_AT + ctx_len
        count = view[at]
        at += 1
        if not 1 <= count <= MAX_WRAPPED_KEYS:
            raise MessageError("invalid wrapped-key count")
        spans = []
        for _ in range(count):
            (n,) = _U16.unpack_from(view, at)
            if n == 0:
                raise MessageError("truncated header")
            at += 2
            spans.append((at, at + n))
            at += n
    except (struct.error, IndexError):
        raise MessageError("truncated header") from None
    if at > len(view):
        raise MessageError("truncated header")
    raw = bytes(view[:at])
    context = _parse_context(raw[_CONTEXT_AT:_CONTEXT_AT + ctx_len])
    return Header(frame_length, raw[_LEAD.size:_COMMITMENT_AT], raw[_COMMITMENT_AT:_CONTEXT_AT - 2], context,
                  tuple([raw[a:b] for a, b in spans]), raw)


_CONTEXTS: dict[bytes, dict[str, str]] = {}
_CONTEXTS_LOCK = threading.Lock()
CONTEXT_CACHE_ENTRIES = 256
CONTEXT_CACHE_MAX_BYTES = 4096


def _parse_context(raw: bytes) -> dict[str, str]:
    """The header's context, checked to be canonical JSON of strings (so one context has one encoding).

    Kept per exact bytes (at most CONTEXT_CACHE_ENTRIES contexts of at most CONTEXT_CACHE_MAX_BYTES each): the
    result is a pure function of the bytes, so a kept answer is the answer, and messages under one context repeat
    them. Callers get a copy; the kept dict is never handed out."""
    if not raw:
        return {}
    kept = _CONTEXTS.get(raw)
    if kept is not None:
        return kept.copy()
    value = _parse_context_now(raw)
    if len(raw) <= CONTEXT_CACHE_MAX_BYTES:
        with _CONTEXTS_LOCK:
            while len(_CONTEXTS) >= CONTEXT_CACHE_ENTRIES:
                del _CONTEXTS[next(iter(_CONTEXTS))]
            _CONTEXTS[raw] = value.copy()
    return value


def _parse_context_now(raw: bytes) -> dict[str, str]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise MessageError("invalid encryption context in header") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()) \
            or canonical_context(value) != raw:
        raise MessageError("invalid encryption context in header")
    return value


def seal_frame(key: DerivedKey, header: bytes, sequence: int, final: bool, chunk: bytes | memoryview,
               nonce: bytes) -> bytes:
    descriptor = _FRAME.pack(sequence, final, len(chunk))
    return descriptor + nonce + key.aead.encrypt(nonce, chunk, header + descriptor)


def sole_descriptor(length: int) -> bytes:
    """The descriptor of a one-frame message's frame: sequence 1, final, `length` ciphertext bytes."""
    return _FRAME.pack(1, True, length)


FRAME_OVERHEAD = _FRAME.size + NONCE_BYTES + TAG_BYTES
DESCRIPTOR_BYTES = _FRAME.size


def seal_frame_into(key: DerivedKey, header: bytes, sequence: int, final: bool, chunk: memoryview,
                    nonce: bytes, out: bytearray) -> memoryview:
    """seal_frame into a reusable buffer (streams: no allocation per frame); returns the frame's bytes in `out`."""
    n = len(chunk)
    _FRAME.pack_into(out, 0, sequence, final, n)
    out[DESCRIPTOR_BYTES:DESCRIPTOR_BYTES + NONCE_BYTES] = nonce
    view = memoryview(out)
    key.aead.encrypt_into(nonce, chunk, header + bytes(view[:DESCRIPTOR_BYTES]),
                          view[DESCRIPTOR_BYTES + NONCE_BYTES:FRAME_OVERHEAD + n])
    return view[:FRAME_OVERHEAD + n]


def open_frame_into(key: DerivedKey, header: bytes, descriptor: bytes, nonce: bytes, sealed: memoryview,
                    out: memoryview) -> memoryview:
    try:
        key.aead.decrypt_into(nonce, sealed, header + descriptor, out[:len(sealed) - TAG_BYTES])
    except Exception:  # noqa: BLE001 - InvalidTag
        raise MessageError("the message failed authentication") from None
    return out[:len(sealed) - TAG_BYTES]


def read_frame_descriptor(data: bytes | memoryview, at: int) -> tuple[int, bool, int]:
    try:
        sequence, final, length = _FRAME.unpack_from(data, at)
    except struct.error:
        raise MessageError("truncated message: a frame is missing its end") from None
    if final not in (0, 1):
        raise MessageError("invalid frame")
    return sequence, bool(final), length


def open_frame(key: DerivedKey, aad: bytes | memoryview, nonce: bytes | memoryview,
               sealed: bytes | memoryview) -> bytes:
    """One frame's plaintext; `aad` is header ‖ descriptor (for the first frame of an in-memory message, one
    slice of it)."""
    try:
        return key.aead.decrypt(nonce, sealed, aad)
    except Exception:  # noqa: BLE001 - InvalidTag: the frame or the header was changed, or the wrong key
        raise MessageError("the message failed authentication") from None
