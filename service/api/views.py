"""ORM rows -> response bodies; the one place that knows how a stored row is shown."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from alignahead import studies
from alignahead.enums import ACTIVE, JobStatus
from alignahead.spec import JobSpec
from service.api.schemas import (
    CheckpointList,
    CheckpointOut,
    JobOut,
    JobSummaryOut,
    LogLineOut,
    LogPage,
    MetricOut,
    MetricPage,
    Progress,
    StudentCheckpoints,
    StudentOut,
    StudyOut,
    StudyRow,
    StudySummaryOut,
    UploadOut,
)
from service.core.models import CheckpointRow, Job, JobLog, MetricRow, Study, Upload
from service.core.repository import JobMetrics


def job_summary(job: Job) -> JobSummaryOut:
    return JobSummaryOut(
        id=job.id,
        name=job.name,
        tags=job.spec.get("tags") or [],
        status=job.status,  # type: ignore[arg-type]
        queue=job.queue,  # type: ignore[arg-type]
        progress=Progress(epoch=job.epochs_done, total=job.epochs_total),
        attempts=job.attempts,
        worker_losses=job.worker_losses,
        cancel_requested=job.cancel_requested_at is not None,
        worker=job.worker,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        heartbeat_at=job.heartbeat_at,
        error=job.error,
        stop_reason=job.stop_reason,
        study_id=job.study_id,
        request_id=job.request_id,
    )


def job_detail(job: Job) -> JobOut:
    spec = JobSpec.model_validate(job.spec)
    if job.result:
        students = [StudentOut.model_validate(s) for s in job.result]
    else:  # nothing evaluated yet
        students = [StudentOut(student=i, arch=s.arch) for i, s in enumerate(spec.expanded_students())]
    return JobOut(**job_summary(job).model_dump(), students=students, spec=spec)


def metric_out(r: MetricRow) -> MetricOut:
    return MetricOut(
        seq=r.id,
        epoch=r.epoch,
        student=r.student,
        loss=r.loss,
        task_loss=r.task_loss,
        distill_loss=r.distill_loss,
        train_score=r.train_score,
        val_score=r.val_score,
        test_score=r.test_score,
        seconds=r.seconds,
        created_at=r.created_at,
    )


def metric_page(job_id: str, rows: Sequence[MetricRow], since: int) -> MetricPage:
    out = [metric_out(r) for r in rows]
    return MetricPage(job_id=job_id, rows=out, next_since=out[-1].seq if out else since)


METRICS_CSV_JOB = ["job_id", "job_name", "student", "arch"]
METRICS_CSV_ROW = list(MetricOut.model_fields)


def metrics_csv(jobs: Sequence[JobMetrics]) -> str:
    """Several jobs' metric rows as one table: who (job, student and its architecture), then the row's
    fields as GET /v1/jobs/{id}/metrics writes them (floats in full, timestamps alike); job by job in the
    order given, rows in seq order."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METRICS_CSV_JOB + METRICS_CSV_ROW)
    for item in jobs:
        archs = [s.arch for s in JobSpec.model_validate(item.job.spec).expanded_students()]
        for r in item.rows:
            row = metric_out(r).model_dump(mode="json")
            arch = archs[r.student] if r.student < len(archs) else ""
            who = [item.job.id, item.job.name or "", r.student, arch]
            writer.writerow(who + [_cell(row[k]) for k in METRICS_CSV_ROW])
    return buf.getvalue()


def _cell(value: object) -> object:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def log_page(job_id: str, rows: Sequence[JobLog], since: int, omitted: int) -> LogPage:
    lines = [LogLineOut(seq=r.seq, created_at=r.at, level=r.level, logger=r.logger, message=r.message) for r in rows]
    return LogPage(job_id=job_id, lines=lines, next_since=lines[-1].seq if lines else since, omitted=omitted)


def checkpoint_url(job_id: str, student: int, kind: str) -> str:
    return f"/v1/jobs/{job_id}/checkpoints/{student}/{kind}"


def checkpoint_list(job: Job, rows: Sequence[CheckpointRow]) -> CheckpointList:
    students = {
        i: StudentCheckpoints(student=i, best=None, final=None)
        for i in range(JobSpec.model_validate(job.spec).num_students)
    }
    for r in rows:
        entry = students.setdefault(r.student, StudentCheckpoints(student=r.student, best=None, final=None))
        out = CheckpointOut(
            kind=r.kind,  # type: ignore[arg-type]
            epoch=r.epoch,
            score=r.score,
            size=r.size,
            sha256=r.sha256,
            created_at=r.created_at,
            url=checkpoint_url(job.id, r.student, r.kind),
        )
        setattr(entry, r.kind, out)
    return CheckpointList(job_id=job.id, students=[students[i] for i in sorted(students)])


def upload_out(upload: Upload) -> UploadOut:
    return UploadOut(
        id=upload.id,
        filename=upload.filename,
        size=upload.size,
        sha256=upload.sha256,
        created_at=upload.created_at,
        summary=upload.summary,  # type: ignore[arg-type]
        dataset_spec={"name": "upload", "upload_id": upload.id},
    )


def study_summary(study: Study, counts: dict[str, int]) -> StudySummaryOut:
    full = {status: counts.get(status, 0) for status in JobStatus}
    return StudySummaryOut(
        id=study.id,
        name=study.name,
        created_at=study.created_at,
        jobs=sum(full.values()),
        counts=full,
        done=not any(full[s] for s in ACTIVE),
    )


def study_outcomes(study: Study, jobs: Sequence[Job]) -> list[studies.Outcome]:
    """Each job's cell and seed, read back from its own spec."""
    return [
        studies.Outcome(
            cell={p: studies.get_path(j.spec, p) for p in study.axes},
            seed=int(studies.get_path(j.spec, studies.SEED_PATH) or 0),
            status=j.status,
            students=j.result,
            positions=studies.num_students(j.spec),
        )
        for j in jobs
    ]


def study_cells(study: Study) -> list[dict]:
    return studies.cells(study.axes)


def study_rows(study: Study, jobs: Sequence[Job]) -> list[studies.TableRow]:
    return studies.study_table(study_outcomes(study, jobs), study_cells(study))


def _expansion_order(study: Study, jobs: Sequence[Job]) -> list[Job]:
    """Jobs by cell (the axes' order) then seed, as POST /v1/studies created them; others last."""
    cells = {json.dumps(c, sort_keys=True): i for i, c in enumerate(study_cells(study))}
    seeds = {s: i for i, s in enumerate(study.seeds)}
    keyed = zip(study_outcomes(study, jobs), jobs, strict=True)
    order = sorted(keyed, key=lambda p: (cells.get(json.dumps(p[0].cell, sort_keys=True), len(cells)),
                                         seeds.get(p[0].seed, len(seeds))))  # fmt: skip
    return [job for _, job in order]


def study_detail(study: Study, jobs: Sequence[Job]) -> StudyOut:
    jobs = _expansion_order(study, jobs)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    return StudyOut(
        **study_summary(study, counts).model_dump(),
        spec=study.spec,
        seeds=study.seeds,
        axes=study.axes,
        job_ids=[j.id for j in jobs],  # in expansion order: cell by cell, seeds within
        test=studies.TEST_NAME,
        confidence=studies.CONFIDENCE,
        table=[StudyRow.model_validate(r.as_dict()) for r in study_rows(study, jobs)],
    )
