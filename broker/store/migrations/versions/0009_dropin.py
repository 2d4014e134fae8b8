"""Drop-in AWS behaviour: how each key version came (ListKeyRotations' RotationType) (a branch off 0001).

Revision ID: 0009_dropin
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0009_dropin"
down_revision = "0001"
branch_labels = ("dropin",)
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("key_versions") as batch:
        batch.add_column(sa.Column("rotation_type", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("key_versions") as batch:
        batch.drop_column("rotation_type")
