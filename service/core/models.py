"""The job database: jobs, their metric rows, checkpoints and resumable state, and uploaded datasets.

Binary payloads (checkpoints, training state, uploads) live in the database itself so that workers on
any machine and the API share nothing but the database. Those columns are deferred: listings never
load them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.core.db import UTCDateTime

# An autoincrementing 64-bit key that SQLite also autoincrements (it only does so for INTEGER).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def int_column_max(column: Any) -> int:
    """The largest value an integer column holds on every backend: what a request parameter compared
    with it may be (PostgreSQL refuses a larger one as out of range, a 500; SQLite's are all 64-bit)."""
    return 2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1


def utcnow() -> datetime:
    """This process's clock: only for stamps nobody compares across processes (see service.core.db.db_now)."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Tenant(Base):
    """Who owns jobs and uploads. Also holds the submission rate bucket, so that one row lock
    serialises a tenant's submissions (limits are checked and spent atomically)."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    bucket_tokens: Mapped[float | None] = mapped_column(Float)  # submissions left; refills per minute
    bucket_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # database clock of the last refill


class ApiKey(Base):
    """A key is `alh_<id>_<secret>`; only the HMAC-SHA256 of the whole key under the server secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # public: shown by `keys list`
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_jobs_tenant_status_created", "tenant_id", "status", "created_at", "id"),
        Index("ix_jobs_status_created", "status", "created_at", "id"),  # the sweeps
        Index("ix_jobs_tenant_name_created", "tenant_id", "name", "created_at", "id"),  # ?name=
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))  # an alignahead.enums.JobStatus
    queue: Mapped[str] = mapped_column(String(16))  # an alignahead.enums.Queue, without the deployment prefix
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    upload_id: Mapped[str | None] = mapped_column(String(32), index=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))

    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Liveness, all on the database's clock (service.core.jobcore holds the rule): the owner renews
    # lease_until with every heartbeat and progress_until with every finished epoch; past either, the
    # job is taken back. deadline_at: the wall-clock limit, fixed when the job first starts.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    progress_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    time_limit_seconds: Mapped[float] = mapped_column(Float)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # Which delivery owns a running job: every write of a worker is fenced by this token, so a worker
    # that was presumed dead and replaced can never write over its successor's rows.
    claim_token: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(200))
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims that started (or resumed) it
    worker_losses: Mapped[int] = mapped_column(Integer, default=0)  # times taken back from a dead worker
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    epochs_total: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(Text)  # why a succeeded job ended early
    result: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)  # per-student summaries at the end
    study_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("studies.id", name="fk_jobs_study_id_studies"), index=True
    )
    # the X-Request-ID of the request that submitted it (service.core.logs): its workers' log lines carry it
    request_id: Mapped[str | None] = mapped_column(String(128))


class Study(Base):
    """A base spec run over seeds and a grid of spec values: one ordinary job per combination and seed
    (jobs.study_id). The axes keep the values as the validated specs hold them, in the order given."""

    __tablename__ = "studies"
    __table_args__ = (Index("ix_studies_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the base spec, as submitted
    seeds: Mapped[list[int]] = mapped_column(JSON)
    axes: Mapped[dict[str, list[Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (
        UniqueConstraint("job_id", "epoch", "student", name="uq_metrics_job_epoch_student"),
        Index("ix_metrics_job_seq", "job_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)  # the polling sequence
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    epoch: Mapped[int] = mapped_column(Integer)
    student: Mapped[int] = mapped_column(Integer)
    loss: Mapped[float] = mapped_column(Float)
    task_loss: Mapped[float] = mapped_column(Float)
    distill_loss: Mapped[float] = mapped_column(Float)
    train_score: Mapped[float | None] = mapped_column(Float)
    val_score: Mapped[float | None] = mapped_column(Float)
    test_score: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobTag(Base):
    """A job's tags (spec `tags`), a row each, so that `GET /v1/jobs?tag=` is an index lookup."""

    __tablename__ = "job_tags"
    __table_args__ = (Index("ix_job_tags_tag", "tag", "job_id"),)

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class JobLog(Base):
    """A log line of a job, captured by its worker. `seq` numbers a job's lines 1, 2, ... over all its
    attempts; lines dropped by the cap (job_log_max_lines) leave a gap in it."""

    __tablename__ = "job_logs"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_job_logs_job_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime())  # the worker's clock when the line was logged
    level: Mapped[str] = mapped_column(String(10))
    logger: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "student", "kind", name="uq_checkpoints_job_student_kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"))
    student: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(8))  # an alignahead.enums.CheckpointKind
    epoch: Mapped[int] = mapped_column(Integer)
    score: Mapped[float | None] = mapped_column(Float)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JobState(Base):
    """The latest full training state of a running job, to resume after a worker dies."""

    __tablename__ = "job_states"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Upload(Base):
    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_tenant_created", "tenant_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), ForeignKey("tenants.id"))
    filename: Mapped[str | None] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)  # what inspect_npz found
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
