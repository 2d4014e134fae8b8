"""The store side of quorum approvals, backup custodian sets and cluster nodes: the only SQL for them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from broker.store import Conflict, Store
from broker.store.tables import (
    ApprovalRequestRow,
    ApprovalRuleRow,
    ApprovalVoteRow,
    BackupCustodianSetRow,
    ClusterNodeRow,
)


def utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything here is aware UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _plain(row: Any) -> dict[str, Any]:
    out = {c.name: getattr(row, c.name) for c in row.__table__.columns}
    return {k: utc(v) if isinstance(v, datetime) else v for k, v in out.items()}


class TrustRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    # ------------------------------------------------------------------------------------------ approval rules

    def put_rule(self, **fields: Any) -> None:
        with self.store.session() as s:
            row = s.get(ApprovalRuleRow, fields["operation"])
            if row is None:
                s.add(ApprovalRuleRow(**fields))
            else:
                for k, v in fields.items():
                    setattr(row, k, v)

    def get_rule(self, operation: str) -> dict[str, Any] | None:
        with self.store.session() as s:
            row = s.get(ApprovalRuleRow, operation)
            return _plain(row) if row is not None else None

    def list_rules(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [_plain(r) for r in s.scalars(select(ApprovalRuleRow).order_by(ApprovalRuleRow.operation))]

    # ------------------------------------------------------------------------------------------ requests

    def add_request(self, **fields: Any) -> None:
        with self.store.session() as s:
            s.add(ApprovalRequestRow(**fields))

    def get_request(self, request_id: str) -> dict[str, Any] | None:
        with self.store.session() as s:
            row = s.get(ApprovalRequestRow, request_id)
            return _plain(row) if row is not None else None

    def list_requests(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = select(ApprovalRequestRow).order_by(ApprovalRequestRow.created_at.desc()).limit(limit)
        if state:
            query = query.where(ApprovalRequestRow.state == state)
        with self.store.session() as s:
            return [_plain(r) for r in s.scalars(query)]

    def set_quorum(self, request_id: str, at: datetime) -> None:
        with self.store.session() as s:
            s.execute(update(ApprovalRequestRow).where(ApprovalRequestRow.request_id == request_id,
                                                       ApprovalRequestRow.quorum_at.is_(None)).values(quorum_at=at))

    def close_request(self, request_id: str, state: str, by: str, at: datetime) -> bool:
        """pending -> state, once: False if another caller closed it first (execute runs at most once)."""
        with self.store.session() as s:
            done = s.execute(update(ApprovalRequestRow).where(
                ApprovalRequestRow.request_id == request_id, ApprovalRequestRow.state == "pending").values(
                state=state, closed_by=by, closed_at=at))
            return done.rowcount == 1

    def reopen(self, request_id: str) -> None:
        """Undo a claim whose execution failed before it had any effect (the request can be executed again)."""
        with self.store.session() as s:
            s.execute(update(ApprovalRequestRow).where(ApprovalRequestRow.request_id == request_id,
                                                       ApprovalRequestRow.state == "executing")
                      .values(state="pending", closed_by=None, closed_at=None))

    def finish(self, request_id: str) -> None:
        with self.store.session() as s:
            s.execute(update(ApprovalRequestRow).where(ApprovalRequestRow.request_id == request_id,
                                                       ApprovalRequestRow.state == "executing")
                      .values(state="executed"))

    # ------------------------------------------------------------------------------------------ votes

    def add_vote(self, **fields: Any) -> None:
        try:
            with self.store.session() as s:
                s.add(ApprovalVoteRow(**fields))
        except IntegrityError:
            raise Conflict("this approver has already voted on this request") from None

    def votes(self, request_id: str) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [_plain(r) for r in s.scalars(select(ApprovalVoteRow).where(
                ApprovalVoteRow.request_id == request_id).order_by(ApprovalVoteRow.at))]

    # ------------------------------------------------------------------------------------------ custodians

    def add_custodian_set(self, **fields: Any) -> None:
        with self.store.session() as s:
            s.execute(update(BackupCustodianSetRow).values(active=False))
            s.add(BackupCustodianSetRow(active=True, **fields))

    def active_custodian_set(self) -> dict[str, Any] | None:
        with self.store.session() as s:
            row = s.scalars(select(BackupCustodianSetRow).where(BackupCustodianSetRow.active.is_(True))).first()
            return _plain(row) if row is not None else None

    # ------------------------------------------------------------------------------------------ nodes

    def add_node(self, **fields: Any) -> None:
        try:
            with self.store.session() as s:
                s.add(ClusterNodeRow(**fields))
        except IntegrityError:
            raise Conflict(f"a node named {fields.get('name')!r} exists") from None

    def get_node(self, name: str) -> dict[str, Any] | None:
        with self.store.session() as s:
            row = s.get(ClusterNodeRow, name)
            return _plain(row) if row is not None else None

    def list_nodes(self) -> list[dict[str, Any]]:
        with self.store.session() as s:
            return [_plain(r) for r in s.scalars(select(ClusterNodeRow).order_by(ClusterNodeRow.name))]

    def update_node(self, name: str, **fields: Any) -> None:
        with self.store.session() as s:
            s.execute(update(ClusterNodeRow).where(ClusterNodeRow.name == name).values(**fields))
