"""Background jobs: one lease row per job, so each runs once per period across every node on the store (a branch
off 0001).

Revision ID: 0010_jobs
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_jobs"
down_revision = "0001"
branch_labels = ("jobs",)
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "job_leases",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False, server_default=""),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("next_due_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("runs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_holder", sa.String(255), nullable=False, server_default=""),
    )


def downgrade() -> None:
    op.drop_table("job_leases")
