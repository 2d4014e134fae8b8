"""Client-side envelope encryption: bytes or streams in, envelope messages out (broker/envelope/message.py).

The KMS sees one call per data key; the data never crosses the network. Streams are processed one frame at a time
(two frames of memory), so a 10 GiB file costs the same memory as a 1 MiB one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import BinaryIO

from broker.envelope import message as m
from broker.envelope.keys import CacheLimits, DataKeys, DataKeySource
from broker.random_pool import RandomPool

Progress = Callable[[int], None]

# Message ids and nonces of byte messages: kernel randomness (os.urandom) drawn 4 KiB at a time, each byte handed
# out once (broker/random_pool.py: under a lock, and emptied in a forked child, so no two messages, threads or
# processes get the same bytes). A getrandom per message cost 0.56 us of a ~4 us cached encrypt; one per 146 of
# them does not. Not for key material: the bytes waiting here are not secret (they are written into messages).
_RANDOM = RandomPool(block=4096)
_SOLE_RANDOM = m.MESSAGE_ID_BYTES + m.NONCE_BYTES


def _random(n: int) -> bytes:
    """`n` fresh random bytes: from the pool when they fit a block, else straight from the kernel."""
    return _RANDOM.take(n, os.urandom) if n <= _RANDOM.block else os.urandom(n)


def _expect_context(header: m.Header, expected: Mapping[str, str] | None) -> None:
    """Every pair the caller expects must be in the message's context, with the same value."""
    for k, v in (expected or {}).items():
        if header.context.get(k) != v:
            raise m.MessageError("the message's encryption context does not match the one expected")


