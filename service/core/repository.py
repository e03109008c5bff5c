"""Persistence behind the API routes: each function takes a Session and a tenant and does one thing.

Everything is scoped to the tenant: another tenant's job or upload is simply not found (404), never
"forbidden", so ids leak nothing. State changes of jobs go through service.core.jobcore.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from alignahead.enums import ACTIVE, JobStatus
from alignahead.spec import JobSpec
from service.core import jobcore, quota
from service.core.db import db_time
from service.core.errors import Conflict, Invalid, NotFound
from service.core.models import CheckpointRow, Job, JobLog, JobTag, MetricRow, Study, Upload
from service.core.pagination import decode_cursor, encode_cursor

# --- ids and their prefixes ------------------------------------------------------------------------

ID_LENGTH = 32  # uuid4 hex, jobs' and studies' alike
MIN_PREFIX = 6  # as git and docker: short enough to type, long enough to be unique in practice
_HEX = frozenset("0123456789abcdef")


def is_prefix(text: str) -> bool:
    """Whether `text` is to be looked up as the start of an id rather than as a whole one."""
    return MIN_PREFIX <= len(text) < ID_LENGTH and set(text) <= _HEX


def resolve_prefix(session: Session, model: type[Job | Study], tenant_id: str, prefix: str, loc: list[str]) -> str:
    """The one id of the tenant's jobs (or studies) that starts with `prefix`; the prefix itself when
    none does (the route's lookup then answers 404), a 422 naming the candidates when several do.

    Resolved here, on the server, so that every client (the CLI, the Python client, curl, the
    dashboard's links) takes the short ids the dashboard and the CLI display, with one indexed query
    and without listing the tenant's jobs; another tenant's ids never match."""
    what = "job" if model is Job else "study"
    ids = session.scalars(
        select(model.id).where(model.tenant_id == tenant_id, model.id.startswith(prefix)).order_by(model.id).limit(4)
    ).all()
    if len(ids) > 1:
        shown = ", ".join(ids[:3]) + (", ..." if len(ids) > 3 else "")
        raise Invalid(loc, f"{prefix!r} is the start of several {what} ids ({shown}); give more of the id")
    return ids[0] if ids else prefix


# --- jobs -----------------------------------------------------------------------------------------


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with id {job_id!r}; list jobs with GET /v1/jobs")


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.tenant_id != tenant_id:
        raise _not_found(job_id)
    return job


def _job_exists(session: Session, tenant_id: str, job_id: str) -> None:
    if session.scalar(select(Job.id).where(Job.id == job_id, Job.tenant_id == tenant_id)) is None:
        raise _not_found(job_id)


def submit(
    session: Session,
    tenant_id: str,
    spec: JobSpec,
    *,
    idempotency_key: str | None,
    max_active: int,
    per_minute: float,
    time_limit_seconds: float,
    request_id: str | None = None,
) -> tuple[Job, bool]:
    """Store a queued job within the tenant's limits; returns (job, created). A repeated
    Idempotency-Key returns the first job (and spends nothing)."""
    quota.lock_tenant(session, tenant_id)  # from here on, this tenant's submissions queue behind us
    if idempotency_key is not None:
        existing = session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == idempotency_key))
        if existing is not None:
            if JobSpec.model_validate(existing.spec) != spec:
                raise Conflict(
                    f"Idempotency-Key already used for job {existing.id} with a different spec; "
                    "use a new key for a new job"
                )
            return existing, False
    quota.admit(session, tenant_id, max_active=max_active, per_minute=per_minute)
    job = jobcore.create(
        session,
        tenant_id=tenant_id,
        spec=spec,
        time_limit_seconds=time_limit_seconds,
        idempotency_key=idempotency_key,
        request_id=request_id,
    )
    return job, True


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    status: JobStatus | None,
    limit: int,
    cursor: str | None,
    name: str | None = None,
    tags: Sequence[str] = (),
    study_id: str | None = None,
) -> tuple[Sequence[Job], str | None]:
    """Newest first; the cursor is the last row of the previous page. `name`: exactly that name;
    `tags`: jobs carrying every one of them."""
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if name is not None:
        query = query.where(Job.name == name)
    for tag in dict.fromkeys(tags):
        query = query.where(exists().where(JobTag.job_id == Job.id, JobTag.tag == tag))
    if study_id is not None:
        query = query.where(Job.study_id == study_id)
    return newest_first(session, query, Job, limit, cursor)


def newest_first(session: Session, query: Select, model: type[Job | Study | Upload], limit: int,
                 cursor: str | None) -> tuple[Sequence[Any], str | None]:  # fmt: skip
    """A page of `query`'s rows of `model`, newest first (created_at, then id), after the row that
    `cursor` names (the last of the previous page), and the cursor of the next page, if any."""
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    if cursor is not None:
        created_at, last_id = decode_cursor(cursor)
        query = query.where(
            or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < last_id))
        )
    rows = session.scalars(query).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


def request_cancel(session: Session, tenant_id: str, job_id: str) -> Job:
    return jobcore.request_cancel(session, get_job(session, tenant_id, job_id))


def delete_job(session: Session, tenant_id: str, job_id: str) -> None:
    jobcore.delete_finished(session, get_job(session, tenant_id, job_id))


# --- studies ----------------------------------------------------------------------------------------


def create_study(
    session: Session,
    tenant_id: str,
    *,
    name: str | None,
    spec: dict[str, Any],
    seeds: list[int],
    axes: dict[str, list[Any]],
    jobs: Sequence[JobSpec],
    max_active: int,
    per_minute: float,
    time_limit_seconds: float,
    request_id: str | None = None,
) -> tuple[Study, list[Job]]:
    """Store a study and its queued jobs, all within the tenant's limits or none at all."""
    quota.lock_tenant(session, tenant_id)
    quota.admit(session, tenant_id, max_active=max_active, per_minute=per_minute, count=len(jobs))
    study = Study(id=jobcore.new_id(), tenant_id=tenant_id, name=name, spec=spec, seeds=seeds, axes=axes,
                  created_at=db_time(session))  # fmt: skip
    session.add(study)
    session.flush()
    created = [
        jobcore.create(
            session,
            tenant_id=tenant_id,
            spec=job,
            time_limit_seconds=time_limit_seconds,
            study_id=study.id,
            request_id=request_id,
        )
        for job in jobs
    ]
    return study, created


def get_study(session: Session, tenant_id: str, study_id: str) -> Study:
    study = session.get(Study, study_id)
    if study is None or study.tenant_id != tenant_id:
        raise NotFound(f"no study with id {study_id!r}; list studies with GET /v1/studies")
    return study


def study_jobs(session: Session, study_id: str) -> Sequence[Job]:
    """The study's jobs, oldest first (views.study_detail puts them in expansion order)."""
    return session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.created_at, Job.id)).all()


