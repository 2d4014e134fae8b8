"""Envelope messages (broker/envelope): round trips, tampering, truncation, reordering, wrong context, key
commitment, and the data-key cache's limits. The KMS is a test double here (tests/integration/test_envelope.py
runs the same against a real broker)."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import tracemalloc
from collections.abc import Callable, Mapping, Sequence

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import CacheLimits, Envelope, MessageError
from broker.envelope import codec as codec_module
from broker.envelope import keys as keys_module
from broker.envelope import message as m
from broker.random_pool import RandomPool
from tests.support.racing import race


class FakeKms:
    """Wraps data keys by remembering them; unwrapping checks the context, as the broker does (it is AAD there)."""

    def __init__(self) -> None:
        self.wrapped: dict[bytes, tuple[bytes, dict]] = {}
        self.generated = 0

    def generate(self, key: str, context: Mapping[str, str]) -> tuple[bytes, list[bytes]]:
        self.generated += 1
        data_key, blob = os.urandom(32), key.encode() + os.urandom(24)
        self.wrapped[blob] = (data_key, dict(context))
        return data_key, [blob]

    def unwrap(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> bytes:
        for blob in wrapped:
            if blob in self.wrapped and self.wrapped[blob][1] == dict(context):
                return self.wrapped[blob][0]
        raise MessageError("no wrapped data key could be decrypted")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


FRAME = 100
CTX = {"app": "billing", "tenant": "t1"}


@pytest.fixture
def kms() -> FakeKms:
    return FakeKms()


@pytest.fixture
def env(kms: FakeKms) -> Envelope:
    return Envelope(kms, frame_length=FRAME)


def _stream_encrypt(env: Envelope, data: bytes, context=CTX) -> bytes:
    out = io.BytesIO()
    assert env.encrypt_stream(io.BytesIO(data), out, "key-1", context) == len(data)
    return out.getvalue()


def _stream_decrypt(env: Envelope, message: bytes, context=None) -> bytes:
    out = io.BytesIO()
    env.decrypt_stream(io.BytesIO(message), out, context)
    return out.getvalue()


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("size", [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME, 3 * FRAME + 7])
def test_round_trip_bytes_and_streams(env: Envelope, size: int) -> None:
    data = os.urandom(size)
    for message in (env.encrypt(data, "key-1", CTX), _stream_encrypt(env, data)):
        assert env.decrypt(message, CTX) == data
        assert _stream_decrypt(env, message, CTX) == data
        assert data not in message or size < 16


def test_the_context_travels_in_the_header_and_a_subset_can_be_required(env: Envelope) -> None:
    message = env.encrypt(b"x" * 10, "key-1", CTX)
    assert m.parse_header(message).context == CTX
    assert env.decrypt(message, {"app": "billing"}) == b"x" * 10
    assert env.decrypt(message) == b"x" * 10
    out = io.BytesIO()
    assert env.decrypt_stream(io.BytesIO(message), out) == CTX


@pytest.mark.parametrize("expected", [{"app": "other"}, {"app": "billing", "extra": "1"}, {"tenant": "t2"}])
def test_a_wrong_expected_context_is_refused(env: Envelope, expected: dict) -> None:
    message = env.encrypt(b"secret", "key-1", CTX)
    with pytest.raises(MessageError, match="context"):
        env.decrypt(message, expected)
    with pytest.raises(MessageError, match="context"):
        _stream_decrypt(env, message, expected)


def test_messages_are_unique_and_reveal_nothing(env: Envelope) -> None:
    a, b = env.encrypt(b"same", "key-1", CTX), env.encrypt(b"same", "key-1", CTX)
    assert a != b
    assert "secret" not in repr(env) and "DerivedKey(<secret>)" == repr(m.derive(os.urandom(32)))


# ------------------------------------------------------------------------------------------------ tampering


def _frames(message: bytes) -> tuple[bytes, list[bytes]]:
    header = m.parse_header(message)
    at, frames = len(header.raw), []
    while at < len(message):
        _, _, length = m.read_frame_descriptor(message, at)
        end = at + m.FRAME_OVERHEAD + length
        frames.append(message[at:end])
        at = end
    return header.raw, frames


def test_every_single_byte_change_is_refused(env: Envelope) -> None:
    message = env.encrypt(os.urandom(2 * FRAME + 5), "key-1", CTX)
    for i in range(len(message)):
        changed = bytearray(message)
        changed[i] ^= 0x01
        with pytest.raises(MessageError):
            env.decrypt(bytes(changed))
        with pytest.raises(MessageError):
            _stream_decrypt(env, bytes(changed))


def test_truncation_at_every_length_is_refused(env: Envelope) -> None:
    message = env.encrypt(os.urandom(2 * FRAME + 5), "key-1", CTX)
    for cut in range(len(message)):
        with pytest.raises(MessageError):
            env.decrypt(message[:cut])
        with pytest.raises(MessageError):
            _stream_decrypt(env, message[:cut])


def test_a_message_cut_at_a_frame_boundary_is_refused(env: Envelope) -> None:
    header, frames = _frames(env.encrypt(os.urandom(3 * FRAME), "key-1", CTX))
    for n in range(len(frames)):
        with pytest.raises(MessageError, match="truncated|missing"):
            env.decrypt(header + b"".join(frames[:n]))


@pytest.mark.parametrize("arrange", [
    lambda f: [f[1], f[0], f[2]],          # reordered
    lambda f: [f[0], f[2]],                # dropped
    lambda f: [f[0], f[0], f[1], f[2]],    # duplicated
    lambda f: [f[0], f[1], f[2], f[2]],    # replayed after the end
])
def test_reordered_dropped_or_duplicated_frames_are_refused(env: Envelope, arrange) -> None:
    header, frames = _frames(env.encrypt(os.urandom(3 * FRAME), "key-1", CTX))
    assert len(frames) == 3
    forged = header + b"".join(arrange(frames))
    with pytest.raises(MessageError):
        env.decrypt(forged)
    with pytest.raises(MessageError):
        _stream_decrypt(env, forged)


def test_a_frame_from_another_message_under_the_same_key_is_refused(kms: FakeKms) -> None:
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(max_age=60))
    data = os.urandom(2 * FRAME)
    h1, f1 = _frames(env.encrypt(data, "key-1", CTX))
    h2, f2 = _frames(env.encrypt(data, "key-1", CTX))
    assert m.parse_header(h1).wrapped_keys == m.parse_header(h2).wrapped_keys  # same cached data key
    with pytest.raises(MessageError):
        env.decrypt(h1 + f1[0] + f2[1])


def test_bytes_after_the_last_frame_are_refused(env: Envelope) -> None:
    message = env.encrypt(b"abc", "key-1", CTX)
    for tail in (b"\0", b"x" * 50):
        with pytest.raises(MessageError, match="after the last frame"):
            env.decrypt(message + tail)
        with pytest.raises(MessageError, match="after the last frame"):
            _stream_decrypt(env, message + tail)


def test_a_changed_header_context_cannot_be_unwrapped(env: Envelope) -> None:
    message = env.encrypt(b"abc", "key-1", {"app": "aa"})
    forged = message.replace(b'"aa"', b'"ab"', 1)
    assert forged != message
    with pytest.raises(MessageError):
        env.decrypt(forged)


def test_key_commitment_refuses_a_data_key_the_header_was_not_made_with(kms: FakeKms) -> None:
    env = Envelope(kms, frame_length=FRAME)
    message = env.encrypt(b"attack at dawn", "key-1", CTX)
    (blob,) = m.parse_header(message).wrapped_keys
    kms.wrapped[blob] = (os.urandom(32), CTX)  # the KMS (or an attacker's wrap) answers with another key
    with pytest.raises(MessageError, match="commitment"):
        env.decrypt(message)


def test_garbage_and_other_formats_are_refused(env: Envelope) -> None:
    for junk in (b"", b"KMBE", b"KB\x01\x01" + os.urandom(60), os.urandom(200)):
        with pytest.raises(MessageError):
            env.decrypt(junk)


# ------------------------------------------------------------------------------------------------ data-key cache


def _cached(kms: FakeKms, clock: Clock, **limits) -> Envelope:
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(**{"max_age": 60, **limits}))
    env.keys.clock = clock
    return env


def _data_key_of(message: bytes) -> bytes:
    return m.parse_header(message).wrapped_keys[0]


def test_without_a_cache_every_message_gets_a_new_data_key(kms: FakeKms, env: Envelope) -> None:
    keys = {_data_key_of(env.encrypt(b"a", "key-1", CTX)) for _ in range(5)}
    assert len(keys) == 5 and kms.generated == 5


def test_the_cache_honours_max_messages(kms: FakeKms) -> None:
    env = _cached(kms, Clock(), max_messages=3)
    keys = [_data_key_of(env.encrypt(b"a", "key-1", CTX)) for _ in range(7)]
    assert keys[0] == keys[1] == keys[2] != keys[3] == keys[4] == keys[5] != keys[6]
    assert kms.generated == 3


def test_the_cache_honours_max_bytes(kms: FakeKms) -> None:
    env = _cached(kms, Clock(), max_bytes=250)
    keys = [_data_key_of(env.encrypt(b"x" * 100, "key-1", CTX)) for _ in range(4)]
    assert keys[0] == keys[1] != keys[2] == keys[3]
    big = env.encrypt(b"x" * 251, "key-1", CTX)  # larger than the limit on its own: never cached
    assert _data_key_of(big) not in keys and _data_key_of(env.encrypt(b"x", "key-1", CTX)) == keys[3]


def test_the_cache_honours_max_age(kms: FakeKms) -> None:
    clock = Clock()
    env = _cached(kms, clock, max_age=10)
    first = _data_key_of(env.encrypt(b"a", "key-1", CTX))
    clock.now += 9.9
    assert _data_key_of(env.encrypt(b"a", "key-1", CTX)) == first
    clock.now += 0.2
    assert _data_key_of(env.encrypt(b"a", "key-1", CTX)) != first


def test_the_cache_honours_the_frame_bound_of_random_nonces(kms: FakeKms, monkeypatch) -> None:
    monkeypatch.setattr(keys_module, "MAX_FRAMES_PER_DATA_KEY", 5)
    env = _cached(kms, Clock())
    keys = [_data_key_of(env.encrypt(b"x" * (2 * FRAME), "key-1", CTX)) for _ in range(3)]  # 2 frames each
    assert keys[0] == keys[1] != keys[2]


def test_cache_entries_are_per_key_and_context_and_bounded(kms: FakeKms) -> None:
    env = _cached(kms, Clock(), capacity=2)
    a = _data_key_of(env.encrypt(b"a", "key-1", {"c": "1"}))
    b = _data_key_of(env.encrypt(b"a", "key-1", {"c": "2"}))
    c = _data_key_of(env.encrypt(b"a", "key-2", {"c": "1"}))
    assert len({a, b, c}) == 3
    assert _data_key_of(env.encrypt(b"a", "key-2", {"c": "1"})) == c
    assert _data_key_of(env.encrypt(b"a", "key-1", {"c": "1"})) != a  # evicted (least recently used)


def test_streams_never_use_cached_keys(kms: FakeKms) -> None:
    env = _cached(kms, Clock())
    cached = _data_key_of(env.encrypt(b"a", "key-1", CTX))
    assert _data_key_of(_stream_encrypt(env, b"a")) != cached


def test_decryption_is_cached_for_max_age_only(kms: FakeKms) -> None:
    clock = Clock()
    env = _cached(kms, clock, max_age=10)
    message = env.encrypt(b"a", "key-1", CTX)
    calls = []
    unwrap = kms.unwrap
    kms.unwrap = lambda w, c: calls.append(1) or unwrap(w, c)
    env.decrypt(message)
    env.decrypt(message)
    assert len(calls) == 1
    clock.now += 11
    env.decrypt(message)
    assert len(calls) == 2


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * FRAME), st.floats(0, 4)), min_size=1, max_size=40),
       st.integers(1, 5), st.integers(FRAME, 6 * FRAME), st.floats(1, 8))
def test_a_cached_data_key_is_never_used_past_its_limits(plan, max_messages, max_bytes, max_age) -> None:
    kms, clock = FakeKms(), Clock()
    env = _cached(kms, clock, max_messages=max_messages, max_bytes=max_bytes, max_age=max_age)
    uses: dict[bytes, list] = {}
    for size, wait in plan:
        clock.now += wait
        key = _data_key_of(env.encrypt(b"x" * size, "key-1", CTX))
        first, messages, total = uses.get(key, [clock.now, 0, 0])
        uses[key] = [first, messages + 1, total + size]
        if uses[key][1] > 1:
            assert clock.now - first < max_age
        assert uses[key][1] <= max_messages
        assert uses[key][2] <= max_bytes or uses[key][1] == 1


class _Pretender(str):
    """A str whose characters are `other` but which claims to equal (and hashes like) "billing"."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("billing")


