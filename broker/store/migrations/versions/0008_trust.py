"""Cluster and recovery: quorum approvals, backup custodian sets, cluster nodes (a branch off 0001).

Revision ID: 0008_trust
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0008_trust"
down_revision = "0001"
branch_labels = ("trust",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approval_rules",
        sa.Column("operation", sa.String(64), primary_key=True),
        sa.Column("approvers", sa.Text, nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("cooling_off_seconds", sa.Integer, nullable=False),
        sa.Column("ttl_seconds", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "approval_requests",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("operation", sa.String(64), nullable=False, index=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("requester", sa.String(256), nullable=False),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("approvers", sa.Text, nullable=False),
        sa.Column("cooling_off_seconds", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
        sa.Column("quorum_at", TZ, nullable=True),
        sa.Column("closed_at", TZ, nullable=True),
        sa.Column("closed_by", sa.String(256), nullable=True),
        sa.Column("mac", sa.String(128), nullable=False),
    )
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("approver", sa.String(256), primary_key=True),
        sa.Column("vote", sa.String(16), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("mac", sa.String(128), nullable=False),
    )
    op.create_table(
        "backup_custodian_sets",
        sa.Column("set_id", sa.String(64), primary_key=True),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("sealed_private_key", sa.Text, nullable=False),
        sa.Column("threshold", sa.Integer, nullable=False),
        sa.Column("shares", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "cluster_nodes",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("transport_key", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("package", sa.Text, nullable=False, server_default=""),
        sa.Column("fingerprint", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("cluster_nodes", "backup_custodian_sets", "approval_votes", "approval_requests", "approval_rules"):
        op.drop_table(table)
