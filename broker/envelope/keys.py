"""Where data keys come from: the KMS (one GenerateDataKey per data key, one Decrypt per wrapped key), and a
data-key cache with the limits of the AWS Encryption SDK's caching CMM.

A cached data key is never used past any of its limits: its age (`max_age`), the messages it encrypted
(`max_messages`), the plaintext bytes it encrypted (`max_bytes`), and — always — 2^32 frames, the bound for random
96-bit GCM nonces under one key. An encryption that would cross a limit gets a fresh data key instead. Decryption
caches unwrapped keys for `max_age` only.

The limits count one process's use: a forked child starts without its parent's encryption keys (it makes its own),
so that parent and child together never use one data key past a limit.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from broker.after_fork import reset_in_forked_child
from broker.envelope.message import MAX_FRAMES_PER_DATA_KEY, DerivedKey, MessageError, derive, header_tail

ContextKey = tuple[tuple[str, str], ...]


def context_key(context: Mapping[str, str] | None) -> ContextKey:
    """The context's pairs, sorted, every key and value a plain `str`: the cache's name for it, and the check
    that it is a context at all (TypeError otherwise).

    Plain `str` only, because a cache lookup compares with `==` and hashes: a str subclass (or any object) may
    define `__eq__`/`__hash__` to equal another context's value (and 1 == True == 1.0 hash alike), and would then
    be handed that context's data key and header. A str subclass is taken as the characters it holds, which are
    what the header's JSON records."""
    if not context:
        return ()
    items = tuple(context.items())
    for k, v in items:
        if type(k) is not str or type(v) is not str:
            items = tuple((_plain(k), _plain(v)) for k, v in items)
            break
    return tuple(sorted(items)) if len(items) > 1 else items


def _plain(value: object) -> str:
    if type(value) is str:
        return value
    if isinstance(value, str):
        return str.__str__(value)  # the characters themselves, as a plain str (an override of __str__ is not asked)
    raise TypeError("the encryption context maps strings to strings")


def _key_name(key: str) -> str:
    if type(key) is not str:
        if not isinstance(key, str):
            raise TypeError("the key is named by a string")
        return str.__str__(key)
    return key


