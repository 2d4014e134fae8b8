"""Rows a process keeps for a moment, used only while no process of this host has written that kind of row since.

The crypto calls read the same key's metadata, and the keyring bridge the same entry row for every request of a
database that asks for its key; keeping the row (never anything unsealed) saves the store round trip. A kept row is used only while the host's counter of that kind
of write (generation.py) still reads what it read before the row was read, and for at most `max_age` seconds: a
change made by any process of this host is seen by the very next read, one made on another host sharing the
database within `max_age`. Writers call `wrote()` after their write (committed or not: a bump only costs misses).
Without a counter (no place for it) nothing is kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from broker.store.generation import HostGeneration

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class KeptRows(Generic[K, V]):
    """At most `entries` rows by key; the map starts over when full (a burst of distinct keys costs misses only)."""

    def __init__(self, counter: HostGeneration | None, *, entries: int = 4096) -> None:
        self.counter = counter  # None: nothing is kept
        self._entries = entries
        self._rows: dict[K, tuple[float, int, V]] = {}  # key -> (read at, host counter before the read, row)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def read(self, key: K, load: Callable[[], V], max_age: float, keep: Callable[[V], bool]) -> V:
        """The row kept under `key` if it is younger than `max_age` and no write of this host happened since it was
        read; else `load()`, kept when `keep(row)` says so."""
        counter = self.counter
        if counter is None or max_age <= 0:
            return load()
        seen = counter.current()  # before the row: a write that commits after this moves the counter
        now = time.monotonic()
        hit = self._rows.get(key)
        if hit is not None and hit[1] == seen and now - hit[0] < max_age:
            return hit[2]
        row = load()
        if keep(row):
            with self._lock:
                if len(self._rows) >= self._entries:
                    self._rows.clear()
                self._rows[key] = (now, seen, row)
        return row

    def wrote(self) -> None:
        """After a write of this kind: every process of this host stops using what it kept."""
        with self._lock:
            self._rows.clear()
        if self.counter is not None:
            self.counter.bump()
