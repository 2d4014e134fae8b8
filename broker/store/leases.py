"""Job leases: the SQL that makes a background job run once per period across every process on the store.

A claim is one conditional UPDATE of the job's row: it succeeds only if the job is due (`next_due_at <= now`) and
no live holder has it (`lease_until` empty or past). The database serialises concurrent claims on the row (in
PostgreSQL the second UPDATE waits for the first to commit, then re-checks its WHERE and matches nothing; SQLite
has one writer at a time), so exactly one process wins. The winner moves `next_due_at` one period on only when it
finishes: a holder that dies mid-run leaves its lease to expire, and another node runs that period instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from broker.store.tables import JobLeaseRow

_T = JobLeaseRow.__table__
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class JobState:
    name: str
    holder: str
    lease_until: datetime | None
    next_due_at: datetime
    runs: int
    last_holder: str
    finished_at: datetime | None


class JobLeases:
    def __init__(self, engine) -> None:
        self.engine = engine

    def claim(self, name: str, holder: str, now: datetime, ttl: timedelta) -> bool:
        """Take the job if it is due and nobody live holds it; True if this holder runs it now."""
        self._ensure(name)
        with self.engine.begin() as conn:
            done = conn.execute(
                update(_T).where(_T.c.name == name, _T.c.next_due_at <= now,
                                 (_T.c.lease_until.is_(None)) | (_T.c.lease_until <= now))
                .values(holder=holder, lease_until=now + ttl, started_at=now))
        return done.rowcount == 1

    def finish(self, name: str, holder: str, next_due_at: datetime, now: datetime) -> bool:
        """The holder ran the job: release it and set when it is next due. False if the lease had been lost (it
        expired and another holder took it), in which case nothing is changed."""
        with self.engine.begin() as conn:
            done = conn.execute(
                update(_T).where(_T.c.name == name, _T.c.holder == holder)
                .values(holder="", lease_until=None, next_due_at=next_due_at, finished_at=now, runs=_T.c.runs + 1,
                        last_holder=holder))
        return done.rowcount == 1

    def release(self, name: str, holder: str) -> None:
        """The holder could not run the job (it failed): free it without moving its due time, so it is retried."""
        with self.engine.begin() as conn:
            conn.execute(update(_T).where(_T.c.name == name, _T.c.holder == holder)
                         .values(holder="", lease_until=None))

    def state(self, name: str) -> JobState | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(_T).where(_T.c.name == name)).first()
        if row is None:
            return None
        return JobState(row.name, row.holder, _utc(row.lease_until), _utc(row.next_due_at), row.runs,
                        row.last_holder, _utc(row.finished_at))

    def _ensure(self, name: str) -> None:
        with self.engine.connect() as conn:
            if conn.execute(select(_T.c.name).where(_T.c.name == name)).first() is not None:
                return
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(_T).values(name=name, holder="", next_due_at=_EPOCH, runs=0, last_holder=""))
        except IntegrityError:
            pass  # another process made it first
