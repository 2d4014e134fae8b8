"""KeptRows (broker/store/kept.py): a kept row is used only while the host counter has not moved and it is younger
than max_age; without a counter, with max_age 0, or when `keep` refuses, every read loads; the map is bounded."""

from __future__ import annotations

import time
from pathlib import Path

from broker.store.generation import HostGeneration
from broker.store.kept import KeptRows


class Loads:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


def test_kept_until_this_host_writes(tmp_path: Path) -> None:
    counter = HostGeneration(tmp_path / "writes.generation")
    other = HostGeneration(tmp_path / "writes.generation")  # another process's view of the same counter
    kept: KeptRows[str, int] = KeptRows(counter)
    load = Loads()
    assert [kept.read("a", load, 60, lambda _r: True) for _ in range(3)] == [1, 1, 1]
    other.bump()  # a write of another process of this host
    assert kept.read("a", load, 60, lambda _r: True) == 2
    kept.wrote()  # a write of this process
    assert kept.read("a", load, 60, lambda _r: True) == 3
    counter.close()
    other.close()


def test_max_age_no_counter_and_keep_refusal_load_every_time(tmp_path: Path) -> None:
    counter = HostGeneration(tmp_path / "writes.generation")
    load = Loads()
    kept: KeptRows[str, int] = KeptRows(counter)
    kept.read("a", load, 0.05, lambda _r: True)
    time.sleep(0.06)
    assert kept.read("a", load, 0.05, lambda _r: True) == 2  # older than max_age
    assert kept.read("a", load, 0, lambda _r: True) == 3  # max_age 0: off
    assert kept.read("b", load, 60, lambda _r: False) == 4 and kept.read("b", load, 60, lambda _r: False) == 5
    none: KeptRows[str, int] = KeptRows(None)
    assert none.read("a", load, 60, lambda _r: True) == 6 and none.read("a", load, 60, lambda _r: True) == 7
    none.wrote()  # no counter: nothing to move, nothing kept
    assert len(none) == 0
    counter.close()


def test_bounded(tmp_path: Path) -> None:
    counter = HostGeneration(tmp_path / "writes.generation")
    kept: KeptRows[int, int] = KeptRows(counter, entries=3)
    for key in range(10):
        kept.read(key, lambda key=key: key, 60, lambda _r: True)
        assert len(kept) <= 3
    counter.close()
