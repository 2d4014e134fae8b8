"""Read the store copy of the audit chains: filters and pages (in store order) for the auditor's API."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from broker.store.tables import AuditEventRow


@dataclass(frozen=True)
class AuditFilter:
    key_id: str | None = None
    principal: str | None = None
    action: str | None = None
    outcome: str | None = None
    since: datetime | None = None   # inclusive
    until: datetime | None = None   # exclusive
    include_checkpoints: bool = False


def query_events(engine: Engine, flt: AuditFilter, *, limit: int = 100, after: int = 0,
                 descending: bool = False) -> dict[str, Any]:
    """One page of records in the order they were stored (all hosts' chains); `NextMarker` continues after it."""
    t = AuditEventRow.__table__
    stmt = select(t.c.id, t.c.record)
    if not flt.include_checkpoints:
        stmt = stmt.where(t.c.record_type == "event")
    for column, value in ((t.c.key_id, flt.key_id), (t.c.principal, flt.principal), (t.c.action, flt.action),
                          (t.c.outcome, flt.outcome)):
        if value is not None:
            stmt = stmt.where(column == value)
    if flt.since is not None:
        stmt = stmt.where(t.c.time >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(t.c.time < flt.until)
    if after:
        stmt = stmt.where(t.c.id < after if descending else t.c.id > after)
    stmt = stmt.order_by(t.c.id.desc() if descending else t.c.id).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    page = rows[:limit]
    out: dict[str, Any] = {"Events": [json.loads(r.record) for r in page], "Truncated": len(rows) > limit}
    if len(rows) > limit:
        out["NextMarker"] = str(page[-1].id)
    return out