def list_studies(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None
) -> tuple[list[tuple[Study, dict[str, int]]], str | None]:
    """Newest first, each with its jobs counted per status."""
    page, next_cursor = newest_first(session, select(Study).where(Study.tenant_id == tenant_id), Study, limit, cursor)
    counts: dict[str, dict[str, int]] = {s.id: {} for s in page}
    if page:
        for study_id, status, n in session.execute(
            select(Job.study_id, Job.status, func.count())
            .where(Job.study_id.in_(list(counts)))
            .group_by(Job.study_id, Job.status)
        ):
            counts[study_id][status] = n
    return [(s, counts[s.id]) for s in page], next_cursor


def cancel_study(session: Session, tenant_id: str, study_id: str) -> tuple[Study, list[str]]:
    """Cancel every queued or running job of the study (queued at once, running within its epoch); the
    ids of those asked. Jobs that finish meanwhile are left as they ended."""
    study = get_study(session, tenant_id, study_id)
    asked = []
    for job in session.scalars(select(Job).where(Job.study_id == study_id, Job.status.in_(ACTIVE))).all():
        try:
            jobcore.request_cancel(session, job)
        except Conflict:  # it finished while we looked
            continue
        asked.append(job.id)
    return study, asked


def delete_study(session: Session, tenant_id: str, study_id: str) -> list[str]:
    """Delete a study whose jobs have all finished, with its jobs; their ids."""
    study = get_study(session, tenant_id, study_id)
    jobs = session.scalars(select(Job).where(Job.study_id == study_id)).all()
    active = [j.id for j in jobs if j.status in ACTIVE]
    if active:
        raise Conflict(
            f"study {study_id} has {len(active)} queued or running job(s); only a study whose jobs have all "
            f"finished can be deleted. Cancel it first with POST /v1/studies/{study_id}/cancel"
        )
    for job in jobs:
        jobcore.delete_finished(session, job)
    session.execute(delete(Study).where(Study.id == study.id))
    return [j.id for j in jobs]


# --- metrics and checkpoints ------------------------------------------------------------------------


def list_metrics(
    session: Session, tenant_id: str, job_id: str, *, since: int, student: int | None, limit: int
) -> Sequence[MetricRow]:
    """Rows after `since`, in seq order; one query that also tells an unknown job (no row at all) from
    a known one with nothing new (one row of NULLs), since most polls find nothing new."""
    on = and_(MetricRow.job_id == Job.id, MetricRow.id > since)
    if student is not None:
        on = and_(on, MetricRow.student == student)
    rows = session.execute(
        select(Job.id, MetricRow)
        .outerjoin(MetricRow, on)
        .where(Job.id == job_id, Job.tenant_id == tenant_id)
        .order_by(MetricRow.id)
        .limit(limit)
    ).all()
    if not rows:
        raise _not_found(job_id)
    return [r[1] for r in rows if r[1] is not None]


@dataclass(frozen=True)
class JobMetrics:
    """A job with every metric row it stored, in seq order."""

    job: Job
    rows: Sequence[MetricRow]