class _PretendsToBeKey1(_Pretender):
    def __hash__(self) -> int:
        return hash("key-1")


class _Liar:
    """Not a string at all, but equal to anything and hashing like "billing"."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("billing")


@pytest.mark.parametrize("bad", [{"app": 1}, {"app": True}, {"app": 1.0}, {"app": None}, {"app": b"billing"},
                                 {"app": _Liar()}, {1: "billing"}, {_Liar(): "billing"}, {"app": ["billing"]}])
def test_a_context_that_is_not_strings_is_refused_even_when_an_equal_one_is_cached(kms: FakeKms, bad: dict) -> None:
    env = _cached(kms, Clock())
    env.encrypt(b"a", "key-1", {"app": "billing"})
    with pytest.raises(TypeError, match="strings"):
        env.encrypt(b"a", "key-1", bad)
    assert kms.generated == 1 and env.keys.stats["hits"] == 0


def test_a_str_subclass_is_its_characters_and_never_borrows_another_contexts_data_key(kms: FakeKms) -> None:
    env = _cached(kms, Clock())
    cached = env.encrypt(b"a", "key-1", {"app": "billing"})
    pretender = env.encrypt(b"a", "key-1", {"app": _Pretender("other")})
    assert _data_key_of(pretender) != _data_key_of(cached)
    assert m.parse_header(pretender).context == {"app": "other"}
    assert env.decrypt(pretender, {"app": "other"}) == b"a"
    named = env.encrypt(b"a", _PretendsToBeKey1("key-2"), {"app": "billing"})
    assert _data_key_of(named).startswith(b"key-2") and type(kms.wrapped[_data_key_of(named)][1]["app"]) is str
    with pytest.raises(TypeError, match="string"):
        env.encrypt(b"a", 1, {"app": "billing"})  # type: ignore[arg-type]

    class Plain(str):  # a well-behaved subclass (StrEnum, say) with the same characters is the same context
        pass

    assert _data_key_of(env.encrypt(b"a", "key-1", {Plain("app"): Plain("billing")})) == _data_key_of(cached)


def test_a_mapping_with_two_keys_of_the_same_characters_is_refused(kms: FakeKms) -> None:
    class Twin(str):
        def __hash__(self) -> int:
            return id(self)

        def __eq__(self, other: object) -> bool:
            return self is other

    env = _cached(kms, Clock())
    with pytest.raises(TypeError, match="same characters"):
        env.encrypt(b"a", "key-1", {Twin("app"): "1", Twin("app"): "2"})
    with pytest.raises(TypeError, match="same characters"):
        env.encrypt(b"a", "key-1", {Twin("app"): "1", Twin("app"): "2"})  # nothing was cached for it
    assert kms.generated == 0


# ------------------------------------------------------------------------------------------------ pooled randomness


def _id_and_nonces(message: bytes) -> bytes:
    header, frames = _frames(message)
    return m.parse_header(header).message_id + b"".join(f[m.DESCRIPTOR_BYTES:m.DESCRIPTOR_BYTES + m.NONCE_BYTES]
                                                         for f in frames)


@pytest.fixture
def pool(monkeypatch) -> tuple[RandomPool, list[bytes]]:
    """A fresh pool for the envelope's message ids and nonces, and every block it drew from os.urandom."""
    draws: list[bytes] = []
    real = os.urandom

    def recorded(n: int) -> bytes:
        draws.append(real(n))
        return draws[-1]

    fresh = RandomPool(block=4096)
    monkeypatch.setattr(codec_module, "_RANDOM", fresh)
    monkeypatch.setattr(codec_module.os, "urandom", recorded)
    return fresh, draws


