"""AuditService: reading the audit log is itself a declared operation (broker:ReadAudit on audit/events), audited
like any other, so who looked at the record of whom is on the record too."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker import errors
from broker.audit.query import AuditFilter
from broker.gate import Call, Gate, Need, Service, fixed, operation

OUTCOMES = ("allowed", "denied", "error", "pending", "interrupted")


@dataclass(frozen=True)
class AuditPage:
    """One page of records in store order; `next_marker` continues after it (None: the last page)."""

    events: list[dict[str, Any]]
    truncated: bool
    next_marker: str | None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise errors.ValidationError("since/until need a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(UTC)


class AuditService(Service):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    @operation("broker:ReadAudit", Need("broker:ReadAudit", fixed("audit/events")))
    def events(self, call: Call, *, key_id: str | None = None, principal: str | None = None,
               action: str | None = None, outcome: str | None = None, since: datetime | None = None,
               until: datetime | None = None, checkpoints: bool = False, limit: int = 100, after: int = 0,
               descending: bool = False) -> AuditPage:
        """Records of the store copy, filtered (every chain of every host sharing the store)."""
        if outcome is not None and outcome not in OUTCOMES:
            raise errors.ValidationError(f"outcome must be one of {', '.join(OUTCOMES)}")
        if not 1 <= limit <= 1000 or after < 0:
            raise errors.ValidationError("limit is 1 to 1000, marker a NextMarker")
        flt = AuditFilter(key_id=key_id, principal=principal, action=action, outcome=outcome, since=_utc(since),
                          until=_utc(until), include_checkpoints=checkpoints)
        page = self.gate.audit.query(flt, limit=limit, after=after, descending=descending)
        return AuditPage(page["Events"], page["Truncated"], page.get("NextMarker"))
