"""Every state change of a job, and the one rule that says its worker is gone.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled            running --release / take back--> queued

Each change is one conditional UPDATE, so the API, the workers and their sweeps race without locks and
exactly one of them wins. A worker's writes are fenced by the claim token it got
(`... WHERE claim_token = :token AND status = 'running'`): a worker that was presumed dead and replaced
finds its token gone and stops, and can never write over its successor's rows.

Liveness is judged only here (`stale()`) and only by the database's clock (`service.core.db.db_now`): the
owner renews `lease_until` with each heartbeat and `progress_until` with each finished epoch; a
running job past either is taken back by whichever process sweeps first. The owner sets both deadlines
from its own settings, so processes with different settings still agree on every job.

The API (service.core.repository) and the workers (worker.store) call these functions; neither writes a
job's status, lease or attempts itself.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from alignahead import metrics
from alignahead.enums import FINISHED, JobStatus, Queue
from alignahead.metrics import EpochMetrics
from alignahead.spec import JobSpec
from service.core.db import db_now, db_time
from service.core.errors import Conflict, NotFound
from service.core.models import CheckpointRow, Job, JobLog, JobState, JobTag, MetricRow

RUNNING, QUEUED = JobStatus.RUNNING, JobStatus.QUEUED


def new_id() -> str:
    return uuid.uuid4().hex


def queue_for(spec: JobSpec) -> Queue:
    return Queue.GPU if spec.training.device == "cuda" else Queue.CPU


# --- the rules ---------------------------------------------------------------------------------------


def stale() -> ColumnElement[bool]:
    """THE liveness rule: a running job whose lease lapsed (its worker stopped beating: dead, frozen,
    cut off) or whose epoch has not advanced in time (its worker beats but training hangs)."""
    now = db_now()
    return and_(
        Job.status == RUNNING,
        or_(Job.lease_until.is_(None), Job.lease_until < now, Job.progress_until < now),
    )


def over_time() -> ColumnElement[bool]:
    """Past the job's wall-clock limit, which runs from its first start."""
    return and_(Job.deadline_at.is_not(None), Job.deadline_at < db_now())


def time_limit_message(seconds: float) -> str:
    return (
        f"the job ran past its wall-clock limit of {seconds:g} s (ALIGNAHEAD_MAX_JOB_SECONDS, counted from its "
        "first start); what it stored so far stays readable. Train fewer epochs or a smaller model, or ask "
        "the operator to raise the limit"
    )