@pytest.mark.parametrize("sizes", [[1, 1, FRAME], [3 * FRAME - 1, 0, 2 * FRAME]])
def test_message_ids_and_nonces_are_kernel_random_bytes_each_handed_out_once(kms: FakeKms, pool, sizes) -> None:
    """One block of os.urandom serves many messages: each message's id and nonces are the next unused bytes of it."""
    fresh, draws = pool
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(max_age=60))
    plaintexts = [os.urandom(size) for size in sizes]
    messages = [env.encrypt(plaintext, "key-1", CTX) for plaintext in plaintexts]
    used = b"".join(_id_and_nonces(message) for message in messages)
    block = [d for d in draws if len(d) == 4096]  # the FakeKms draws its data key and blob through os.urandom too
    assert fresh.draws == 1 and len(block) == 1
    assert block[0].startswith(used)  # in order, every byte once, none skipped
    assert [env.decrypt(message, CTX) for message in messages] == plaintexts


def test_a_message_too_large_for_a_pool_block_draws_its_own_random_bytes(kms: FakeKms, pool) -> None:
    fresh, draws = pool
    env = Envelope(kms, frame_length=1)
    frames = (4096 - m.MESSAGE_ID_BYTES) // m.NONCE_BYTES + 1  # one nonce more than a block holds
    message = env.encrypt(b"z" * frames, "key-1")
    assert fresh.draws == 0 and draws[-1] == _id_and_nonces(message)
    assert env.decrypt(message) == b"z" * frames


