"""Time-driven rules without scanning: a heap of deadlines, one current deadline per (rule, object).

The emulators used to apply scheduled destruction, expiry and automatic rotation by scanning every object on every
request, so a request cost grew with the number of keys held (GCP at 2,000 keys: 34 raw creates/s, 944 empty).
Here a request pops only the deadlines that are due. The heap may hold stale entries (a deadline moved or
cancelled since it was pushed): an entry counts only while it is still the current deadline of its object, and the
caller re-checks the object itself before acting, so a stale entry is harmless.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable, Iterator
from typing import Any


class Deadlines:
    """Current deadline per ident; `due(now)` yields the idents whose current deadline is <= now, once each."""

    def __init__(self) -> None:
        self._current: dict[Hashable, Any] = {}
        self._heap: list[tuple[Any, int, Hashable]] = []
        self._seq = itertools.count()  # ties never compare the idents

    def __len__(self) -> int:
        return len(self._current)

    def set(self, ident: Hashable, when: Any | None) -> None:
        """Make `when` the deadline of `ident` (None cancels it). Unchanged deadlines push nothing."""
        if when is None:
            self._current.pop(ident, None)
            return
        if self._current.get(ident) == when:
            return
        self._current[ident] = when
        heapq.heappush(self._heap, (when, next(self._seq), ident))
        if len(self._heap) > 2 * len(self._current) + 64:  # stale entries outnumber live ones: rebuild, amortised O(1)
            self._heap = [(w, next(self._seq), i) for i, w in self._current.items()]
            heapq.heapify(self._heap)

    def due(self, now: Any) -> Iterator[Hashable]:
        """Idents whose deadline has come, earliest first; each is forgotten as it is yielded (set it again to
        re-arm it, e.g. when the rule could not apply yet)."""
        while self._heap and self._heap[0][0] <= now:  # self._heap: a set() while iterating may rebuild it
            when, _, ident = heapq.heappop(self._heap)
            if self._current.get(ident) == when:
                del self._current[ident]
                yield ident
