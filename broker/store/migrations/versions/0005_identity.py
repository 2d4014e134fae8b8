"""Identity: token details (renewal, metadata, auth method), JWT roles, AppRole roles and secret ids.

Revision ID: 0005
Branch: identity (off 0001)
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0001"
branch_labels = ("identity",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "identity_tokens",
        sa.Column("accessor", sa.String(64), primary_key=True),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("renewable", sa.Boolean, nullable=False),
        sa.Column("ttl_seconds", sa.Integer, nullable=True),
        sa.Column("max_expires_at", TZ, nullable=True),
        sa.Column("meta", sa.Text, nullable=False),
    )
    op.create_table(
        "auth_jwt_roles",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "auth_approle_roles",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("role_id", sa.String(64), nullable=False, unique=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    op.create_table(
        "auth_approle_secret_ids",
        sa.Column("secret_hash", sa.String(64), primary_key=True),
        sa.Column("accessor", sa.String(64), nullable=False, unique=True),
        sa.Column("role_name", sa.String(128), nullable=False, index=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("uses_left", sa.Integer, nullable=True),
        sa.Column("cidrs", sa.Text, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auth_approle_secret_ids")
    op.drop_table("auth_approle_roles")
    op.drop_table("auth_jwt_roles")
    op.drop_table("identity_tokens")