def test_threads_sharing_a_cached_data_key_get_each_random_byte_once(kms: FakeKms, pool) -> None:
    """8 threads, one cached data key: every id and nonce is a distinct slice of the drawn blocks, and every block
    is handed out whole (a take not serialized with the others skips or repeats bytes)."""
    fresh, draws = pool
    block = fresh.block = 8 * 28  # eight one-frame messages a block: many refills while the threads race
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(max_age=60))
    seen = [_id_and_nonces(env.encrypt(b"", "key-1", CTX))]  # cached first: two cold misses make two data keys
    lock = threading.Lock()

    def work() -> None:
        mine = [_id_and_nonces(env.encrypt(b"", "key-1", CTX)) for _ in range(1999)]
        with lock:
            seen.extend(mine)
    race(work)  # threads switch between almost any two bytecodes
    assert kms.generated == 1 and len(seen) == 8 * 1999 + 1  # one data key for all the messages
    blocks = [d for d in draws if len(d) == block]
    drawn = [b[i:i + 28] for b in blocks for i in range(0, block, 28)]
    assert sorted(seen) == sorted(drawn[:len(seen)])  # each byte handed out once, in draw order, none skipped
    assert len(set(s[:16] for s in seen)) == len(set(s[16:] for s in seen)) == len(seen)


