"""Policies: named identity policies, key policies, grants.

Revision ID: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0001"
branch_labels = ("policy",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "policies",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "key_policies",
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("grant_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), nullable=False, index=True),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("grantee", sa.String(256), nullable=False),
        sa.Column("retiring", sa.String(256), nullable=False),
        sa.Column("operations", sa.Text, nullable=False),
        sa.Column("constraints", sa.Text, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("grants", "key_policies", "policies"):
        op.drop_table(table)
