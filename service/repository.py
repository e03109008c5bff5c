"""Persistence functions behind the API routes: each takes a Session and does one thing.

Status changes are single conditional UPDATEs (`... WHERE status = 'queued'`), so the API and the
workers can race without locks and exactly one of them wins.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.orm import Session

from alignahead.spec import JobSpec
from service.errors import Conflict, NotFound
from service.models import (
    ACTIVE,
    FINISHED,
    CheckpointRow,
    Job,
    JobState,
    MetricRow,
    Upload,
    utcnow,
)
from service.pagination import decode_cursor, encode_cursor


def new_id() -> str:
    return uuid.uuid4().hex


def queue_for(spec: JobSpec) -> str:
    return "gpu" if spec.training.device == "cuda" else "cpu"


# --- jobs -----------------------------------------------------------------------------------------


def create_job(session: Session, spec: JobSpec, idempotency_key: str | None = None) -> tuple[Job, bool]:
    """Store a queued job; returns (job, created). A repeated Idempotency-Key returns the first job."""
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.idempotency_key == idempotency_key))
        if existing is not None:
            return _same_request(existing, spec), False
    job = Job(
        id=new_id(),
        name=spec.name,
        status="queued",
        queue=queue_for(spec),
        spec=spec.model_dump(mode="json"),
        upload_id=spec.dataset.upload_id,
        idempotency_key=idempotency_key,
        created_at=utcnow(),
        attempts=0,
        epochs_done=0,
        epochs_total=spec.training.epochs,
    )
    session.add(job)
    session.flush()  # IntegrityError: a concurrent request with the same key won; the caller retries
    return job, True


def _same_request(job: Job, spec: JobSpec) -> Job:
    if JobSpec.model_validate(job.spec) != spec:
        raise Conflict(
            f"Idempotency-Key already used for job {job.id} with a different spec; use a new key for a new job"
        )
    return job


def mark_enqueued(session: Session, job_id: str) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))


def get_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job with id {job_id!r}; list jobs with GET /v1/jobs")
    return job


def list_jobs(
    session: Session, *, status: str | None, limit: int, cursor: str | None
) -> tuple[Sequence[Job], str | None]:
    """Newest first; the cursor is the last row of the previous page."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Job.status == status)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id)))
    rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


def request_cancel(session: Session, job_id: str, stale_after_seconds: float) -> Job:
    """Queued: cancelled at once (it never starts). Running: flagged; its worker stops at the next step
    and marks it cancelled, keeping the metrics and checkpoints stored so far."""
    job = get_job(session, job_id)
    if job.status in FINISHED:
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    now = utcnow()
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", finished_at=now, cancel_requested_at=now)
    )
    if queued.rowcount == 0:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.cancel_requested_at.is_(None))
            .values(cancel_requested_at=now)
        )
    session.refresh(job)
    if job.status == "running" and _is_stale(job, stale_after_seconds):
        # its worker is gone, so nobody would ever acknowledge the request: settle it here
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running", Job.claim_token == job.claim_token)
            .values(status="cancelled", finished_at=now, claim_token=None)
        )
        session.refresh(job)
    elif job.status in FINISHED and queued.rowcount == 0:  # it finished while we looked
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    return job


def _is_stale(job: Job, stale_after_seconds: float) -> bool:
    beat = job.heartbeat_at or job.started_at
    return beat is None or beat < utcnow() - timedelta(seconds=stale_after_seconds)


def delete_job(session: Session, job_id: str) -> None:
    job = get_job(session, job_id)
    if job.status not in FINISHED:
        raise Conflict(
            f"job {job_id} is {job.status}; only finished jobs can be deleted. "
            f"Cancel it first with POST /v1/jobs/{job_id}/cancel"
        )
    # children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on
    for model in (MetricRow, CheckpointRow, JobState):
        session.execute(delete(model).where(model.job_id == job_id))
    session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED)))


# --- metrics and checkpoints ------------------------------------------------------------------------


def list_metrics(session: Session, job_id: str, *, since: int, student: int | None, limit: int) -> Sequence[MetricRow]:
    get_job(session, job_id)
    query = (
        select(MetricRow).where(MetricRow.job_id == job_id, MetricRow.id > since).order_by(MetricRow.id).limit(limit)
    )
    if student is not None:
        query = query.where(MetricRow.student == student)
    return session.scalars(query).all()


def list_checkpoints(session: Session, job_id: str) -> Sequence[CheckpointRow]:
    get_job(session, job_id)
    return session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.student, CheckpointRow.kind)
    ).all()


def get_checkpoint(session: Session, job_id: str, student: int, kind: str) -> CheckpointRow:
    """The checkpoint's metadata (its bytes stay unloaded)."""
    get_job(session, job_id)
    row = session.scalar(
        select(CheckpointRow).where(
            CheckpointRow.job_id == job_id, CheckpointRow.student == student, CheckpointRow.kind == kind
        )
    )
    if row is None:
        raise NotFound(
            f"job {job_id} has no {kind!r} checkpoint for student {student} (yet); "
            f"see GET /v1/jobs/{job_id}/checkpoints"
        )
    return row


def checkpoint_data(session: Session, job_id: str, student: int, kind: str) -> tuple[str, bytes]:
    """(sha256, bytes) read together, so the hash always matches the bytes even if a worker just
    replaced the checkpoint."""
    row = session.execute(
        select(CheckpointRow.sha256, CheckpointRow.data).where(
            CheckpointRow.job_id == job_id, CheckpointRow.student == student, CheckpointRow.kind == kind
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"job {job_id} has no {kind!r} checkpoint for student {student}")
    return row[0], row[1]


# --- uploads --------------------------------------------------------------------------------------


def create_upload(session: Session, data: bytes, filename: str | None, summary: dict[str, Any]) -> Upload:
    upload = Upload(
        id=new_id(),
        filename=filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        summary=summary,
        data=data,
        created_at=utcnow(),
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None:
        raise NotFound(f"no uploaded dataset with id {upload_id!r}; list uploads with GET /v1/datasets")
    return upload


def upload_exists(session: Session, upload_id: str) -> bool:
    return bool(session.scalar(select(exists().where(Upload.id == upload_id))))


def list_uploads(session: Session, *, limit: int, cursor: str | None) -> tuple[Sequence[Upload], str | None]:
    query = select(Upload).order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit + 1)
    if cursor is not None:
        created_at, upload_id = decode_cursor(cursor)
        query = query.where(
            or_(Upload.created_at < created_at, and_(Upload.created_at == created_at, Upload.id < upload_id))
        )
    rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


def delete_upload(session: Session, upload_id: str) -> None:
    get_upload(session, upload_id)
    users = session.scalars(select(Job.id).where(Job.upload_id == upload_id, Job.status.in_(ACTIVE)).limit(5)).all()
    if users:
        raise Conflict(
            f"upload {upload_id} is used by job(s) still queued or running: {', '.join(users)}; "
            "wait for them to finish or cancel them first"
        )
    session.execute(delete(Upload).where(Upload.id == upload_id))