def _in_child(work: Callable[[], bytes]) -> bytes:
    """`work()` in a forked child; its bytes (or b"" if it failed or hung for 10 s)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            signal.alarm(10)
            os.write(write, work())
        finally:
            os._exit(0)
    os.close(write)
    out = b""
    while chunk := os.read(read, 65536):
        out += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_makes_its_own_data_key_and_never_reuses_its_parents_nonces(kms: FakeKms) -> None:
    """The parent's cached data key is the parent's to count: a child that went on with it would, with its parent,
    use it past its limits. The pooled nonces are the parent's too."""
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(max_age=60, max_messages=2))
    first = env.encrypt(b"first", "key-1", CTX)  # the parent now holds pooled bytes not yet handed out
    child = _in_child(lambda: env.encrypt(b"child", "key-1", CTX) + env.encrypt(b"child", "key-1", CTX))
    parent = env.encrypt(b"parent", "key-1", CTX)  # the data key's second and last message
    assert child and _data_key_of(child) != _data_key_of(parent) == _data_key_of(first)
    assert kms.generated == 1  # the child's data key was made by the child's copy of the source
    assert _id_and_nonces(child)[:16] != _id_and_nonces(parent)[:16]
    assert _id_and_nonces(child)[16:] != _id_and_nonces(parent)[16:]
    assert _data_key_of(env.encrypt(b"third", "key-1", CTX)) != _data_key_of(first)  # the limit, in the parent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_while_another_thread_holds_the_cache_lock_leaves_the_child_working(kms: FakeKms) -> None:
    env = Envelope(kms, frame_length=FRAME, cache=CacheLimits(max_age=60))
    env.encrypt(b"warm", "key-1", CTX)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with env.keys._lock:
            held.set()
            release.wait(10)
    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        child = _in_child(lambda: env.encrypt(b"child", "key-1", CTX))
    finally:
        release.set()
        thread.join()
    assert child.startswith(m.MAGIC)  # the child encrypted instead of waiting forever on its copy of the lock


