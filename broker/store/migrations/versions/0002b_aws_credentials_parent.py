"""SigV4 credentials die with their parent: the creating token's accessor, an own expiry, the creator's attributes.

Revision ID: 0002b_aws_credentials_parent
Revises: 0002_aws_credentials
"""
import sqlalchemy as sa
from alembic import op

revision = "0002b_aws_credentials_parent"
down_revision = "0002_aws_credentials"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("aws_credentials") as batch:
        batch.add_column(sa.Column("parent_accessor", sa.String(64), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attributes", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("aws_credentials") as batch:
        batch.drop_column("attributes")
        batch.drop_column("expires_at")
        batch.drop_column("parent_accessor")
