"""The auditor's view of the audit chain: GET /v1/audit/events, filtered and paginated (action broker:ReadAudit)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from broker.api.native import Ctx, Svc, op, parse_query
from broker.api.schemas import Timestamp
from broker.audit.query import AuditFilter
from broker.errors import ValidationError


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(default=None, max_length=64, description="key id")
    principal: str | None = Field(default=None, max_length=256)
    action: str | None = Field(default=None, max_length=128, description="e.g. kms:Encrypt")
    outcome: Literal["allowed", "denied", "error"] | None = None
    since: Timestamp | None = Field(default=None, description="RFC 3339, inclusive")
    until: Timestamp | None = Field(default=None, description="RFC 3339, exclusive")
    limit: int = Field(default=100, ge=1, le=1000)
    marker: str | None = Field(default=None, pattern=r"^[0-9]{1,18}$", description="NextMarker of the previous page")
    order: Literal["asc", "desc"] = "asc"
    checkpoints: bool = Field(default=False, description="include the signed checkpoint records")


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValidationError("since/until need a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(UTC)


@op("/audit/events", "GET", "ListAuditEvents",
    "Audit records from the store (?key, principal, action, outcome, since, until, limit, marker, order)",
    query=AuditQuery)
def list_audit_events(svc: Svc, ctx: Ctx):
    q: AuditQuery = parse_query()
    with svc.operation(ctx, "broker:ReadAudit") as entry:
        svc.authorize(ctx, entry, "broker:ReadAudit", None, resource="audit/events")
        flt = AuditFilter(key_id=q.key, principal=q.principal, action=q.action, outcome=q.outcome,
                          since=_utc(q.since), until=_utc(q.until), include_checkpoints=q.checkpoints)
        return svc.audit.query(flt, limit=q.limit, after=int(q.marker or 0), descending=q.order == "desc")