class _FixedKms(FakeKms):
    def generate(self, key: str, context: Mapping[str, str]) -> tuple[bytes, list[bytes]]:
        self.wrapped[b"wrapped-" + key.encode()] = (bytes(range(32)), dict(context))
        return bytes(range(32)), [b"wrapped-" + key.encode()]


@pytest.mark.parametrize("size", [0, 5, FRAME, FRAME + 1, 2 * FRAME + 3])
def test_messages_are_byte_for_byte_the_documented_format(monkeypatch, size: int) -> None:
    """docs/envelope.md, built here with HKDF and AES-GCM directly from fixed random bytes, equals what encrypt
    makes: the fast paths change no byte of the format."""
    rnd = bytes((i * 7 + 3) % 256 for i in range(4096))
    monkeypatch.setattr(codec_module, "_RANDOM", RandomPool(block=4096))
    monkeypatch.setattr(codec_module.os, "urandom", lambda n: rnd[:n])
    env = Envelope(_FixedKms(), frame_length=FRAME, cache=CacheLimits(max_age=60))
    plaintext = bytes(i % 251 for i in range(size))
    okm = HKDF(hashes.SHA512(), 64, salt=None, info=b"kms-broker envelope v1\x01").derive(bytes(range(32)))
    ctx = json.dumps(CTX, sort_keys=True, separators=(",", ":")).encode()
    wrapped = b"wrapped-key-1"
    header = (b"KMBE\x01\x01" + FRAME.to_bytes(4, "big") + rnd[:16] + okm[32:] + len(ctx).to_bytes(2, "big") + ctx
              + b"\x01" + len(wrapped).to_bytes(2, "big") + wrapped)
    chunks = [plaintext[i:i + FRAME] for i in range(0, size, FRAME)] or [b""]
    expected, at = header, 16
    for number, chunk in enumerate(chunks, 1):
        nonce, at = rnd[at:at + 12], at + 12
        descriptor = number.to_bytes(4, "big") + bytes([number == len(chunks)]) + len(chunk).to_bytes(4, "big")
        expected += descriptor + nonce + AESGCM(okm[:32]).encrypt(nonce, chunk, header + descriptor)
    assert env.encrypt(plaintext, "key-1", CTX) == expected
    assert env.decrypt(expected, CTX) == plaintext


def test_a_message_of_more_frames_than_a_sequence_number_counts_is_refused(env: Envelope, monkeypatch) -> None:
    monkeypatch.setattr(m, "MAX_FRAMES_PER_DATA_KEY", 3)
    assert env.decrypt(env.encrypt(b"x" * (2 * FRAME), "key-1", CTX)) == b"x" * (2 * FRAME)
    with pytest.raises(MessageError, match="frames"):
        env.encrypt(b"x" * (3 * FRAME), "key-1", CTX)


def _with_context_bytes(message: bytes, ctx: bytes) -> bytes:
    """The message with its header's context bytes replaced (and the length field fixed)."""
    at = 10 + m.MESSAGE_ID_BYTES + 32
    n = int.from_bytes(message[at:at + 2], "big")
    return message[:at] + len(ctx).to_bytes(2, "big") + ctx + message[at + 2 + n:]


def test_the_context_cache_cannot_make_a_changed_header_pass(env: Envelope) -> None:
    message = env.encrypt(b"abc", "key-1", {"app": "aa"})
    assert env.decrypt(message) == b"abc"  # the context bytes are now kept
    for forged_ctx in (b'{"app":"ab"}', b'{"app": "aa"}', b'{"app":"\\u0061a"}', b'{"app":"aa","app":"aa"}',
                       b'{"app":"aa"} '):
        forged = _with_context_bytes(message, forged_ctx)
        with pytest.raises(MessageError):
            env.decrypt(forged)
        with pytest.raises(MessageError):
            _stream_decrypt(env, forged)
    for forged_ctx in (b'{"app": "aa"}', b'{"app":"\\u0061a"}', b'{"app":"aa","app":"aa"}', b'{"app":"aa"} '):
        with pytest.raises(MessageError, match="invalid encryption context"):  # refused at parse, cached or not
            m.parse_header(_with_context_bytes(message, forged_ctx))
            m.parse_header(_with_context_bytes(message, forged_ctx))


