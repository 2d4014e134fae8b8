"""Replication: multi-keys (envelope keyrings), replicated-key copies, the sync apply journal (a branch off 0001).

Revision ID: 0007_replication
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_replication"
down_revision = "0001"
branch_labels = ("replication",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "multikeys",
        sa.Column("multikey_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(256), nullable=False, unique=True),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("members", sa.Text, nullable=False),
        sa.Column("quorum", sa.Integer, nullable=True),
        sa.Column("generation", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "key_replicas",
        sa.Column("primary_key_id", sa.String(64), primary_key=True),
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("replica_key_id", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "sync_journal",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("manifest", sa.String(128), nullable=False, index=True),
        sa.Column("entry", sa.String(256), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False, index=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("provider_ref", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sync_journal")
    op.drop_table("key_replicas")
    op.drop_table("multikeys")
