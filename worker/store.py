"""The worker's reads and writes of the job database.

Every write a worker makes to a job is fenced by the claim token it got when it claimed the job:
`UPDATE jobs ... WHERE id = :id AND claim_token = :token AND status = 'running'`. A worker that was
presumed dead (stale heartbeat) and replaced finds its token gone and stops, so it can never write
over its successor's rows; the rows an epoch adds commit together with that fence, or not at all.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from service.models import CheckpointRow, Job, JobState, MetricRow, Upload, utcnow


@dataclass(frozen=True)
class Claim:
    job_id: str
    token: str
    queue: str
    attempts: int
    spec: dict[str, Any]
    cancel_requested: bool


@dataclass(frozen=True)
class ResumePoint:
    epoch: int  # epochs already done and kept
    state: bytes | None  # the trainer state at that epoch


def claim(session: Session, job_id: str, *, stale_after_seconds: float, worker: str) -> Claim | None:
    """Take a queued job, or a running one whose worker stopped beating (a redelivery after a crash).

    None: another live worker has it, or it is finished or cancelled, so this delivery is a duplicate.
    """
    now = utcnow()
    token = uuid.uuid4().hex
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.status == "queued",
                and_(
                    Job.status == "running",
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - timedelta(seconds=stale_after_seconds)),
                ),
            ),
        )
        .values(
            status="running",
            attempts=Job.attempts + 1,
            claim_token=token,
            worker=worker[:200],
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.execute(
        select(Job.queue, Job.attempts, Job.spec, Job.cancel_requested_at).where(Job.id == job_id)
    ).one()
    return Claim(job_id, token, job.queue, job.attempts, job.spec, job.cancel_requested_at is not None)


def _fence(session: Session, claim: Claim, **values: Any) -> bool:
    """Touch the job as its owner (heartbeat plus `values`); False if this worker no longer owns it."""
    result = session.execute(
        update(Job)
        .where(Job.id == claim.job_id, Job.claim_token == claim.token, Job.status == "running")
        .values(**{"heartbeat_at": utcnow(), **values})
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def heartbeat(session: Session, claim: Claim) -> bool:
    return _fence(session, claim)


def poll(session: Session, claim: Claim) -> tuple[bool, bool]:
    """(still owned, cancellation requested)."""
    row = session.execute(
        select(Job.status, Job.claim_token, Job.cancel_requested_at).where(Job.id == claim.job_id)
    ).one_or_none()
    if row is None:  # deleted under us; only possible if something bypassed the API's checks
        return False, True
    owned = row.status == "running" and row.claim_token == claim.token
    return owned, row.cancel_requested_at is not None


def prepare_resume(session: Session, claim: Claim, arches: Sequence[str]) -> ResumePoint:
    """Keep what the stored training state covers and drop rows written after it."""
    state = session.execute(select(JobState.epoch, JobState.data).where(JobState.job_id == claim.job_id)).one_or_none()
    epoch = state.epoch if state is not None else 0
    session.execute(delete(MetricRow).where(MetricRow.job_id == claim.job_id, MetricRow.epoch > epoch))
    session.execute(
        delete(CheckpointRow).where(
            CheckpointRow.job_id == claim.job_id, or_(CheckpointRow.epoch > epoch, CheckpointRow.kind == "final")
        )
    )
    best = _best_from_metrics(session, claim.job_id, arches) if epoch else None
    _fence(session, claim, epochs_done=epoch, result=best)
    return ResumePoint(epoch, state.data if state is not None else None)


def _best_from_metrics(session: Session, job_id: str, arches: Sequence[str]) -> list[dict[str, Any]]:
    rows = session.execute(
        select(MetricRow.student, MetricRow.epoch, MetricRow.val_score, MetricRow.test_score)
        .where(MetricRow.job_id == job_id, MetricRow.val_score.is_not(None))
        .order_by(MetricRow.epoch)
    ).all()
    best: dict[int, dict[str, Any]] = {
        i: {"student": i, "arch": arch, "best_val": None, "best_epoch": None, "test_at_best": None}
        for i, arch in enumerate(arches)
    }
    for r in rows:
        b = best[r.student]
        if b["best_val"] is None or r.val_score > b["best_val"]:  # strictly better, as the trainer decides
            b.update(best_val=r.val_score, best_epoch=r.epoch, test_at_best=r.test_score)
    return [best[i] for i in sorted(best)]


def reset_progress(session: Session, claim: Claim) -> None:
    """Start over: a stored state that cannot be loaded is worth less than a clean run."""
    for model in (MetricRow, CheckpointRow, JobState):
        session.execute(delete(model).where(model.job_id == claim.job_id))
    _fence(session, claim, epochs_done=0, result=None)


def record_epoch(
    session: Session,
    claim: Claim,
    rows: Sequence[dict[str, Any]],
    *,
    epochs_done: int,
    summaries: list[dict[str, Any]],
    state: bytes | None,
) -> bool:
    """One epoch's metric rows, progress, summaries and (sometimes) training state, all or nothing."""
    if not _fence(session, claim, epochs_done=epochs_done, result=summaries):
        return False
    now = utcnow()
    session.add_all(MetricRow(job_id=claim.job_id, created_at=now, **r) for r in rows)
    if state is not None:
        existing = session.get(JobState, claim.job_id)
        if existing is None:
            session.add(JobState(job_id=claim.job_id, epoch=epochs_done, size=len(state), data=state, updated_at=now))
        else:
            existing.epoch, existing.size, existing.data, existing.updated_at = epochs_done, len(state), state, now
    session.flush()
    return True