def test_a_parsed_context_is_a_copy_and_the_context_cache_is_bounded(env: Envelope, monkeypatch) -> None:
    message = env.encrypt(b"abc", "key-1", {"app": "aa"})
    m.parse_header(message).context["app"] = "changed by a caller"
    assert m.parse_header(message).context == {"app": "aa"} and env.decrypt(message, {"app": "aa"}) == b"abc"
    monkeypatch.setattr(m, "_CONTEXTS", {})
    for i in range(m.CONTEXT_CACHE_ENTRIES + 10):
        m.parse_header(_with_context_bytes(message, b'{"n":"%d"}' % i))
    assert len(m._CONTEXTS) == m.CONTEXT_CACHE_ENTRIES and b'{"n":"0"}' not in m._CONTEXTS
    big = b'{"n":"%s"}' % (b"x" * m.CONTEXT_CACHE_MAX_BYTES)
    assert m.parse_header(_with_context_bytes(message, big)).context == {"n": "x" * m.CONTEXT_CACHE_MAX_BYTES}
    assert big not in m._CONTEXTS


@pytest.mark.parametrize("size", [5, 3 * FRAME + 7])
def test_messages_in_mutable_buffers_decrypt_and_refuse_tampering(env: Envelope, size: int) -> None:
    data = os.urandom(size)
    message = env.encrypt(data, "key-1", CTX)
    assert env.decrypt(bytearray(message)) == data and env.decrypt(memoryview(message)) == data
    changed = bytearray(message)
    changed[20] ^= 1  # the message id: authenticated by every frame
    with pytest.raises(MessageError):
        env.decrypt(changed)


def test_a_buffer_changed_during_decryption_cannot_swap_the_header_that_was_checked(kms: FakeKms) -> None:
    """The context is checked on the header as parsed; the frames must authenticate that same header, not what
    the caller's buffer holds later (here a source that rewrites the buffer while it unwraps)."""
    message = Envelope(kms, frame_length=FRAME).encrypt(b"abc", "key-1", {"app": "aa"})
    buffer = bytearray(message.replace(b'"aa"', b'"ab"', 1))

    class Rewriting:
        def unwrap(self, wrapped: Sequence[bytes], context: Mapping[str, str]) -> bytes:
            buffer[:len(message)] = message[:len(buffer)]  # back to the header the frames were sealed with
            return kms.wrapped[wrapped[0]][0]

    with pytest.raises(MessageError, match="authentication"):
        Envelope(Rewriting(), frame_length=FRAME).decrypt(buffer, {"app": "ab"})  # type: ignore[arg-type]


def test_a_header_is_immutable(env: Envelope) -> None:
    header = m.parse_header(env.encrypt(b"abc", "key-1", CTX))
    with pytest.raises(AttributeError):
        header.raw = b""  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------ streaming


class Zeros(io.RawIOBase):
    """A readable stream of n zero bytes that holds none of them."""

    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class Sink(io.RawIOBase):
    def __init__(self) -> None:
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.count += len(data)
        return len(data)


def test_streaming_runs_in_constant_memory(kms: FakeKms) -> None:
    env = Envelope(kms, frame_length=64 * 1024)
    size = 64 * 1024 * 1024
    tracemalloc.start()
    try:
        sink = Sink()
        env.encrypt_stream(io.BufferedReader(Zeros(size)), sink, "key-1", CTX)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sink.count > size
    assert peak < 1024 * 1024  # a few frames, not the 64 MiB


def test_bad_frame_lengths_and_limits_are_refused(kms: FakeKms) -> None:
    for bad in (0, m.MAX_FRAME + 1):
        with pytest.raises(MessageError):
            Envelope(kms, frame_length=bad)
    with pytest.raises(ValueError):
        CacheLimits(max_age=0)
    with pytest.raises(TypeError):
        Envelope(kms).encrypt(b"a", "key-1", {"a": 1})  # type: ignore[dict-item]