def metrics_of_jobs(session: Session, tenant_id: str, job_ids: Sequence[str]) -> list[JobMetrics]:
    """The tenant's jobs in the order asked, each with all its rows; the first id the tenant has no job
    for is a 404 (another tenant's job is not found, as everywhere)."""
    found = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids), Job.tenant_id == tenant_id))}
    for job_id in job_ids:
        if job_id not in found:
            raise _not_found(job_id)
    rows: dict[str, list[MetricRow]] = {job_id: [] for job_id in job_ids}
    for row in session.scalars(select(MetricRow).where(MetricRow.job_id.in_(job_ids)).order_by(MetricRow.id)):
        rows[row.job_id].append(row)
    return [JobMetrics(found[job_id], rows[job_id]) for job_id in job_ids]


def list_logs(
    session: Session, tenant_id: str, job_id: str, *, since: int, limit: int
) -> tuple[Sequence[JobLog], int, int]:
    """(lines with seq > since in seq order, the job's last seq, lines dropped by the cap)."""
    _job_exists(session, tenant_id, job_id)
    rows = session.scalars(
        select(JobLog).where(JobLog.job_id == job_id, JobLog.seq > since).order_by(JobLog.seq).limit(limit)
    ).all()
    last, kept = session.execute(
        select(func.coalesce(func.max(JobLog.seq), 0), func.count()).where(JobLog.job_id == job_id)
    ).one()
    return rows, last, last - kept


def list_checkpoints(session: Session, tenant_id: str, job_id: str) -> tuple[Job, Sequence[CheckpointRow]]:
    job = get_job(session, tenant_id, job_id)
    rows = session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.student, CheckpointRow.kind)
    ).all()
    return job, rows


def get_checkpoint(session: Session, tenant_id: str, job_id: str, student: int, kind: str) -> CheckpointRow:
    """The checkpoint's metadata (its bytes stay unloaded)."""
    _job_exists(session, tenant_id, job_id)
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
    replaced the checkpoint. Call after get_checkpoint, which checks the tenant."""
    row = session.execute(
        select(CheckpointRow.sha256, CheckpointRow.data).where(
            CheckpointRow.job_id == job_id, CheckpointRow.student == student, CheckpointRow.kind == kind
        )
    ).one_or_none()
    if row is None:
        raise NotFound(f"job {job_id} has no {kind!r} checkpoint for student {student}")
    return row[0], row[1]


# --- uploads --------------------------------------------------------------------------------------


def create_upload(
    session: Session, tenant_id: str, data: bytes, filename: str | None, summary: dict[str, Any]
) -> Upload:
    upload = Upload(
        id=jobcore.new_id(),
        tenant_id=tenant_id,
        filename=filename,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        summary=summary,
        data=data,
        created_at=db_time(session),
    )
    session.add(upload)
    session.flush()
    return upload


def get_upload(session: Session, tenant_id: str, upload_id: str) -> Upload:
    upload = session.get(Upload, upload_id)
    if upload is None or upload.tenant_id != tenant_id:
        raise NotFound(f"no uploaded dataset with id {upload_id!r}; list uploads with GET /v1/datasets")
    return upload


def upload_summary(session: Session, tenant_id: str, upload_id: str) -> dict[str, Any] | None:
    """What inspection found in the tenant's upload, or None if it has no such upload."""
    return session.scalar(select(Upload.summary).where(Upload.id == upload_id, Upload.tenant_id == tenant_id))


def list_uploads(
    session: Session, tenant_id: str, *, limit: int, cursor: str | None
) -> tuple[Sequence[Upload], str | None]:
    return newest_first(session, select(Upload).where(Upload.tenant_id == tenant_id), Upload, limit, cursor)


def delete_upload(session: Session, tenant_id: str, upload_id: str) -> None:
    get_upload(session, tenant_id, upload_id)
    users = session.scalars(select(Job.id).where(Job.upload_id == upload_id, Job.status.in_(ACTIVE)).limit(5)).all()
    if users:
        raise Conflict(
            f"upload {upload_id} is used by job(s) still queued or running: {', '.join(users)}; "
            "wait for them to finish or cancel them first"
        )
    session.execute(delete(Upload).where(Upload.id == upload_id))


# --- the whole job table, for the operator (GET /metrics) -----------------------------------------


@dataclass(frozen=True)
class JobGroup:
    """The stored jobs of one status and queue, every tenant's."""

    status: str
    queue: str
    jobs: int
    attempts: int  # claims that started or resumed them, summed
    lost_workers: int  # times they were taken back from a dead or stalled worker, summed
    oldest_created_at: datetime | None


@dataclass(frozen=True)
class JobTally:
    groups: list[JobGroup]
    now: datetime  # the database's clock when it was read


def job_tally(session: Session) -> JobTally:
    """Jobs by status and queue in one grouped read (the status index serves it)."""
    rows = session.execute(
        select(
            Job.status,
            Job.queue,
            func.count(),
            func.coalesce(func.sum(Job.attempts), 0),
            func.coalesce(func.sum(Job.worker_losses), 0),
            func.min(Job.created_at),
        ).group_by(Job.status, Job.queue)
    ).all()
    groups = [JobGroup(r[0], r[1], int(r[2]), int(r[3]), int(r[4]), r[5]) for r in rows]
    return JobTally(groups, db_time(session))