# --- what a worker holds -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """A worker's liveness promises: it beats at least every `lease_seconds` and finishes an epoch at
    least every `stall_seconds`."""

    lease_seconds: float
    stall_seconds: float


@dataclass(frozen=True)
class Claim:
    job_id: str
    tenant_id: str
    token: str
    queue: str
    attempts: int
    spec: dict[str, Any]
    cancel_requested: bool
    time_limit_seconds: float
    epochs_done: int = 0  # stored progress when claimed: epochs up to it may be redone after a resume
    request_id: str | None = None  # of the request that submitted it: in its workers' log lines


@dataclass(frozen=True)
class Signals:
    """What the owner learns with each write it makes: the heartbeat thread and the epoch callback
    read these, so a running job learns of a cancel request without a database round trip per step."""

    owned: bool
    cancel_requested: bool = False
    over_time: bool = False


LOST = Signals(owned=False)


def _fence(claim: Claim) -> ColumnElement[bool]:
    return and_(Job.id == claim.job_id, Job.claim_token == claim.token, Job.status == RUNNING)


def _touch(session: Session, claim: Claim, **values: Any) -> tuple[Signals, datetime | None]:
    """Touch the job as its owner (heartbeat, lease, `values`) and read the flags and the database's
    clock, in one statement."""
    row = session.execute(
        update(Job)
        .where(_fence(claim))
        .values(heartbeat_at=db_now(), **values)
        .returning(Job.cancel_requested_at, case((over_time(), True), else_=False), db_now())
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return LOST, None
    return Signals(owned=True, cancel_requested=row[0] is not None, over_time=bool(row[1])), row[2]


def _signals_of(session: Session, claim: Claim, **values: Any) -> Signals:
    return _touch(session, claim, **values)[0]


# --- submission ------------------------------------------------------------------------------------------


def create(
    session: Session,
    *,
    tenant_id: str,
    spec: JobSpec,
    time_limit_seconds: float,
    idempotency_key: str | None = None,
    study_id: str | None = None,
    request_id: str | None = None,
) -> Job:
    """A new queued job, not yet sent to the broker (`enqueued_at` stays NULL until it is);
    `request_id`: the submitting request's X-Request-ID, which its workers' log lines carry."""
    spec_json = spec.model_dump(mode="json")
    job = Job(
        id=new_id(),
        tenant_id=tenant_id,
        name=spec.name,
        status=QUEUED,
        queue=queue_for(spec),
        spec=spec_json,
        upload_id=spec.dataset.upload_id,
        idempotency_key=idempotency_key,
        created_at=db_time(session),
        attempts=0,
        worker_losses=0,
        epochs_done=0,
        epochs_total=spec.training.epochs,
        time_limit_seconds=time_limit_seconds,
        study_id=study_id,
        request_id=request_id,
    )
    session.add(job)
    session.flush()
    if spec.tags:
        session.add_all(JobTag(job_id=job.id, tag=t) for t in spec.tags)
        session.flush()
    return job


def unsent(session: Session, limit: int = 100) -> Sequence[tuple[str, str]]:
    """(id, queue) of queued jobs that no broker has taken yet, oldest first."""
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(Job.status == QUEUED, Job.enqueued_at.is_(None))
        .order_by(Job.created_at)
        .limit(limit)
    ).all()
    return [(r.id, r.queue) for r in rows]


def mark_sent(session: Session, job_id: str, previous: datetime | None = None) -> bool:
    """Record that a message for the job left (now); False if someone else recorded a send since
    `previous`, the enqueued_at we read, so that of two sweepers only one sends."""
    cond = Job.enqueued_at.is_(None) if previous is None else Job.enqueued_at == previous
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, cond)
        .values(enqueued_at=db_now())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_unsent(session: Session, job_id: str) -> None:
    """Undo `mark_sent` when the broker refused the message: the job waits for the next round."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(enqueued_at=None)
        .execution_options(synchronize_session=False)
    )


def lost_messages(session: Session, grace_seconds: float) -> Sequence[tuple[str, str, datetime]]:
    """(id, queue, enqueued_at) of queued jobs sent longer than `grace_seconds` ago and still not
    claimed: their message was probably lost (a broker restarted without persistence)."""
    rows = session.execute(
        select(Job.id, Job.queue, Job.enqueued_at).where(
            Job.status == QUEUED, Job.enqueued_at.is_not(None), Job.enqueued_at < db_now(-grace_seconds)
        )
    ).all()
    return [(r.id, r.queue, r.enqueued_at) for r in rows]


# --- a worker's life with a job -------------------------------------------------------------------------------


