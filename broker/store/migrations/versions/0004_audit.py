"""Audit: the store copy of the audit chains (one per host's audit file), queryable by key, principal, action, outcome and time (a branch off 0001).

Revision ID: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0001"
branch_labels = ("audit",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("chain", sa.String(255), nullable=False, index=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("record_type", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True, index=True),
        sa.Column("principal", sa.String(256), nullable=True, index=True),
        sa.Column("auth_method", sa.String(32), nullable=True),
        sa.Column("source_ip", sa.String(64), nullable=True),
        sa.Column("action", sa.String(128), nullable=True, index=True),
        sa.Column("key_id", sa.String(64), nullable=True, index=True),
        sa.Column("outcome", sa.String(16), nullable=True, index=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("record", sa.Text, nullable=False),
        sa.UniqueConstraint("chain", "seq", name="uq_audit_events_chain_seq"),
    )


def downgrade() -> None:
    op.drop_table("audit_events")