def store_checkpoint(
    session: Session, claim: Claim, *, student: int, kind: str, epoch: int, score: float | None, data: bytes
) -> bool:
    """Insert or replace the (job, student, kind) checkpoint."""
    if not _fence(session, claim):
        return False
    values = {
        "epoch": epoch,
        "score": score,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "created_at": utcnow(),
    }
    where = (CheckpointRow.job_id == claim.job_id, CheckpointRow.student == student, CheckpointRow.kind == kind)
    # the fence above holds the job row, so no other writer races this read-then-write
    if session.scalar(select(CheckpointRow.id).where(*where)) is None:
        session.add(CheckpointRow(job_id=claim.job_id, student=student, kind=kind, **values))
    else:
        session.execute(update(CheckpointRow).where(*where).values(**values))
    session.flush()
    return True


def finish(
    session: Session,
    claim: Claim,
    status: str,
    *,
    error: str | None = None,
    summaries: list[dict[str, Any]] | None = None,
    epochs_done: int | None = None,
) -> bool:
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error, "claim_token": None}
    if summaries is not None:
        values["result"] = summaries
    if epochs_done is not None:
        values["epochs_done"] = epochs_done
    if not _fence(session, claim, **values):
        return False
    session.execute(delete(JobState).where(JobState.job_id == claim.job_id))  # nothing left to resume
    return True


def queue_of(session: Session, job_id: str) -> str | None:
    """The queue of a job that still waits to run; None if it is gone or no longer queued."""
    return session.scalar(select(Job.queue).where(Job.id == job_id, Job.status == "queued"))


def release(session: Session, claim: Claim) -> bool:
    """Hand a running job back to the queue (this worker is shutting down); the next claim resumes it
    from its stored state."""
    return _fence(session, claim, status="queued", claim_token=None, heartbeat_at=None, enqueued_at=utcnow())


def upload_bytes(session: Session, upload_id: str) -> bytes:
    data = session.scalar(select(Upload.data).where(Upload.id == upload_id))
    if data is None:
        raise LookupError(f"upload {upload_id!r} no longer exists")
    return data


def orphans(session: Session, *, stale_after_seconds: float, queued_grace_seconds: float) -> list[tuple[str, str, Any]]:
    """(id, queue, enqueued_at) of jobs whose message is probably lost: running with a stale heartbeat,
    or queued for longer than the grace period; neither re-sent within the last such period."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_seconds)
    grace = now - timedelta(seconds=queued_grace_seconds)
    sent = func.coalesce(Job.enqueued_at, Job.created_at)
    rows = session.execute(
        select(Job.id, Job.queue, Job.enqueued_at).where(
            or_(
                and_(
                    Job.status == "running",
                    or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                    or_(Job.enqueued_at.is_(None), Job.enqueued_at < stale),
                ),
                and_(Job.status == "queued", sent < grace),
            )
        )
    ).all()
    return [(r.id, r.queue, r.enqueued_at) for r in rows]


def mark_resent(session: Session, job_id: str, previous: Any) -> bool:
    """Record a re-send; False if another sweeper re-sent it first (so only one message goes out)."""
    cond = Job.enqueued_at.is_(None) if previous is None else Job.enqueued_at == previous
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, cond)
        .values(enqueued_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1
