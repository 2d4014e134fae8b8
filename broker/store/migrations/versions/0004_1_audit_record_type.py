"""Audit: `record_type` holds "checkpoint-deferred" (19 characters), which PostgreSQL refused in a VARCHAR(16): the
batch with an HSM-outage checkpoint failed and its requests were refused (continues the audit branch).

Revision ID: 0004_1
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_1"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("record_type", existing_type=sa.String(16), type_=sa.String(32), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.alter_column("record_type", existing_type=sa.String(32), type_=sa.String(16), existing_nullable=False)
