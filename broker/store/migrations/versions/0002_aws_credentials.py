"""SigV4 credentials of the AWS-compatible front door: the secret is stored only sealed under the root KEK.

Revision ID: 0002_aws_credentials
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002_aws_credentials"
down_revision = "0001"
branch_labels = ("aws_credentials",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "aws_credentials",
        sa.Column("access_key_id", sa.String(32), primary_key=True),
        sa.Column("sealed_secret", sa.Text, nullable=False),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("created_by", sa.String(256), nullable=False),
        sa.Column("revoked_at", TZ, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("aws_credentials")
