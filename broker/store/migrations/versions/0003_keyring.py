"""Keyring bridge: mounts, entries, sealed versions, AppRoles (a branch off 0001).

Revision ID: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("keyring",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "keyring_mounts",
        sa.Column("mount", sa.String(255), primary_key=True),
        sa.Column("kv_version", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )
    op.create_table(
        "keyring_entries",
        sa.Column("mount", sa.String(255), primary_key=True),
        sa.Column("entry_id", sa.String(512), primary_key=True),
        sa.Column("latest_version", sa.Integer, nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("custom_metadata", sa.Text, nullable=False),
        sa.Column("rotation_period_seconds", sa.Integer, nullable=True),
        sa.Column("next_rotation_at", TZ, nullable=True, index=True),
    )
    op.create_table(
        "keyring_versions",
        sa.Column("mount", sa.String(255), primary_key=True),
        sa.Column("entry_id", sa.String(512), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("sealed", sa.Text, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.ForeignKeyConstraint(["mount", "entry_id"], ["keyring_entries.mount", "keyring_entries.entry_id"]),
    )
    op.create_table(
        "keyring_approles",
        sa.Column("role_name", sa.String(128), primary_key=True),
        sa.Column("role_id", sa.String(64), nullable=False, unique=True),
        sa.Column("secret_id_hash", sa.String(64), nullable=False),
        sa.Column("policies", sa.Text, nullable=False),
        sa.Column("token_ttl_seconds", sa.Integer, nullable=True),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("keyring_approles", "keyring_versions", "keyring_entries", "keyring_mounts"):
        op.drop_table(table)
