"""Audit: the filtered event stream (live while watched), each record's detail, the chain's head and last signed
checkpoint, a JSON-lines export, and the activity charts — all read through the audit service, whose every read is
itself an audited operation (broker:ReadAudit)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Response, g, request, stream_with_context

from broker import errors
from broker.console import charts
from broker.console.web import NAV, bp, fragment, page, services, tr

NAV.extend([("console.audit", "nav.audit"), ("console.activity", "nav.charts")])
FILTERS = ("principal", "action", "key", "outcome", "since", "until")
OUTCOMES = ("allowed", "denied", "error", "pending", "interrupted")  # pending: a state change's intent record
EXPORT_LIMIT = 100_000


def _reader() -> Any:
    reader = getattr(services(), "audit_reader", None)
    if reader is None:
        raise errors.Unsupported(tr("audit.unavailable"))
    return reader


def _when(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise errors.ValidationError(tr("audit.bad_time", field=tr(f"audit.{name}"))) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _filters() -> dict[str, Any]:
    raw = {f: request.args.get(f, "").strip()[:256] for f in FILTERS}
    if raw["outcome"] and raw["outcome"] not in OUTCOMES:
        raise errors.ValidationError(tr("audit.bad_outcome"))
    return {"principal": raw["principal"] or None, "action": raw["action"] or None, "key_id": raw["key"] or None,
            "outcome": raw["outcome"] or None, "since": _when(raw["since"], "since"),
            "until": _when(raw["until"], "until")}


def _marker() -> int:
    value = request.args.get("marker", "")
    if value and not value.isdigit():
        raise errors.ValidationError(tr("audit.bad_marker"))
    return int(value or 0)


@bp.get("/audit")
def audit():
    values = {f: request.args.get(f, "")[:256] for f in FILTERS}
    result = _reader().events(g.ctx, **_filters(), limit=50, after=_marker(), descending=True)
    return page("audit.html", title=tr("audit.title"), result=result, values=values, outcomes=OUTCOMES,
                chain=_chain(), verified=_verified(), query=request.query_string.decode()[:2048],
                rows=_rows(result.events))


def _verified() -> dict[str, Any] | None:
    """On request (?verify=1): this node's chain verified now, as `kms-broker audit verify --data-dir` would."""
    if request.args.get("verify") != "1":
        return None
    try:
        status = _reader().verify(g.ctx)
    except errors.AccessDenied:
        return {"denied": True}
    except errors.Unsupported:
        return {"unavailable": True}
    return {"ok": status.ok, "seq": status.verified_seq, "signed": status.signed_seq,
            "problems": [p["message"] for p in status.report["problems"]], "omitted": status.report["omitted"]}


@bp.get("/audit/rows")
def audit_rows():
    """The first page of the stream as table rows only (what the live view swaps in)."""
    result = _reader().events(g.ctx, **_filters(), limit=50, descending=True)
    return fragment("_audit_rows.html", rows=_rows(result.events))


def _rows(events: list[dict]) -> list[dict]:
    return [{"record": e, "pretty": json.dumps(e, indent=2, sort_keys=True)} for e in events]


def _chain() -> dict[str, Any]:
    """The newest record and the newest signed checkpoint the store holds."""
    page_ = _reader().events(g.ctx, checkpoints=True, limit=200, descending=True)
    head = page_.events[0] if page_.events else None
    checkpoint = next((e for e in page_.events if e.get("type", "").startswith("checkpoint")), None)
    return {"head": head, "checkpoint": checkpoint}


@bp.get("/audit/export.jsonl")
def audit_export():
    """Every matching record, oldest first, one JSON object per line (each page read is audited)."""
    filters, reader, ctx = _filters(), _reader(), g.ctx
    first = reader.events(ctx, **filters, limit=1000, after=0)

    def lines() -> Iterator[str]:
        page_, sent = first, 0
        while True:
            for event in page_.events:
                yield json.dumps(event, sort_keys=True) + "\n"
            sent += len(page_.events)
            if page_.next_marker is None or sent >= EXPORT_LIMIT:
                return
            page_ = reader.events(ctx, **filters, limit=1000, after=int(page_.next_marker))

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(stream_with_context(lines()), mimetype="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.jsonl"'})


@bp.get("/activity")
def activity():
    end = datetime.now(UTC)
    records: list[dict] = []
    result = _reader().events(g.ctx, since=end - timedelta(minutes=30), limit=1000)
    while True:
        records += result.events
        if result.next_marker is None or len(records) >= 20_000:
            break
        result = _reader().events(g.ctx, since=end - timedelta(minutes=30), limit=1000,
                                  after=int(result.next_marker))
    figures = [charts.requests_per_minute(records, end, title=tr("charts.rpm")),
               charts.latency(records, end, title=tr("charts.latency")),
               charts.top_counts(charts.key_counts(records), tr("charts.top_keys"), tr("field.key"), "o-allowed"),
               charts.top_counts(charts.provider_errors(records), tr("charts.provider_errors"),
                                 tr("field.provider"), "o-error")]
    return page("activity.html", title=tr("charts.title"), figures=figures, total=len(records))


def recent_for_key(key_id: str, limit: int = 10) -> list[dict] | None:
    """The key page's recent events, when the caller may read the audit log (None otherwise)."""
    reader = getattr(services(), "audit_reader", None)
    if reader is None:
        return None
    try:
        return reader.events(g.ctx, key_id=key_id, limit=limit, descending=True).events
    except errors.AccessDenied:
        return None
