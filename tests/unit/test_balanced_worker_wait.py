"""The balanced worker's loop wakes when its accept pause ends, and only then: a pause in the past, a worker at
gunicorn's own connection limit or one shutting down waits the loop's full timeout instead of spinning at 0."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from gunicorn.workers.gthread import ThreadWorker

from broker.balanced_worker import BalancedThreadWorker


@pytest.fixture
def waited(monkeypatch):
    seen: list[float] = []
    monkeypatch.setattr(ThreadWorker, "wait_for_and_dispatch_events", lambda self, timeout: seen.append(timeout))
    return seen


def _worker(resume_in: float, *, accepting: bool = False, alive: bool = True) -> BalancedThreadWorker:
    worker = object.__new__(BalancedThreadWorker)
    worker._resume_accept, worker._accepting, worker.alive = time.monotonic() + resume_in, accepting, alive
    worker.cfg = SimpleNamespace(workers=2, threads=8)
    return worker


def test_a_pause_ahead_shortens_the_wait(waited):
    _worker(0.005).wait_for_and_dispatch_events(1.0)
    assert 0 < waited[0] <= 0.005


@pytest.mark.parametrize("worker", [
    pytest.param(lambda: _worker(-0.5), id="pause-over"),
    pytest.param(lambda: _worker(0.005, alive=False), id="shutting-down"),
    pytest.param(lambda: _worker(0.005, accepting=True), id="accepting"),
])
def test_no_pause_ahead_keeps_the_loops_timeout(waited, worker):
    worker().wait_for_and_dispatch_events(1.0)
    assert waited == [1.0]
