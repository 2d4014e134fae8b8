"""Custodian sets and cluster nodes carry an HSM MAC (a row edited in the store is not trusted).

Revision ID: 0009_trust_macs
Revises: 0008_trust
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_trust_macs"
down_revision = "0008_trust"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("backup_custodian_sets", sa.Column("mac", sa.String(128), nullable=False, server_default=""))
    op.add_column("cluster_nodes", sa.Column("mac", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("cluster_nodes", "mac")
    op.drop_column("backup_custodian_sets", "mac")
