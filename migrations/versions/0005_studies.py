"""studies: a base spec over seeds and a grid of spec values; jobs.study_id ties each job to its study

Chained after 0004 (job logs) when main was merged in.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 04:30:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("seeds", sa.JSON(), nullable=False),
        sa.Column("axes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_studies_tenant_created", "studies", ["tenant_id", "created_at", "id"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("study_id", sa.String(length=32), nullable=True))
        batch.create_index("ix_jobs_study_id", ["study_id"], unique=False)
        batch.create_foreign_key("fk_jobs_study_id_studies", "studies", ["study_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_study_id_studies", type_="foreignkey")
        batch.drop_index("ix_jobs_study_id")
        batch.drop_column("study_id")
    op.drop_index("ix_studies_tenant_created", table_name="studies")
    op.drop_table("studies")
