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


@dataclass(frozen=True)
class ChainStatus:
    """What a verification of this host's chain found: `verified_seq` is the last record whose chain, signatures
    and store copy held (None: nothing verified)."""

    ok: bool
    verified_seq: int | None
    signed_seq: int | None  # the last checkpoint whose HSM signature held
    report: dict[str, Any]


class AuditService(Service):
    def __init__(self, gate: Gate, settings: Any = None, root: Any = None) -> None:
        self.gate = gate
        self._settings, self._root = settings, root  # both None: a service built without a data folder (tests)

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

    @operation("broker:VerifyAudit", Need("broker:VerifyAudit", fixed("audit/chain")))
    def verify(self, call: Call) -> ChainStatus:
        """Verify this host's chain now, as `kms-broker audit verify --data-dir` does (file, store copy, the HSM's
        signing key and high-water mark). Reads the whole file: an auditor's action, not a health probe."""
        if self._settings is None or self._root is None:
            raise errors.Unsupported("this broker was built without a data folder: nothing to verify here")
        from broker.audit.host_verify import verify_host

        self.gate.audit.mirror_now()  # compare the copies as of now, not as of the mirror's last run
        report = verify_host(self._settings, lambda: self._root)
        head = report.head[0] if report.head else None
        call.entry.extra.update(verified_seq=head, chain_ok=report.ok)
        return ChainStatus(report.ok, head, report.signed_seq, report.as_dict())
