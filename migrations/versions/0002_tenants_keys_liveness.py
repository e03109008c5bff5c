"""tenants and API keys; jobs and uploads belong to a tenant; leases, deadlines and lost-worker counts

Rows that exist before this revision go to a tenant named 'default' (created only if there are any);
`alignahead-admin keys create --tenant default` gives their owner a key.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 08:00:00

"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite's unique constraint of 0001 has no name; batch mode finds it through this convention
SQLITE_NAMES = {"uq": "uq_%(table_name)s_%(column_0_name)s"}


def _old_idempotency_unique() -> str:
    return "jobs_idempotency_key_key" if op.get_bind().dialect.name == "postgresql" else "uq_jobs_idempotency_key"


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("bucket_tokens", sa.Float(), nullable=True),
        sa.Column("bucket_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("tenant_id", sa.String(length=32), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_api_keys_tenant_id"), ["tenant_id"], unique=False)

    conn = op.get_bind()
    owned = conn.execute(sa.text("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM uploads)")).scalar()
    default_id = None
    if owned:
        default_id = uuid.uuid4().hex
        conn.execute(
            sa.text("INSERT INTO tenants (id, name, created_at) VALUES (:id, 'default', :now)"),
            {"id": default_id, "now": datetime.now(UTC).replace(tzinfo=None)},
        )

    with op.batch_alter_table("jobs", schema=None, naming_convention=SQLITE_NAMES) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("progress_until", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("time_limit_seconds", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("deadline_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("worker_losses", sa.Integer(), nullable=True))
        batch_op.drop_constraint(_old_idempotency_unique(), type_="unique")
        batch_op.drop_index("ix_jobs_created")
    conn.execute(
        sa.text("UPDATE jobs SET tenant_id = :t, worker_losses = 0, time_limit_seconds = 172800"), {"t": default_id}
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column("worker_losses", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("time_limit_seconds", existing_type=sa.Float(), nullable=False)
        batch_op.create_foreign_key("fk_jobs_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
        batch_op.create_unique_constraint("uq_jobs_tenant_idempotency_key", ["tenant_id", "idempotency_key"])
        batch_op.create_index("ix_jobs_tenant_created", ["tenant_id", "created_at", "id"], unique=False)
        batch_op.create_index("ix_jobs_tenant_status_created", ["tenant_id", "status", "created_at", "id"], unique=False)

    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tenant_id", sa.String(length=32), nullable=True))
        batch_op.drop_index("ix_uploads_created")
    conn.execute(sa.text("UPDATE uploads SET tenant_id = :t"), {"t": default_id})
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.alter_column("tenant_id", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_foreign_key("fk_uploads_tenant_id_tenants", "tenants", ["tenant_id"], ["id"])
        batch_op.create_index("ix_uploads_tenant_created", ["tenant_id", "created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("uploads", schema=None) as batch_op:
        batch_op.drop_index("ix_uploads_tenant_created")
        batch_op.drop_constraint("fk_uploads_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_column("tenant_id")
        batch_op.create_index("ix_uploads_created", ["created_at", "id"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_status_created")
        batch_op.drop_index("ix_jobs_tenant_created")
        batch_op.drop_constraint("uq_jobs_tenant_idempotency_key", type_="unique")
        batch_op.drop_constraint("fk_jobs_tenant_id_tenants", type_="foreignkey")
        batch_op.drop_column("worker_losses")
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("time_limit_seconds")
        batch_op.drop_column("progress_until")
        batch_op.drop_column("lease_until")
        batch_op.drop_column("tenant_id")
        batch_op.create_index("ix_jobs_created", ["created_at", "id"], unique=False)
        # fails, as it should, where two tenants used the same Idempotency-Key
        batch_op.create_unique_constraint(_old_idempotency_unique(), ["idempotency_key"])

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_keys_tenant_id"))
    op.drop_table("api_keys")
    op.drop_table("tenants")
