"""/v1/jobs: submit, list, inspect, cancel and delete jobs; read their metrics and checkpoints."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from alignahead.spec import JobSpec
from service import repository as repo
from service import views
from service.broker import enqueue
from service.context import AppContext, get_context
from service.errors import Invalid
from service.schemas import CheckpointKind, CheckpointList, ErrorOut, JobOut, JobPage, JobStatus, MetricPage

log = logging.getLogger("alignahead.service")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Ctx = Annotated[AppContext, Depends(get_context)]
NOT_FOUND = {404: {"model": ErrorOut, "description": "No such job."}}
CONFLICT = {409: {"model": ErrorOut, "description": "The job's status does not allow it."}}


def _check_dataset(ctx: AppContext, spec: JobSpec) -> None:
    """What the spec model cannot know: the service reads no server paths, and uploads must exist."""
    if spec.dataset.name == "npz":
        raise Invalid(
            ["body", "dataset", "name"],
            "dataset 'npz' reads a file on the server and is not available over the API; upload the file "
            'with POST /v1/datasets and use {"name": "upload", "upload_id": <its id>}',
        )
    if spec.dataset.name == "upload":
        with ctx.tx() as s:
            if not repo.upload_exists(s, spec.dataset.upload_id or ""):
                raise Invalid(
                    ["body", "dataset", "upload_id"],
                    f"no uploaded dataset with id {spec.dataset.upload_id!r}; upload one with POST "
                    "/v1/datasets (GET /v1/datasets lists them)",
                )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={200: {"model": JobOut, "description": "Replay of an earlier request with this Idempotency-Key."}},
)
def submit_job(
    spec: JobSpec,
    ctx: Ctx,
    response: Response,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Retrying a POST with the same key returns the first job."),
    ] = None,
) -> JobOut:
    """Validate and store a job, then queue it (queue `gpu` for device 'cuda', else `cpu`)."""
    _check_dataset(ctx, spec)
    try:
        with ctx.tx() as s:
            job, created = repo.create_job(s, spec, idempotency_key)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with ctx.tx() as s:  # a concurrent request with the same key stored it first
            job, created = repo.create_job(s, spec, idempotency_key)
    if created or job.enqueued_at is None:
        try:
            enqueue(ctx.celery, ctx.settings, job.id, job.queue)
            with ctx.tx() as s:
                repo.mark_enqueued(s, job.id)
        except Exception:  # the job is stored; a worker's orphan sweep enqueues it later
            log.exception("could not enqueue job %s; the orphan sweep will retry", job.id)
    with ctx.tx() as s:
        job = repo.get_job(s, job.id)
        out = views.job_detail(job)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("", response_model=JobPage)
def list_jobs(
    ctx: Ctx,
    status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> JobPage:
    """Jobs, newest first, a page at a time."""
    with ctx.tx() as s:
        jobs, next_cursor = repo.list_jobs(s, status=status_, limit=limit, cursor=cursor)
        return JobPage(jobs=[views.job_summary(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: str, ctx: Ctx) -> JobOut:
    with ctx.tx() as s:
        return views.job_detail(repo.get_job(s, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT, 202: {"model": JobOut, "description": "Running: stops at its next step."}},
)
def cancel_job(job_id: str, ctx: Ctx) -> JSONResponse:
    """Queued: cancelled at once (200). Running: stops at its next step, keeping what it stored (202)."""
    with ctx.tx() as s:
        job = repo.request_cancel(s, job_id, ctx.settings.stale_after_seconds)
        out = views.job_detail(job)
    code = status.HTTP_202_ACCEPTED if out.status == "running" else status.HTTP_200_OK
    return JSONResponse(out.model_dump(mode="json"), status_code=code)


@router.delete(
    "/{job_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses={**NOT_FOUND, **CONFLICT}
)
def delete_job(job_id: str, ctx: Ctx) -> Response:
    """Delete a finished job with its metrics and checkpoints."""
    with ctx.tx() as s:
        repo.delete_job(s, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/metrics", response_model=MetricPage, responses=NOT_FOUND)
def get_metrics(
    job_id: str,
    ctx: Ctx,
    since: Annotated[int, Query(ge=0, description="Only rows with seq > since.")] = 0,
    student: Annotated[int | None, Query(ge=0)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> MetricPage:
    """Per-epoch metric rows in storage order; poll with since=next_since for the new ones."""
    with ctx.tx() as s:
        rows = repo.list_metrics(s, job_id, since=since, student=student, limit=limit)
        return views.metric_page(job_id, rows, since)


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def list_checkpoints(job_id: str, ctx: Ctx) -> CheckpointList:
    """Each student's `best` and `final` checkpoint so far."""
    with ctx.tx() as s:
        job = repo.get_job(s, job_id)
        return views.checkpoint_list(job, repo.list_checkpoints(s, job_id))


@router.get(
    "/{job_id}/checkpoints/{student}/{kind}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "A safetensors file."},
        304: {"description": "If-None-Match matched the ETag (the sha256)."},
        **NOT_FOUND,
    },
)
def download_checkpoint(job_id: str, student: int, kind: CheckpointKind, request: Request, ctx: Ctx) -> Response:
    """The student's weights as safetensors; `alignahead.load_student(bytes)` rebuilds it."""
    with ctx.tx() as s:
        meta = repo.get_checkpoint(s, job_id, student, kind)
        # a 'best' checkpoint is replaced while training runs: caches must revalidate
        headers = {"ETag": f'"{meta.sha256}"', "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), meta.sha256):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        sha256, data = repo.checkpoint_data(s, job_id, student, kind)
    headers["ETag"] = f'"{sha256}"'
    headers["Content-Disposition"] = f'attachment; filename="{job_id}-student{student}-{kind}.safetensors"'
    return Response(data, media_type="application/octet-stream", headers=headers)


def _etag_matches(header: str | None, sha256: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or sha256 in tags
