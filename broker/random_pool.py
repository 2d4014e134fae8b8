"""Random bytes handed out from a block drawn at once, for values that must be unpredictable and never repeat but
are not secret: AES-GCM IVs drawn from the HSM's generator, request ids drawn from the kernel's.

A call into the generator per value costs more than the value: a trip into the HSM (and a release of the
interpreter lock that, under load, hands the thread's core to another thread) for 12 bytes of IV, or a `getrandom`
syscall for a request id. A pool draws `block` bytes at a time and hands each byte out once.

Each byte is handed out once, by any thread: `take` holds the pool's lock. A forked child starts with an empty
pool (broker/after_fork.py): bytes its parent held would otherwise be handed out in both processes, and the same
IV twice under one key breaks AES-GCM. Never pool key material: bytes waiting in a pool sit in process memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from broker.after_fork import reset_in_forked_child


class RandomPool:
    def __init__(self, block: int = 4096) -> None:
        if block <= 0:
            raise ValueError("block must be positive")
        self.block = block
        self._lock = threading.Lock()
        self._data = b""
        self._at = 0
        self.draws = 0  # blocks drawn from the generator, for tests and benchmarks
        reset_in_forked_child(self)

    def take(self, n: int, draw: Callable[[int], bytes]) -> bytes:
        """`n` bytes no caller got before; `draw(k)` returns k fresh random bytes from the generator when the pool
        runs short (the caller passes it so that it runs in the caller's context, e.g. under an HSM session lock)."""
        if not 0 < n <= self.block:
            raise ValueError(f"take 1 to {self.block} bytes at a time")
        lock = self._lock
        lock.acquire()  # not `with`: this is on every Encrypt's path, and acquire/release costs half as much
        try:
            start = self._at
            end = start + n
            if end > len(self._data):
                data = draw(self.block)
                if len(data) != self.block:
                    raise RuntimeError("the random generator returned fewer bytes than asked")
                self._data, start, end = data, 0, n
                self.draws += 1
            self._at = end
            return self._data[start:end]
        finally:
            lock.release()

    def reset_after_fork(self) -> None:
        """In a forked child: drop what is left (it is the parent's)."""
        self._lock = threading.Lock()  # a parent's thread may have held it at the fork
        self._data, self._at = b"", 0