class DataKeySource(Protocol):
    """Makes and unwraps data keys (the KMS, a multi-key, or a test double)."""

    def generate(self, key: str, context: Mapping[str, str]) -> tuple[bytes, list[bytes]]:
        """A fresh 32-byte data key and its wrapped form(s)."""

    def unwrap(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> bytes:
        """The data key of any one of the wrapped forms (MessageError if none can be unwrapped)."""


class KmsDataKeys:
    """Data keys from the broker over its native API (BrokerClient). A key named `multikey/<name>` wraps the data
    key under every member of that multi-key (cross-cloud); its wrapped form is a multi-key ciphertext."""

    MULTIKEY = "multikey/"

    def __init__(self, client) -> None:
        self.client = client

    def generate(self, key: str, context: Mapping[str, str]) -> tuple[bytes, list[bytes]]:
        if key.startswith(self.MULTIKEY):
            data_key, blob = self.client.multikey_generate_data_key(key[len(self.MULTIKEY):], dict(context))
        else:
            data_key, blob = self.client.generate_data_key(key, "AES_256", dict(context))
        return data_key, [blob]

    def unwrap(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> bytes:
        from broker.client import BrokerClientError

        errors: list[str] = []
        for blob in wrapped:
            try:
                return self.client.decrypt_any(blob, dict(context))
            except BrokerClientError as exc:
                errors.append(exc.code)
        raise MessageError(f"no wrapped data key could be decrypted ({', '.join(errors) or 'none'})")


@dataclass
class Material:
    """One data key, derived, with the header tail its messages share and what it has encrypted so far."""

    derived: DerivedKey
    tail: bytes
    created: float
    messages: int = 0
    plaintext_bytes: int = 0
    frames: int = 0

    def __repr__(self) -> str:
        return f"Material(messages={self.messages}, bytes={self.plaintext_bytes})"


@dataclass(frozen=True)
class CacheLimits:
    max_age: float
    max_messages: int = 1 << 32
    max_bytes: int = (1 << 63) - 1
    capacity: int = 1000

    def __post_init__(self) -> None:
        if not self.max_age > 0:
            raise ValueError("max_age must be positive")
        if not 1 <= self.max_messages <= 1 << 32:
            raise ValueError("max_messages is 1 to 2^32")
        if not 1 <= self.max_bytes <= (1 << 63) - 1:
            raise ValueError("max_bytes is 1 to 2^63-1")
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")


@dataclass(eq=False)  # compared (and hashed, for broker/after_fork.py) as the one object it is
class DataKeys:
    """The one place messages get their data keys: straight from the source, or through the cache."""

    source: DataKeySource
    limits: CacheLimits | None = None
    clock: Callable[[], float] = time.monotonic
    _encrypting: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _decrypting: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    stats: dict[str, int] = field(default_factory=lambda: {"generated": 0, "unwrapped": 0, "hits": 0})

    def __post_init__(self) -> None:
        reset_in_forked_child(self)

    def reset_after_fork(self) -> None:
        """In a forked child: the parent's data keys are the parent's to count (the child sharing one would take it
        past its limits: each process counts only its own messages, bytes and frames), and a lock a thread of the
        parent held at the fork would never be released here. Unwrapped keys for decryption have no use count."""
        self._lock = threading.Lock()
        self._encrypting = OrderedDict()

    def fresh(self, key: str, context: Mapping[str, str] | None) -> Material:
        """A new data key from the source, never cached (streams)."""
        return self._fresh(_key_name(key), context_key(context))

    def _fresh(self, key: str, pairs: ContextKey) -> Material:
        """The one place a slot's material is made: a slot whose pairs are not one context is refused here, so it
        is never cached."""
        context = dict(pairs)
        if len(context) != len(pairs):
            raise TypeError("the encryption context has two keys with the same characters")
        data_key, wrapped = self.source.generate(key, context)
        self.stats["generated"] += 1
        derived = derive(data_key)
        return Material(derived, header_tail(derived.commitment, context, wrapped), self.clock())

    def for_encrypt(self, key: str, context: Mapping[str, str] | None, size: int, frames: int) -> Material:
        """Material for one message of `size` bytes in `frames` frames, its use already counted. TypeError unless
        `key` is a string and `context` maps strings to strings (checked here, on every call: see context_key)."""
        slot = (key if type(key) is str else _key_name(key), context_key(context))
        limits = self.limits
        if limits is None or size > limits.max_bytes or frames > MAX_FRAMES_PER_DATA_KEY:
            return self._fresh(*slot)
        now = self.clock()
        lock = self._lock
        lock.acquire()  # not `with`: on every cached message's path, and acquire/release costs half as much
        try:
            material = self._encrypting.get(slot)
            if material is not None:
                if (now - material.created < limits.max_age
                        and material.messages < limits.max_messages
                        and material.plaintext_bytes + size <= limits.max_bytes
                        and material.frames + frames <= MAX_FRAMES_PER_DATA_KEY):
                    material.messages += 1
                    material.plaintext_bytes += size
                    material.frames += frames
                    self._encrypting.move_to_end(slot)
                    self.stats["hits"] += 1
                    return material
                del self._encrypting[slot]
        finally:
            lock.release()
        material = self._fresh(*slot)
        material.messages, material.plaintext_bytes, material.frames = 1, size, frames
        with self._lock:
            self._encrypting[slot] = material
            while len(self._encrypting) > limits.capacity:
                self._encrypting.popitem(last=False)
        return material

    def for_decrypt(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> DerivedKey:
        limits = self.limits
        slot = (tuple(wrapped), context_key(context))
        if limits is not None:
            with self._lock:
                hit = self._decrypting.get(slot)
                if hit is not None and self.clock() - hit[1] < limits.max_age:
                    self.stats["hits"] += 1
                    return hit[0]
        derived = derive(self.source.unwrap(wrapped, context))
        self.stats["unwrapped"] += 1
        if limits is not None:
            with self._lock:
                self._decrypting[slot] = (derived, self.clock())
                while len(self._decrypting) > limits.capacity:
                    self._decrypting.popitem(last=False)
        return derived

    def clear(self) -> None:
        with self._lock:
            self._encrypting.clear()
            self._decrypting.clear()
