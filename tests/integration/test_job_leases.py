"""Job leases on a real PostgreSQL (and SQLite): one claimant per due period, a dead holder replaced after its lease,
a failed run retried, all under a driven clock. The three-node proof with real broker processes is in
tests/integration/cluster/test_jobs.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from broker.jobs import Job, JobRunner
from broker.store import Store
from broker.store.leases import JobLeases

T0 = datetime(2030, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def leases(request, tmp_path):
    url = f"sqlite:///{tmp_path / 'broker.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "postgres_url")
    store = Store(url)
    store.migrate()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM job_leases")
    yield JobLeases(store.engine)
    store.dispose()


def _race(leases: JobLeases, name: str, now: datetime, contenders: int = 8) -> list[str]:
    """`contenders` threads claim the same job at the same instant; returns the winners."""
    barrier = threading.Barrier(contenders)
    won: list[str] = []

    def claim(i: int) -> None:
        barrier.wait()
        if leases.claim(name, f"holder-{i}", now, timedelta(minutes=10)):
            won.append(f"holder-{i}")

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(contenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_exactly_one_claimant_per_period(leases: JobLeases):
    for period in range(4):
        now = T0 + period * MINUTE
        winners = _race(leases, "rotate", now)
        assert len(winners) == 1, (period, winners)
        assert _race(leases, "rotate", now + timedelta(seconds=1)) == []  # held: nobody else
        assert leases.finish("rotate", winners[0], now + MINUTE, now)
        assert _race(leases, "rotate", now + timedelta(seconds=30)) == []  # done: not due before the next period
    state = leases.state("rotate")
    assert state.runs == 4 and state.holder == "" and state.next_due_at == T0 + 4 * MINUTE


def test_a_dead_holder_is_replaced_after_its_lease(leases: JobLeases):
    assert leases.claim("backup", "node-a", T0, timedelta(minutes=10))
    # node-a dies without finishing: before its lease ends nobody takes over, after it one node does
    assert not leases.claim("backup", "node-b", T0 + timedelta(minutes=9), timedelta(minutes=10))
    assert leases.claim("backup", "node-b", T0 + timedelta(minutes=10), timedelta(minutes=10))
    assert not leases.finish("backup", "node-a", T0 + MINUTE, T0 + timedelta(minutes=11)), "a lost lease changes nothing"
    assert leases.finish("backup", "node-b", T0 + timedelta(minutes=70), T0 + timedelta(minutes=11))
    assert leases.state("backup").last_holder == "node-b"


def test_runner_runs_due_jobs_once_and_retries_failures(leases: JobLeases):
    ran: list[tuple[str, datetime]] = []
    fail = {"now": True}

    def flaky(now: datetime) -> None:
        if fail["now"]:
            raise RuntimeError("provider down")
        ran.append(("flaky", now))

    jobs = [Job("steady", MINUTE, lambda now: ran.append(("steady", now))), Job("flaky", MINUTE, flaky)]
    runners = [JobRunner(leases, f"node-{i}") for i in range(3)]
    first = [r.run_due(jobs, T0) for r in runners]
    assert sorted(o["steady"] for o in first) == ["not due", "not due", "ran"]
    assert [o["flaky"] for o in first].count("failed") == 3, "a failed run frees the lease: the next node retries"
    fail["now"] = False
    second = [r.run_due(jobs, T0 + timedelta(seconds=5)) for r in runners]
    assert [o["flaky"] for o in second].count("ran") == 1 and [o["steady"] for o in second].count("ran") == 0
    third = [r.run_due(jobs, T0 + MINUTE) for r in runners]
    assert [o["steady"] for o in third].count("ran") == 1
    assert ran == [("steady", T0), ("flaky", T0 + timedelta(seconds=5)), ("steady", T0 + MINUTE)]
