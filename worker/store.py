"""The worker's reads of the job database. Every write a worker makes to a job is a state change and
goes through service.core.jobcore (claim, heartbeat, record_epoch, store_checkpoint, finish, release)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignahead.enums import JobStatus
from service.core.jobcore import Claim
from service.core.models import Job, JobLog, JobState, Upload


def resume_state(session: Session, claim: Claim) -> tuple[int, bytes] | None:
    """(epoch, bytes) of the job's latest stored training state, if an earlier attempt saved one."""
    row = session.execute(select(JobState.epoch, JobState.data).where(JobState.job_id == claim.job_id)).one_or_none()
    return None if row is None else (row.epoch, row.data)


def upload_bytes(session: Session, claim: Claim, upload_id: str) -> bytes:
    """An upload of the job's own tenant (the API checked it at submission; checked again here)."""
    data = session.scalar(select(Upload.data).where(Upload.id == upload_id, Upload.tenant_id == claim.tenant_id))
    if data is None:
        raise LookupError(f"upload {upload_id!r} no longer exists")
    return data


def queue_of(session: Session, job_id: str) -> str | None:
    """The queue of a job that still waits to run; None if it is gone or no longer queued."""
    return session.scalar(select(Job.queue).where(Job.id == job_id, Job.status == JobStatus.QUEUED))


def last_log_seq(session: Session, job_id: str) -> int:
    """The seq of the job's latest stored log line (0: none): a new attempt numbers on from it."""
    return session.scalar(select(func.coalesce(func.max(JobLog.seq), 0)).where(JobLog.job_id == job_id)) or 0