class Envelope:
    """Encrypt and decrypt envelope messages with data keys from `source` (optionally cached: `cache=CacheLimits(...)`)."""

    def __init__(self, source: DataKeySource, *, cache: CacheLimits | None = None,
                 frame_length: int = m.DEFAULT_FRAME) -> None:
        self._lead = m.header_lead(frame_length)
        self.frame_length = frame_length
        self.keys = DataKeys(source, cache)

    def __repr__(self) -> str:
        return f"Envelope(frame_length={self.frame_length}, cached={self.keys.limits is not None})"

    # ----------------------------------------------------------------------------------------- bytes

    def encrypt(self, plaintext: bytes, key: str, context: Mapping[str, str] | None = None) -> bytes:
        """One message of `plaintext` under `key`'s data key (cached if the cache allows); TypeError unless `key`
        is a string and `context` maps strings to strings."""
        size = len(plaintext)
        flen = self.frame_length
        if size <= flen:  # one frame (records): header ‖ frame 1, whose AAD is the message's first bytes
            material = self.keys.for_encrypt(key, context, size, 1)
            rnd = _RANDOM.take(_SOLE_RANDOM, os.urandom)  # the message id, then the nonce
            nonce = rnd[m.MESSAGE_ID_BYTES:]
            aad = b"".join((self._lead, rnd[:m.MESSAGE_ID_BYTES], material.tail, m.sole_descriptor(size)))
            return b"".join((aad, nonce, material.derived.aead.encrypt(nonce, plaintext, aad)))
        frames = -(-size // flen)
        if frames >= m.MAX_FRAMES_PER_DATA_KEY:
            raise m.MessageError("a message holds at most 2^32-1 frames; use a larger frame length")
        material = self.keys.for_encrypt(key, context, size, frames)
        # One draw for the message id and every frame's nonce (each slice is as random as its own draw).
        rnd = _random(m.MESSAGE_ID_BYTES + m.NONCE_BYTES * frames)
        header = self._lead + rnd[:m.MESSAGE_ID_BYTES] + material.tail
        view = memoryview(plaintext)
        parts = [header]
        at = m.MESSAGE_ID_BYTES
        for i in range(frames):
            parts.append(m.seal_frame(material.derived, header, i + 1, i == frames - 1,
                                      view[i * flen:(i + 1) * flen], rnd[at:at + m.NONCE_BYTES]))
            at += m.NONCE_BYTES
        return b"".join(parts)

    def decrypt(self, data: bytes, context: Mapping[str, str] | None = None) -> bytes:
        """The plaintext; MessageError if the message is malformed, truncated, tampered with, or its context lacks
        a pair of `context`."""
        view = memoryview(data)
        header = m.parse_header(view)
        _expect_context(header, context)
        key = self.keys.for_decrypt(header.wrapped_keys, header.context)
        header.check_commitment(key)
        raw, flen, total = header.raw, header.frame_length, len(view)
        immutable = type(data) is bytes  # then view[:len(raw)] stays the raw the header was parsed from
        d, n, t = m.DESCRIPTOR_BYTES, m.NONCE_BYTES, m.TAG_BYTES
        out, at, expected = [], len(raw), 1
        while True:
            sequence, final, length = m.read_frame_descriptor(view, at)
            if sequence != expected:
                raise m.MessageError("frames are out of order or missing")
            if length > flen or (not final and length != flen):
                raise m.MessageError("invalid frame length")
            start = at + d + n
            end = start + length + t
            if end > total:
                raise m.MessageError("truncated message: a frame is cut short")
            # AAD = header ‖ descriptor; the first frame's follows the header in `data`: one slice, no copy.
            aad = view[:at + d] if expected == 1 and immutable else raw + view[at:at + d]
            out.append(m.open_frame(key, aad, view[at + d:start], view[start:end]))
            at = end
            if final:
                break
            expected += 1
        if at != total:
            raise m.MessageError("bytes after the last frame")
        return out[0] if len(out) == 1 else b"".join(out)

    # ----------------------------------------------------------------------------------------- streams

    def encrypt_stream(self, src: BinaryIO, dst: BinaryIO, key: str, context: Mapping[str, str] | None = None, *,
                       progress: Progress | None = None) -> int:
        """Encrypt `src` to `dst` frame by frame with a fresh data key (streams never use cached keys, as their
        length is not known in advance). Two frame buffers and one output buffer are reused for the whole stream.
        Returns the plaintext bytes read."""
        flen = self.frame_length
        material = self.keys.fresh(key, context)
        header = self._lead + os.urandom(m.MESSAGE_ID_BYTES) + material.tail
        dst.write(header)
        current, following = bytearray(flen), bytearray(flen)
        out = bytearray(m.FRAME_OVERHEAD + flen)
        total, sequence = 0, 1
        n = _fill(src, current)
        while True:
            n_next = _fill(src, following) if n == flen else 0
            final = n_next == 0
            if sequence > m.MAX_FRAMES_PER_DATA_KEY - 1:
                raise m.MessageError("a message holds at most 2^32-1 frames; use a larger frame length")
            dst.write(m.seal_frame_into(material.derived, header, sequence, final, memoryview(current)[:n],
                                        os.urandom(m.NONCE_BYTES), out))
            total += n
            if progress is not None:
                progress(n)
            if final:
                return total
            current, following, n, sequence = following, current, n_next, sequence + 1

    def decrypt_stream(self, src: BinaryIO, dst: BinaryIO, context: Mapping[str, str] | None = None, *,
                       progress: Progress | None = None) -> dict[str, str]:
        """Decrypt `src` to `dst`; returns the message's encryption context. Plaintext of a frame is written only
        after that frame authenticated; a truncated or reordered stream raises before its end is reached."""
        head = _read_header_bytes(src)
        header = m.parse_header(head)
        _expect_context(header, context)
        key = self.keys.for_decrypt(header.wrapped_keys, header.context)
        header.check_commitment(key)
        flen = header.frame_length
        sealed = bytearray(m.NONCE_BYTES + flen + m.TAG_BYTES)
        plain = memoryview(bytearray(flen))
        expected = 1
        while True:
            descriptor = _read_full(src, m.DESCRIPTOR_BYTES)
            if len(descriptor) < m.DESCRIPTOR_BYTES:
                raise m.MessageError("truncated message: the last frame is missing")
            sequence, final, length = m.read_frame_descriptor(descriptor, 0)
            if sequence != expected:
                raise m.MessageError("frames are out of order or missing")
            if length > flen or (not final and length != flen):
                raise m.MessageError("invalid frame length")
            want = m.NONCE_BYTES + length + m.TAG_BYTES
            view = memoryview(sealed)[:want]
            if _fill(src, view) != want:
                raise m.MessageError("truncated message: a frame is cut short")
            dst.write(m.open_frame_into(key, header.raw, descriptor, bytes(view[:m.NONCE_BYTES]),
                                        view[m.NONCE_BYTES:], plain))
            if progress is not None:
                progress(length)
            if final:
                break
            expected += 1
        if src.read(1):
            raise m.MessageError("bytes after the last frame")
        return dict(header.context)


def _fill(src: BinaryIO, buffer: bytearray | memoryview) -> int:
    """Fill `buffer` from `src`; fewer bytes only at the end of the stream (pipes return short reads)."""
    view = memoryview(buffer)
    got = 0
    while got < len(view):
        readinto = getattr(src, "readinto", None)
        if readinto is not None:
            n = readinto(view[got:])
        else:
            chunk = src.read(len(view) - got)
            n = len(chunk)
            view[got:got + n] = chunk
        if not n:
            break
        got += n
    return got


def _read_full(src: BinaryIO, n: int) -> bytes:
    """Exactly n bytes, or fewer only at the end of the stream (pipes and sockets return short reads)."""
    first = src.read(n)
    if not first or len(first) == n:
        return first or b""
    parts, got = [first], len(first)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _read_header_bytes(src: BinaryIO) -> bytes:
    """The header's bytes, read field by field (its length is only known as it is parsed)."""
    fixed = 10 + m.MESSAGE_ID_BYTES + 32
    head = _read_full(src, fixed + 2)
    if len(head) < fixed + 2:
        raise m.MessageError("truncated header")
    head += _read_full(src, int.from_bytes(head[-2:], "big") + 1)
    count = head[-1] if len(head) > fixed + 2 else 0
    for _ in range(count):
        length = _read_full(src, 2)
        if len(length) < 2:
            raise m.MessageError("truncated header")
        head += length + _read_full(src, int.from_bytes(length, "big"))
    return head
