"""/v1/jobs: submit, list, inspect, cancel and delete jobs; read their metrics and checkpoints."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Depends, Header, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sse_starlette import EventSourceResponse

from alignahead.enums import CheckpointKind, JobStatus
from alignahead.spec import MAX_TAG_CHARS, JobSpec
from service.api import events, views
from service.api.auth import api_key, current_tenant, known_query
from service.api.context import AppContext
from service.api.deps import Ctx, JobId, RequestId, TenantId
from service.api.schemas import (
    DEFAULT_METRIC_ROWS,
    MAX_LOG_LINES,
    MAX_LOG_SEQ,
    MAX_METRIC_ROWS,
    MAX_SEQ,
    MAX_STUDENT,
    CheckpointList,
    ErrorOut,
    JobOut,
    JobPage,
    LogPage,
    MetricPage,
)
from service.core import dispatch, limits
from service.core import repository as repo
from service.core.errors import Invalid

log = logging.getLogger("alignahead.service")


def _err(description: str) -> dict:
    return {"model": ErrorOut, "description": description}


router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(current_tenant), Depends(known_query)],
    responses={401: _err("No valid API key."), 422: _err("A parameter or the body is not valid.")},
)
NOT_FOUND = {404: _err("No such job for this key's tenant.")}
CONFLICT = {409: _err("The job's status does not allow it.")}


# One event of GET /v1/jobs/{id}/events, in OpenAPI's terms for an event stream (itemSchema, as FastAPI's
# own SSE routes are documented): `data` is JSON, a JobOut (status), a MetricOut (metric) or {"status", ...}
# (end); the first event only says `retry`.
EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "event": {"type": "string", "enum": ["status", "metric", "end"]},
        "id": {"type": "string", "description": "The seq of the last metric row sent; resume with Last-Event-ID."},
        "retry": {"type": "integer", "minimum": 0},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/JobOut"},
                    {"$ref": "#/components/schemas/MetricOut"},
                    {"type": "object", "required": ["status"], "properties": {"status": {"type": ["string", "null"]}}},
                ]
            },
        },
    },
}


SUBMIT_EXAMPLES = {
    "synthetic": {
        "summary": "Two GCN students on a synthetic graph",
        "description": "Alignahead distillation between two GCN students, 50 epochs on CPU; every omitted field "
        "takes its default (see the JobSpec schema).",
        "value": {
            "name": "synthetic-gcn",
            "tags": ["demo", "gcn"],
            "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 600, "num_features": 32}},
            "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 64}],
            "distillation": {"strategy": "alignahead", "alpha": 1.0, "tau": "auto"},
            "training": {"epochs": 50, "lr": 0.01, "device": "cpu"},
        },
    },
    "cora": {
        "summary": "A GAT and a GCN on Cora",
        "value": {
            "name": "cora-mixed",
            "dataset": {"name": "cora"},
            "students": [
                {"arch": "gat", "hidden_layers": 1, "hidden_size": 8, "heads": 8, "out_heads": 1, "dropout": 0.6},
                {"arch": "gcn", "hidden_layers": 1, "hidden_size": 64, "dropout": 0.5},
            ],
            "training": {"epochs": 200, "weight_decay": 0.0005, "patience": 100},
        },
    },
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobOut,
    responses={
        200: {"model": JobOut, "description": "Replay of an earlier request with this Idempotency-Key."},
        409: _err("The Idempotency-Key was used with a different spec."),
        413: _err("The JSON body is larger than max_json_bytes."),
        429: _err("Too many active jobs or submissions for this tenant; see Retry-After."),
    },
)
def submit_job(
    spec: Annotated[JobSpec, Body(openapi_examples=SUBMIT_EXAMPLES)],
    ctx: Ctx,
    tenant: TenantId,
    response: Response,
    request_id: RequestId,
    background: BackgroundTasks,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=200, description="Retrying a POST with the same key returns the first job."),
    ] = None,
) -> JobOut:
    """Validate and store a job, then queue it (queue `gpu` for device 'cuda', else `cpu`).

    If the broker is down the job is still stored (201, `queued`) and leaves for the broker within
    seconds of its return."""
    # The answer goes as soon as the job is stored; the broker gets it right after (background): the
    # database is the truth, and what the broker has not taken the dispatcher sends within seconds.
    limits.check_spec(ctx, tenant, spec)
    settings = ctx.settings
    kwargs = {
        "idempotency_key": idempotency_key,
        "max_active": settings.max_active_jobs,
        "per_minute": settings.max_submissions_per_minute,
        "time_limit_seconds": settings.max_job_seconds,
        "request_id": request_id,
    }
    try:
        with ctx.tx() as s:
            job, created = repo.submit(s, tenant, spec, **kwargs)
            out = views.job_detail(job)
    except IntegrityError:
        if idempotency_key is None:
            raise
        with ctx.tx() as s:  # a concurrent request with the same key stored it first
            job, created = repo.submit(s, tenant, spec, **kwargs)
            out = views.job_detail(job)
    if created:
        log.info("job %s submitted to queue %s", job.id, job.queue, extra={"job_id": job.id})
        background.add_task(dispatch.send, ctx.tx, ctx.celery, settings, job.id, job.queue)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


@router.get("", response_model=JobPage)
def list_jobs(
    ctx: Ctx,
    tenant: TenantId,
    status_: Annotated[JobStatus | None, Query(alias="status", description="Only jobs in this status.")] = None,
    name: Annotated[
        str | None, Query(min_length=1, max_length=200, description="Only jobs with exactly this name (spec `name`).")
    ] = None,
    tag: Annotated[
        list[str] | None,
        Query(
            max_length=16,
            description="Only jobs carrying this tag (spec `tags`); repeat it (`?tag=a&tag=b`) for jobs carrying all.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page.")] = None,
    study: Annotated[
        str | None, Query(pattern="^[0-9a-f]{32}$", description="Only the jobs of this study (its id).")
    ] = None,
) -> JobPage:
    """This tenant's jobs, newest first, a page at a time; filters combine (all must hold)."""
    tags = tag or []
    for t in tags:
        if not 1 <= len(t) <= MAX_TAG_CHARS:
            raise Invalid(["query", "tag"], f"a tag has 1 to {MAX_TAG_CHARS} characters; got {len(t)}")
    with ctx.read() as s:
        jobs, next_cursor = repo.list_jobs(
            s, tenant, status=status_, name=name, tags=tags, limit=limit, cursor=cursor, study_id=study
        )
        return JobPage(jobs=[views.job_summary(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=NOT_FOUND)
def get_job(job_id: JobId, ctx: Ctx, tenant: TenantId) -> Response:
    with ctx.read() as s:
        return _json(views.job_detail(repo.get_job(s, tenant, job_id)))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={**NOT_FOUND, **CONFLICT, 202: {"model": JobOut, "description": "Running: stops within its epoch."}},
)
def cancel_job(job_id: JobId, ctx: Ctx, tenant: TenantId) -> JSONResponse:
    """Queued: cancelled at once (200). Running: stops within the epoch it is in, keeping what it
    stored (202)."""
    with ctx.tx() as s:
        job = repo.request_cancel(s, tenant, job_id)
        out = views.job_detail(job)
    ctx.poll_cache.forget(job_id)  # a client reads its own write
    ctx.feeds.poke(tenant, job_id)
    code = status.HTTP_202_ACCEPTED if out.status == JobStatus.RUNNING else status.HTTP_200_OK
    return JSONResponse(out.model_dump(mode="json"), status_code=code)


@router.delete(
    "/{job_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response, responses={**NOT_FOUND, **CONFLICT}
)
def delete_job(job_id: JobId, ctx: Ctx, tenant: TenantId) -> Response:
    """Delete a finished job with its metrics and checkpoints."""
    with ctx.tx() as s:
        repo.delete_job(s, tenant, job_id)
    ctx.poll_cache.forget(job_id)
    ctx.feeds.poke(tenant, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/metrics", response_model=MetricPage, responses=NOT_FOUND)
def get_metrics(
    job_id: JobId,
    ctx: Ctx,
    tenant: TenantId,
    since: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only rows with seq > since.")] = 0,
    student: Annotated[int | None, Query(ge=0, le=MAX_STUDENT)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_METRIC_ROWS)] = DEFAULT_METRIC_ROWS,
) -> Response:
    """Per-epoch metric rows in increasing `seq`; poll with since=next_since for the new ones. Each
    (student, epoch) appears exactly once, also across worker crashes and resumes."""
    with ctx.read() as s:
        rows = repo.list_metrics(s, tenant, job_id, since=since, student=student, limit=limit)
        return _json(views.metric_page(job_id, rows, since))


@router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}, "itemSchema": EVENT_SCHEMA}},
            "description": "Server-Sent Events: `status` (the job), `metric` (a row, `id` its seq), `end`.",
        },
        **NOT_FOUND,
    },
)
async def get_job_events(
    job_id: JobId,
    ctx: Ctx,
    tenant: TenantId,
    key: Annotated[str | None, Depends(api_key)],
    since: Annotated[int | None, Query(ge=0, le=MAX_SEQ, description="Only rows with seq > since.")] = None,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_SEQ,
            description="Resume after this metric seq (the `id` of the last event received).",
        ),
    ] = None,
) -> EventSourceResponse:
    """The job's status changes and new metric rows as they are stored, until it ends.

    Every metric row with seq > the resume point comes once, in seq order (`event: metric`, `id: <seq>`);
    the job comes as `event: status` when the stream opens and whenever it changes, a finished job's
    status after all of its rows; then an `end` event, and the stream closes. Reconnect with
    `Last-Event-ID: <last id>` (or `?since=`) to resume: nothing is missed or repeated. The stream
    also ends (`end` with status null and the reason) when the job is deleted, or when the key that
    opened it is revoked: within `auth_cache_seconds`, as for its other requests."""
    await run_in_threadpool(_check_job, ctx, tenant, job_id)  # a 404 before the stream starts
    start = max(since or 0, last_event_id or 0)
    return events.response(ctx, tenant, job_id, start, None if ctx.settings.auth_disabled else key)