def claim(session: Session, job_id: str, *, worker: str, lease: Lease) -> Claim | None:
    """Take a queued job (fresh, released, or taken back from a dead worker).

    None: it is running elsewhere, finished, cancelled, unknown, or past its wall-clock limit (then it
    is marked failed here), so this delivery is a duplicate to drop.
    """
    expired = session.scalar(select(Job.time_limit_seconds).where(Job.id == job_id, Job.status == QUEUED, over_time()))
    if expired is not None:  # handed back, then left waiting past its limit
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == QUEUED, over_time())
            .values(status=JobStatus.FAILED, finished_at=db_now(), error=time_limit_message(expired))
            .execution_options(synchronize_session=False)
        )
        return None
    token = new_id()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(
            status=RUNNING,
            attempts=Job.attempts + 1,
            claim_token=token,
            worker=worker[:200],
            started_at=func.coalesce(Job.started_at, db_now()),
            deadline_at=func.coalesce(Job.deadline_at, db_now(Job.time_limit_seconds)),
            heartbeat_at=db_now(),
            lease_until=db_now(lease.lease_seconds),
            progress_until=db_now(lease.stall_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    job = session.execute(
        select(
            Job.tenant_id,
            Job.queue,
            Job.attempts,
            Job.spec,
            Job.cancel_requested_at,
            Job.time_limit_seconds,
            Job.epochs_done,
            Job.request_id,
        ).where(Job.id == job_id)
    ).one()
    return Claim(
        job_id=job_id,
        tenant_id=job.tenant_id,
        token=token,
        queue=job.queue,
        attempts=job.attempts,
        spec=job.spec,
        cancel_requested=job.cancel_requested_at is not None,
        time_limit_seconds=job.time_limit_seconds,
        epochs_done=job.epochs_done,
        request_id=job.request_id,
    )


def heartbeat(session: Session, claim: Claim, lease: Lease) -> Signals:
    """Renew the lease; learn whether the job is still ours, cancelled, or past its time limit."""
    return _signals_of(session, claim, lease_until=db_now(lease.lease_seconds))


@dataclass(frozen=True)
class EpochOutcome:
    signals: Signals
    redone: bool  # the epoch's rows were already stored by an earlier attempt (a resume redid it)
    mismatches: list[str]  # where a redone epoch's numbers differ from the stored ones (should not)


def record_epoch(
    session: Session,
    claim: Claim,
    lease: Lease,
    metric_rows: Sequence[EpochMetrics],
    *,
    epoch: int,
    summaries: list[dict[str, Any]],
    state: bytes | None,
    maybe_redone: bool = True,
) -> EpochOutcome:
    """One finished epoch, all or nothing: progress (renewing the progress deadline), its metric rows,
    the summaries and, sometimes, the training state.

    Metric rows are written once per (job, epoch, student) and never deleted while the job lives, so
    their `seq` (the row id, allocated under the job's row lock) only grows in the order clients can
    read them. An epoch redone after a resume is compared with the stored rows and not written again.
    `maybe_redone=False` (the epoch lies beyond the progress stored when the job was claimed) skips
    that comparison: then it costs one UPDATE and one INSERT.
    """
    live = {"lease_until": db_now(lease.lease_seconds), "progress_until": db_now(lease.stall_seconds)}
    rows = [asdict(r) for r in metric_rows]
    if not maybe_redone:
        signals, now = _touch(session, claim, **live, epochs_done=epoch, result=summaries)
        if not signals.owned:
            return EpochOutcome(LOST, False, [])
        session.execute(insert(MetricRow), [{"job_id": claim.job_id, "created_at": now, **r} for r in rows])
        if state is not None:
            save_state(session, claim.job_id, epoch, state, now)
        return EpochOutcome(signals, False, [])
    signals = _signals_of(session, claim, **live)
    if not signals.owned:
        return EpochOutcome(LOST, False, [])
    stored = {
        r.student: r
        for r in session.scalars(select(MetricRow).where(MetricRow.job_id == claim.job_id, MetricRow.epoch == epoch))
    }
    mismatches = []
    fresh = []
    for row in rows:
        old = stored.get(row["student"])
        if old is None:
            fresh.append(row)
            continue
        for name in metrics.VALUES:  # the numbers a redone epoch must reproduce (not `seconds`)
            a, b = getattr(old, name), row[name]
            if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)):
                mismatches.append(f"student {row['student']} {name}: stored {a!r}, redone {b!r}")
    if fresh:
        now = db_time(session)
        session.add_all(MetricRow(job_id=claim.job_id, created_at=now, **r) for r in fresh)
    redone = not fresh
    if not redone:  # progress and summaries move forward only
        session.execute(
            update(Job)
            .where(_fence(claim), Job.epochs_done < epoch)
            .values(epochs_done=epoch, result=summaries)
            .execution_options(synchronize_session=False)
        )
    if state is not None:
        save_state(session, claim.job_id, epoch, state)
    session.flush()
    return EpochOutcome(signals, redone, mismatches)


def save_state(session: Session, job_id: str, epoch: int, state: bytes, now: datetime | None = None) -> None:
    """The full training state after `epoch`, replacing the previous one (call under the fence)."""
    now = now or db_time(session)
    existing = session.get(JobState, job_id)
    if existing is None:
        session.add(JobState(job_id=job_id, epoch=epoch, size=len(state), data=state, updated_at=now))
    else:
        existing.epoch, existing.size, existing.data, existing.updated_at = epoch, len(state), state, now


