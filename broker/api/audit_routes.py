"""The auditor's view of the audit chain: GET /v1/audit/events, filtered and paginated (action broker:ReadAudit).

Parse the query, call the audit service, render: the service authorizes and audits the read itself."""

from __future__ import annotations

from typing import Literal

from flask import current_app
from pydantic import BaseModel, ConfigDict, Field

from broker.api.native import Ctx, Svc, op, parse_query
from broker.api.schemas import Timestamp


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str | None = Field(default=None, max_length=64, description="key id")
    principal: str | None = Field(default=None, max_length=256)
    action: str | None = Field(default=None, max_length=128, description="e.g. kms:Encrypt")
    outcome: Literal["allowed", "denied", "error", "pending", "interrupted"] | None = Field(
        default=None, description="pending: the intent of a state change; interrupted: closed after a crash")
    since: Timestamp | None = Field(default=None, description="RFC 3339, inclusive")
    until: Timestamp | None = Field(default=None, description="RFC 3339, exclusive")
    limit: int = Field(default=100, ge=1, le=1000)
    marker: str | None = Field(default=None, pattern=r"^[0-9]{1,18}$", description="NextMarker of the previous page")
    order: Literal["asc", "desc"] = "asc"
    checkpoints: bool = Field(default=False, description="include the signed checkpoint records")


@op("/audit/events", "GET", "ListAuditEvents",
    "Audit records from the store (?key, principal, action, outcome, since, until, limit, marker, order)",
    query=AuditQuery)
def list_audit_events(svc: Svc, ctx: Ctx):
    q: AuditQuery = parse_query()
    page = current_app.extensions["kms"].audit_reader.events(
        ctx, key_id=q.key, principal=q.principal, action=q.action, outcome=q.outcome, since=q.since, until=q.until,
        checkpoints=q.checkpoints, limit=q.limit, after=int(q.marker or 0), descending=q.order == "desc")
    out = {"Events": page.events, "Truncated": page.truncated}
    if page.next_marker is not None:
        out["NextMarker"] = page.next_marker
    return out


@op("/audit/verify", "GET", "VerifyAudit",
    "Verify this host's audit chain now: the file, the store copy, the HSM's signing key and high-water mark "
    "(action broker:VerifyAudit; reads the whole chain)")
def verify_audit(svc: Svc, ctx: Ctx):
    status = current_app.extensions["kms"].audit_reader.verify(ctx)
    return {"Ok": status.ok, "VerifiedSeq": status.verified_seq, "SignedSeq": status.signed_seq,
            "Report": status.report}