def _check_job(ctx: AppContext, tenant: str, job_id: str) -> None:
    with ctx.read() as s:
        repo.get_job(s, tenant, job_id)


@router.get("/{job_id}/logs", response_model=LogPage, responses=NOT_FOUND)
def get_job_logs(
    job_id: JobId,
    ctx: Ctx,
    tenant: TenantId,
    since: Annotated[int, Query(ge=0, le=MAX_LOG_SEQ, description="Only lines with seq > since.")] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_LINES)] = MAX_LOG_LINES,
) -> Response:
    """The log lines its workers kept: the library's and the worker's messages at INFO and above
    (loading, resuming, attempts, warnings such as a flat distillation loss, a failure's traceback).
    At most job_log_max_lines per job: the first half and the latest; `omitted` counts the rest."""
    with ctx.read() as s:
        rows, _last, omitted = repo.list_logs(s, tenant, job_id, since=since, limit=limit)
        return _json(views.log_page(job_id, rows, since, omitted))


@router.get("/{job_id}/checkpoints", response_model=CheckpointList, responses=NOT_FOUND)
def list_checkpoints(job_id: JobId, ctx: Ctx, tenant: TenantId) -> CheckpointList:
    """Each student's `best` and `final` checkpoint so far."""
    with ctx.read() as s:
        job, rows = repo.list_checkpoints(s, tenant, job_id)
        return views.checkpoint_list(job, rows)