def store_checkpoint(
    session: Session, claim: Claim, *, student: int, kind: str, epoch: int, score: float | None, data: bytes
) -> bool:
    """Insert or replace the (job, student, kind) checkpoint; False if the job is no longer ours."""
    if not _signals_of(session, claim).owned:
        return False
    values = {
        "epoch": epoch,
        "score": score,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": data,
        "created_at": db_time(session),
    }
    where = (CheckpointRow.job_id == claim.job_id, CheckpointRow.student == student, CheckpointRow.kind == kind)
    # the fence above holds the job row, so no other writer races this read-then-write
    if session.scalar(select(CheckpointRow.id).where(*where)) is None:
        session.add(CheckpointRow(job_id=claim.job_id, student=student, kind=kind, **values))
    else:
        session.execute(update(CheckpointRow).where(*where).values(**values))
    session.flush()
    return True


def append_logs(session: Session, claim: Claim, lines: Sequence[dict[str, Any]], *, max_lines: int) -> bool:
    """Store log lines of the job as its owner (each with seq, at, level, logger, message; seqs
    increasing), then keep at most `max_lines`: the first half (seq <= max_lines // 2, how the job
    began) and the latest ones; the middle goes. False if the job is no longer ours (nothing stored)."""
    if not lines:
        return True
    if session.scalar(select(Job.id).where(_fence(claim))) is None:
        return False
    session.execute(insert(JobLog), [{"job_id": claim.job_id, **line} for line in lines])
    last = lines[-1]["seq"]
    head, tail = max_lines // 2, max_lines - max_lines // 2
    if last > max_lines:
        session.execute(
            delete(JobLog).where(JobLog.job_id == claim.job_id, JobLog.seq > head, JobLog.seq <= last - tail)
        )
    return True


