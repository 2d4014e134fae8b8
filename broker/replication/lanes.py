"""Per-provider lanes over one bounded thread pool: the sync's scheduler.

A sync apply has work for several providers at once, at most `per_lane` operations in flight on each, and at most
`threads` worker threads in all (each holds store connections). The naive shape (a pool whose tasks each take a
per-provider semaphore) lets the slowest provider's queued tasks occupy every thread while they wait for its
semaphore, so every provider then moves at the slowest one's pace. Here a worker only ever *takes* an item of a lane
that has a free slot, so a slow provider holds at most `per_lane` threads and the others keep theirs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class Lanes(Generic[T]):
    """Run `work(item)` for every item, items grouped by lane; `done(item, exc)` after each (exc None on success).

    A free thread goes to the lane with the fewest items in flight (in turn on ties), so none waits behind
    another's queue and each gets an even share of the threads. `work` may raise: the exception goes to
    `done`, never out of `run` (except BaseException that is not an Exception, which stops the run)."""

    def __init__(self, per_lane: int, threads: int) -> None:
        if per_lane < 1 or threads < 1:
            raise ValueError("per_lane and threads must be at least 1")
        self.per_lane = per_lane
        self.threads = threads

    def run(self, items: Iterable[tuple[Hashable, T]], work: Callable[[T], None],
            done: Callable[[T, Exception | None], None]) -> None:
        queues: dict[Hashable, deque[T]] = {}
        for lane, item in items:
            queues.setdefault(lane, deque()).append(item)
        if not queues:
            return
        order = list(queues)
        busy = dict.fromkeys(order, 0)
        cond = threading.Condition()
        turn = [0]
        failure: list[BaseException] = []

        def take() -> tuple[Hashable, T] | None:
            """The next item of the lane with work, a free slot and the fewest items in flight (ties in turn),
            waiting while every lane with work is full; None when no work is left. Fewest-in-flight shares the
            threads by concurrency, not by starts: a fast lane finishes sooner and so starts more."""
            with cond:
                while True:
                    if failure:
                        return None
                    waiting, best = False, None
                    for i in range(len(order)):
                        lane = order[(turn[0] + i) % len(order)]
                        if not queues[lane]:
                            continue
                        if busy[lane] >= self.per_lane:
                            waiting = True
                            continue
                        if best is None or busy[lane] < busy[order[best]]:
                            best = (turn[0] + i) % len(order)
                    if best is not None:
                        lane = order[best]
                        busy[lane] += 1
                        turn[0] = (best + 1) % len(order)
                        return lane, queues[lane].popleft()
                    if not waiting:
                        return None
                    cond.wait()

        def worker() -> None:
            while True:
                got = take()
                if got is None:
                    return
                lane, item = got
                try:
                    try:
                        work(item)
                    except Exception as exc:  # noqa: BLE001 - handed to done(); the run goes on
                        done(item, exc)
                    else:
                        done(item, None)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller of run(), which raises it
                    with cond:
                        failure.append(exc)
                        cond.notify_all()
                    return
                finally:
                    with cond:
                        busy[lane] -= 1
                        cond.notify_all()

        wanted = sum(min(self.per_lane, len(q)) for q in queues.values())
        pool = [threading.Thread(target=worker, name=f"kmsb-lane-{i}", daemon=True)
                for i in range(max(1, min(self.threads, wanted)))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        if failure:
            raise failure[0]


__all__ = ["Lanes"]