@router.get(
    "/{job_id}/checkpoints/{student}/{kind}",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "A safetensors file."},
        304: {"description": "If-None-Match matched the ETag (the sha256)."},
        **NOT_FOUND,
    },
)
def download_checkpoint(
    job_id: JobId,
    student: Annotated[int, Path(ge=0, le=MAX_STUDENT)],
    kind: CheckpointKind,
    request: Request,
    ctx: Ctx,
    tenant: TenantId,
) -> Response:
    """The student's weights as safetensors; `alignahead.load_student(bytes)` rebuilds it."""
    with ctx.read() as s:
        meta = repo.get_checkpoint(s, tenant, job_id, student, kind)
        # a 'best' checkpoint is replaced while training runs: caches must revalidate
        headers = {"ETag": f'"{meta.sha256}"', "Cache-Control": "no-cache"}
        if _etag_matches(request.headers.get("if-none-match"), meta.sha256):
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        sha256, data = repo.checkpoint_data(s, job_id, student, kind)
    headers["ETag"] = f'"{sha256}"'
    headers["Content-Disposition"] = f'attachment; filename="{job_id}-student{student}-{kind}.safetensors"'
    return Response(data, media_type="application/octet-stream", headers=headers)


def _json(body: BaseModel) -> Response:
    """A body built from our own models, serialised once (the hot polling paths skip FastAPI's second
    validation of what they return; the response_model still documents it)."""
    return Response(body.__pydantic_serializer__.to_json(body), media_type="application/json")


def _etag_matches(header: str | None, sha256: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/").strip('"') for t in header.split(",")]
    return "*" in tags or sha256 in tags