def finish(
    session: Session,
    claim: Claim,
    status: JobStatus,
    *,
    error: str | None = None,
    stop_reason: str | None = None,
    summaries: list[dict[str, Any]] | None = None,
    epochs_done: int | None = None,
) -> bool:
    """End the job as its owner (`stop_reason`: why a succeeded job stopped early). Summaries and
    progress are kept if the stored ones reach further (a job cancelled while redoing epochs after a
    resume)."""
    stored = session.scalar(select(Job.epochs_done).where(_fence(claim)))
    if stored is None:
        return False
    values: dict[str, Any] = {
        "status": status,
        "finished_at": db_now(),
        "error": error,
        "stop_reason": stop_reason,
        "claim_token": None,
        "lease_until": None,
        "progress_until": None,
    }
    if epochs_done is not None and epochs_done >= stored:
        values["epochs_done"] = epochs_done
        if summaries is not None:
            values["result"] = summaries
    result = session.execute(
        update(Job).where(_fence(claim)).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return False
    session.execute(delete(JobState).where(JobState.job_id == claim.job_id))  # nothing left to resume
    return True


def release(session: Session, claim: Claim) -> bool:
    """Hand a running job back to the queue (its worker is shutting down): not a lost worker, so no
    loss is counted; the next claim resumes it from its stored state. It goes out again through the
    sender of unsent jobs unless the caller sends it and marks it sent."""
    result = session.execute(
        update(Job)
        .where(_fence(claim))
        .values(status=QUEUED, claim_token=None, lease_until=None, progress_until=None, enqueued_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def lose_rank(session: Session, claim: Claim, reason: str, *, max_attempts: int) -> JobStatus | None:
    """A rank of the owner's parallel job died (killed, out of memory): the attempt is lost as if its worker
    had been, so it counts toward `max_attempts`; the job is requeued to resume from its stored state, or
    fails with the reason at the limit. Returns the new status (None: the claim is not ours any more)."""
    losses = session.scalar(select(Job.worker_losses).where(_fence(claim)))
    if losses is None:
        return None
    losses += 1
    values: dict[str, Any] = {"claim_token": None, "lease_until": None, "progress_until": None, "worker_losses": losses}
    if losses >= max_attempts:
        values.update(
            status=JobStatus.FAILED,
            finished_at=db_now(),
            error=f"gave up after {losses} lost attempts (the limit, ALIGNAHEAD_MAX_ATTEMPTS, is {max_attempts}): "
            f"{reason}",
        )
    else:
        values.update(status=QUEUED, enqueued_at=None)
    result = session.execute(
        update(Job).where(_fence(claim)).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    if values["status"] == JobStatus.FAILED:
        session.execute(delete(JobState).where(JobState.job_id == claim.job_id))
    return values["status"]


def take_back_stale(session: Session, *, max_attempts: int) -> list[tuple[str, str]]:
    """Take back every stale running job: requeue it, or fail it if it lost `max_attempts` workers or
    ran past its time limit. Returns (id, queue) of the requeued ones, for the caller to send."""
    lapsed = or_(Job.lease_until.is_(None), Job.lease_until < db_now())
    rows = session.execute(
        select(
            Job.id,
            Job.queue,
            Job.claim_token,
            Job.worker_losses,
            Job.worker,
            Job.time_limit_seconds,
            case((lapsed, True), else_=False).label("lapsed"),
            case((over_time(), True), else_=False).label("over_time"),
        ).where(stale())
    ).all()
    requeued = []
    for r in rows:
        losses = r.worker_losses + 1
        why = "stopped beating" if r.lapsed else "beat, but its epoch stopped advancing"
        values: dict[str, Any] = {
            "claim_token": None,
            "lease_until": None,
            "progress_until": None,
            "worker_losses": losses,
        }
        if r.over_time:
            values.update(status=JobStatus.FAILED, finished_at=db_now(), error=time_limit_message(r.time_limit_seconds))
        elif losses >= max_attempts:
            values.update(
                status=JobStatus.FAILED,
                finished_at=db_now(),
                error=f"gave up after {losses} lost workers (the limit, ALIGNAHEAD_MAX_ATTEMPTS, is {max_attempts}): "
                f"the last one ({r.worker}) {why}. A worker that dies every time is often killed for memory: "
                "try a smaller graph or model, or a worker with more memory",
            )
        else:
            values.update(status=QUEUED, enqueued_at=None)
        result = session.execute(
            update(Job)
            .where(Job.id == r.id, Job.claim_token == r.claim_token, stale())
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1 and values["status"] == QUEUED:
            requeued.append((r.id, r.queue))
    return requeued


# --- what a user asks ----------------------------------------------------------------------------------------


def request_cancel(session: Session, job: Job) -> Job:
    """Queued: cancelled at once (it never starts). Running: flagged; its worker learns of it with its
    next write (a heartbeat or the end of the epoch) and stops, keeping what it stored. A running job
    whose worker is gone is settled here, since nobody else would."""
    job_id = job.id
    if job.status in FINISHED:
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    queued = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=db_now(), cancel_requested_at=db_now())
        .execution_options(synchronize_session=False)
    )
    if queued.rowcount == 0:
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == RUNNING, Job.cancel_requested_at.is_(None))
            .values(cancel_requested_at=db_now())
            .execution_options(synchronize_session=False)
        )
        session.execute(
            update(Job)
            .where(Job.id == job_id, stale())
            .values(status=JobStatus.CANCELLED, finished_at=db_now(), claim_token=None, lease_until=None)
            .execution_options(synchronize_session=False)
        )
    session.refresh(job)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):  # it finished while we looked
        raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
    return job


def delete_finished(session: Session, job: Job) -> None:
    if job.status not in FINISHED:
        raise Conflict(
            f"job {job.id} is {job.status}; only finished jobs can be deleted. "
            f"Cancel it first with POST /v1/jobs/{job.id}/cancel"
        )
    # children first: SQLite enforces ON DELETE CASCADE only with foreign_keys on
    for model in (MetricRow, CheckpointRow, JobState, JobLog, JobTag):
        session.execute(delete(model).where(model.job_id == job.id))
    result = session.execute(delete(Job).where(Job.id == job.id, Job.status.in_(FINISHED)))
    if result.rowcount != 1:
        raise NotFound(f"no job with id {job.id!r}; list jobs with GET /v1/jobs")
