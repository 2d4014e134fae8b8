"""Vault KV v2 conventions on the keyring bridge: per-version soft delete and destroy (after 0009_dropin).

Revision ID: 0010_dropin_kv
Revises: 0009_dropin
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_dropin_kv"
down_revision = "0009_dropin"
branch_labels = None
depends_on = "0003"


def upgrade() -> None:
    with op.batch_alter_table("keyring_versions") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("destroyed", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("keyring_versions") as batch:
        batch.drop_column("destroyed")
        batch.drop_column("deleted_at")
