"""The sync's scheduler: a slow provider holds only its own slots, never the threads other providers need."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from broker.replication.lanes import Lanes


class _Track:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.total_peak = 0
        self.finished: list[str] = []

    def enter(self, lane: str) -> None:
        with self.lock:
            self.now[lane] += 1
            self.peak[lane] = max(self.peak[lane], self.now[lane])
            self.total_peak = max(self.total_peak, sum(self.now.values()))

    def leave(self, lane: str) -> None:
        with self.lock:
            self.now[lane] -= 1
            self.finished.append(lane)


def test_a_blocked_lane_does_not_hold_the_other_lanes_threads() -> None:
    """Every "slow" item blocks until every "fast" item is done. A pool whose tasks wait on a per-lane semaphore
    would park all its threads behind the slow lane and never finish; lanes finish, slow items last."""
    track = _Track()
    fast_done = threading.Event()
    waited: list[bool] = []
    n_fast = 12

    def work(item: tuple[str, int]) -> None:
        lane, _ = item
        track.enter(lane)
        try:
            if lane == "slow":
                waited.append(fast_done.wait(timeout=120))  # a deadlock guard, not a measurement
        finally:
            track.leave(lane)
        if lane == "fast":
            if len([x for x in track.finished if x == "fast"]) == n_fast:
                fast_done.set()

    items = [("slow", ("slow", i)) for i in range(12)] + [("fast", ("fast", i)) for i in range(n_fast)]
    failures: list[Exception] = []
    Lanes(per_lane=2, threads=4).run(items, work, lambda item, exc: exc and failures.append(exc))
    assert failures == []
    assert waited == [True] * 12  # no slow item gave up waiting: the fast lane always had threads
    assert track.peak["slow"] <= 2 and track.peak["fast"] <= 2 and track.total_peak <= 4


def test_limits_per_lane_and_in_all() -> None:
    track = _Track()
    gate = threading.Barrier(6, timeout=120)  # 3 lanes x 2 slots: all six run together once

    def work(item: tuple[str, int]) -> None:
        lane, i = item
        track.enter(lane)
        try:
            if i == 0 or i == 1:
                gate.wait()
        finally:
            track.leave(lane)

    items = [(lane, (lane, i)) for lane in ("a", "b", "c") for i in range(8)]
    done: list[tuple[str, int]] = []
    Lanes(per_lane=2, threads=6).run(items, work, lambda item, exc: done.append(item))
    assert sorted(done) == sorted(item for _, item in items)
    assert max(track.peak.values()) == 2 and track.total_peak == 6


def test_failures_go_to_done_and_the_run_goes_on() -> None:
    results: dict[int, str] = {}

    def work(i: int) -> None:
        if i % 3 == 0:
            raise ValueError(f"item {i}")

    Lanes(per_lane=1, threads=2).run([(i % 2, i) for i in range(9)], work,
                                     lambda i, exc: results.__setitem__(i, "failed" if exc else "ok"))
    assert results == {i: "failed" if i % 3 == 0 else "ok" for i in range(9)}


def test_lanes_are_served_in_turn() -> None:
    order: list[str] = []
    items = [("x", f"x{i}") for i in range(3)] + [("y", f"y{i}") for i in range(3)]
    Lanes(per_lane=1, threads=1).run(items, order.append, lambda item, exc: None)
    assert order == ["x0", "y0", "x1", "y1", "x2", "y2"]


def test_an_error_in_done_stops_the_run() -> None:
    def done(item: int, exc: Exception | None) -> None:
        raise RuntimeError("bug in the caller")

    with pytest.raises(RuntimeError, match="bug in the caller"):
        Lanes(per_lane=1, threads=1).run([("a", 1), ("a", 2)], lambda i: None, done)


def test_threads_are_shared_by_concurrency_not_by_starts() -> None:
    """With 4 threads and 4 slots per lane, a lane whose items never finish while the other has work holds half
    the threads (the lane with fewer in flight gets the next thread); taking lanes in turn would let the slow lane
    gather all four and starve the fast one."""
    track, fast_done, n_fast = _Track(), threading.Event(), 20
    slow_beside_fast: list[int] = []

    def work(item: tuple[str, int]) -> None:
        lane, _ = item
        track.enter(lane)
        if lane == "fast":
            with track.lock:
                slow_beside_fast.append(track.now["slow"])
        try:
            if lane == "slow":
                assert fast_done.wait(timeout=120)  # a deadlock guard, not a measurement
        finally:
            track.leave(lane)
        if lane == "fast" and track.finished.count("fast") == n_fast:
            fast_done.set()

    items = [("slow", ("slow", i)) for i in range(6)] + [("fast", ("fast", i)) for i in range(n_fast)]
    failures: list[Exception] = []
    Lanes(per_lane=4, threads=4).run(items, work, lambda item, exc: exc and failures.append(exc))
    assert failures == [] and max(slow_beside_fast) <= 2
