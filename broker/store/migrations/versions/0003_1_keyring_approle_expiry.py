"""Keyring bridge AppRoles: secret ids expire (continues the keyring branch).

Secret ids that existed before get 30 days from this migration, so running databases can still log in while their
operators issue new ones with a chosen TTL.

Revision ID: 0003_1
Revises: 0003
"""
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0003_1"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("keyring_approles", sa.Column("secret_id_expires_at", sa.DateTime(timezone=True), nullable=True))
    roles = sa.table("keyring_approles", sa.column("secret_id_expires_at", sa.DateTime(timezone=True)))
    op.execute(roles.update().where(roles.c.secret_id_expires_at.is_(None))
               .values(secret_id_expires_at=datetime.now(UTC) + timedelta(days=30)))


def downgrade() -> None:
    with op.batch_alter_table("keyring_approles") as batch:
        batch.drop_column("secret_id_expires_at")
