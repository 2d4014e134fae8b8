"""Background jobs of a broker node, each run once per period across every process and node on the store.

Every gunicorn worker of every node ticks the same loop; a job runs only in the one process whose claim of the
job's lease succeeded (broker/store/leases.py), so scheduled deletions, rotations, keyring rotation schedules and
`sync apply --every` happen once per period for the whole cluster, and carry on when a node dies (its lease
expires and another node takes the next tick). Each step a job takes is still a declared operation of the gate,
audited in the chain of the node that ran it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.store.leases import JobLeases

log = logging.getLogger("kms_broker.jobs")
LEASE = timedelta(minutes=10)  # a holder that died mid-run is replaced after this long


@dataclass(frozen=True)
class Job:
    name: str
    period: timedelta
    run: Callable[[datetime], Any]  # gets the round's time (driven in tests and `kms-broker jobs run-due --now`)
    lease: timedelta = LEASE


def holder_id(data_dir: Any) -> str:
    """Who holds a lease: host, data folder and process (unique across the cluster, readable by an operator)."""
    return f"{socket.gethostname()}:{data_dir}:{os.getpid()}"[:255]


# Called after every round with (job name, outcome): "ran", "failed". The metrics module subscribes.
ON_RUN: list[Callable[[str, str], None]] = []


class JobRunner:
    def __init__(self, leases: JobLeases, holder: str) -> None:
        self.leases = leases
        self.holder = holder

    def run_due(self, jobs: Iterable[Job], now: datetime | None = None) -> dict[str, str]:
        """One round: each due job this process wins runs now. Returns job → "ran" | "not due" (due later, or
        another process holds it) | "failed" | "store unavailable". Never raises."""
        out: dict[str, str] = {}
        for job in jobs:
            at = now or datetime.now(UTC)
            try:
                won = self.leases.claim(job.name, self.holder, at, job.lease)
            except Exception as exc:  # noqa: BLE001 - the store is down: try again next tick
                log.warning("job %s: lease not claimed (%s)", job.name, type(exc).__name__)
                out[job.name] = "store unavailable"
                continue
            if not won:
                out[job.name] = "not due"
                continue
            out[job.name] = self._run(job, at, now)
        return out

    def _run(self, job: Job, at: datetime, driven: datetime | None) -> str:
        try:
            job.run(at)
        except Exception as exc:  # noqa: BLE001 - a failed run is retried on the next tick, by any node
            log.warning("job %s failed: %s", job.name, type(exc).__name__)
            try:
                self.leases.release(job.name, self.holder)
            except Exception:  # noqa: BLE001 - the lease then expires by itself
                pass
            _notify(job.name, "failed")
            return "failed"
        try:
            if not self.leases.finish(job.name, self.holder, at + job.period, driven or datetime.now(UTC)):
                log.warning("job %s outlived its lease; another holder may have run it too", job.name)
        except Exception as exc:  # noqa: BLE001 - the lease expires; the next holder repeats an idempotent run
            log.warning("job %s: lease not released (%s)", job.name, type(exc).__name__)
        _notify(job.name, "ran")
        return "ran"


def _notify(name: str, outcome: str) -> None:
    for hook in ON_RUN:
        try:
            hook(name, outcome)
        except Exception:  # noqa: BLE001 - metrics never break a job
            pass


def start_loop(runner: JobRunner, jobs: list[Job], tick: float, *, local: Callable[[], Any] | None = None,
               name: str = "kmsb-jobs") -> threading.Thread:
    """A daemon thread ticking every `tick` seconds: the leased jobs, then `local` (node-only upkeep, unleased)."""
    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(tick):
            runner.run_due(jobs)
            if local is not None:
                try:
                    local()
                except Exception as exc:  # noqa: BLE001 - upkeep failing must not kill the loop
                    log.warning("%s upkeep failed: %s", name, type(exc).__name__)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def leased_round(data_dir: Any, name: str, period: timedelta, run: Callable[[], Any],
                 now: datetime | None = None) -> str:
    """One round of a CLI schedule (`sync apply --every`, `backup create --every`) run on several nodes: `run`
    happens only if this node wins the job's lease for the period (`now`: the round's time, driven in tests).
    Returns what `JobRunner.run_due` says."""
    from broker.settings import load_settings
    from broker.store import Store
    from broker.store.leases import JobLeases

    settings = load_settings(data_dir)
    store = Store(settings.store_url)
    try:
        store.migrate()
        runner = JobRunner(JobLeases(store.engine), holder_id(settings.data_dir))
        return runner.run_due([Job(name, period, lambda _now: run())], now)[name]
    finally:
        store.dispose()


def schedule_tick(period: float) -> float:
    """How often a CLI schedule looks for its turn: often enough that another node takes over a dead one's period."""
    return max(1.0, min(period, 30.0))
