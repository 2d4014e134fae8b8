"""broker.random_pool: every byte handed out once, by any thread, and never in both processes after a fork."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from broker.api.limits import request_id
from broker.random_pool import RandomPool
from tests.support.racing import race


def counting_draw(calls: list[int]):
    """A generator whose output is its call number and byte offset, so that repeats are visible."""
    def draw(n: int) -> bytes:
        calls.append(n)
        number = len(calls)
        return b"".join((number * 1_000_000 + i).to_bytes(4, "big") for i in range(n // 4))
    return draw


def test_bytes_are_handed_out_once_in_order_and_drawn_a_block_at_a_time():
    calls: list[int] = []
    blocks: list[bytes] = []
    draw = counting_draw(calls)
    pool = RandomPool(block=48)
    taken = [pool.take(12, lambda n: blocks.append(draw(n)) or blocks[-1]) for _ in range(10)]
    assert calls == [48, 48, 48]  # 10 x 12 bytes: three blocks of four
    assert b"".join(taken) == b"".join(blocks)[:120]  # every byte drawn, in order, none twice
    assert pool.draws == 3


def test_a_take_that_does_not_fit_the_rest_of_a_block_draws_a_new_one():
    calls: list[int] = []
    pool = RandomPool(block=32)
    first, second, third = (pool.take(12, counting_draw(calls)) for _ in range(3))
    assert len(calls) == 2  # 24 bytes fit the first block, the third take needs a fresh one
    assert third[:4] == (2 * 1_000_000).to_bytes(4, "big")
    assert len({first, second, third}) == 3


def test_threads_never_get_the_same_bytes():
    pool = RandomPool(block=12 * 64)
    taken: list[bytes] = []
    lock = threading.Lock()

    def work() -> None:
        mine = [pool.take(12, os.urandom) for _ in range(2000)]
        with lock:
            taken.extend(mine)
    race(work)  # an unlocked pool would repeat bytes
    assert len(taken) == 16000 and len(set(taken)) == 16000
    assert pool.draws == 16000 * 12 // (12 * 64)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_hands_out_what_its_parent_holds():
    calls: list[int] = []
    pool = RandomPool(block=120)
    pool.take(12, counting_draw(calls))  # the parent now holds 108 bytes not yet handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first take must come from a block of its own
        try:
            os.write(write, pool.take(12, os.urandom) + bytes([pool.draws]))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    parent_next = pool.take(12, counting_draw(calls))
    assert child[:12] != parent_next
    assert child[12] == 2  # the child drew a block: the parent's one and its own
    assert parent_next == (1 * 1_000_000 + 3).to_bytes(4, "big") + (1_000_004).to_bytes(4, "big") + \
        (1_000_005).to_bytes(4, "big")  # the parent goes on with its own block


def test_bad_sizes_and_short_generators_are_refused():
    pool = RandomPool(block=16)
    with pytest.raises(ValueError):
        pool.take(17, os.urandom)
    with pytest.raises(ValueError):
        pool.take(0, os.urandom)
    with pytest.raises(RuntimeError):
        pool.take(8, lambda n: b"\0" * (n - 1))
    with pytest.raises(ValueError):
        RandomPool(block=0)


def test_a_generator_that_fails_leaves_the_pool_unlocked_and_hands_nothing_out_twice():
    pool = RandomPool(block=16)
    first = pool.take(12, os.urandom)

    def failing(n: int) -> bytes:
        raise OSError("the generator is gone (an HSM session, say)")
    with pytest.raises(OSError):
        pool.take(8, failing)  # 4 bytes left: a draw is needed, and it fails
    assert not pool._lock.locked()
    assert pool.take(4, os.urandom) == pool._data[12:16] and pool.draws == 1  # the 4 left, not yet handed out
    assert pool.take(8, os.urandom) != first[:8] and pool.draws == 2


def test_fresh_request_ids_are_distinct_version_4_uuids():
    ids = [request_id(None) for _ in range(5000)]
    assert len(set(ids)) == 5000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 for u in parsed)
    assert request_id("client-chosen.id") == "client-chosen.id"
