"""Initial schema: keys, versions, aliases, tags, import tokens, auth tokens.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("provider", sa.String(64), nullable=False, index=True),
        sa.Column("spec", sa.String(32), nullable=False),
        sa.Column("usage", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False, index=True),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("primary_version", sa.Integer, nullable=False),
        sa.Column("deletion_date", TZ, nullable=True, index=True),
        sa.Column("rotation_period_days", sa.Integer, nullable=True),
        sa.Column("next_rotation_at", TZ, nullable=True, index=True),
    )
    op.create_table(
        "key_versions",
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("provider_ref", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
    )
    op.create_table(
        "aliases",
        sa.Column("name", sa.String(256), primary_key=True),
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), nullable=False, index=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "key_tags",
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), primary_key=True),
        sa.Column("tag_key", sa.String(128), primary_key=True),
        sa.Column("tag_value", sa.String(256), nullable=False),
    )
    op.create_table(
        "import_tokens",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(64), sa.ForeignKey("keys.key_id"), nullable=False, index=True),
        sa.Column("handle", sa.Text, nullable=False),
        sa.Column("wrapping_algorithm", sa.String(64), nullable=False),
        sa.Column("expires_at", TZ, nullable=False),
    )
    op.create_table(
        "auth_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("accessor", sa.String(64), nullable=False, unique=True),
        sa.Column("display_name", sa.String(256), nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("parent_accessor", sa.String(64), nullable=True, index=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
    )


def downgrade() -> None:
    for table in ("auth_tokens", "import_tokens", "key_tags", "aliases", "key_versions", "keys"):
        op.drop_table(table)
