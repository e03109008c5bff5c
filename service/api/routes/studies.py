"""/v1/studies: a base spec run over seeds and a grid of spec values, one ordinary job per combination
and seed, and the table that compares the cells (alignahead.studies computes it)."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from alignahead import studies
from alignahead.spec import JobSpec
from service.api import views
from service.api.auth import current_tenant, known_query
from service.api.context import AppContext
from service.api.deps import Ctx, RequestId, StudyId, TenantId
from service.api.schemas import ErrorOut, StudyIn, StudyOut, StudyPage
from service.core import dispatch, limits
from service.core import repository as repo
from service.core.errors import Invalid


def _err(description: str) -> dict:
    return {"model": ErrorOut, "description": description}


router = APIRouter(
    prefix="/v1/studies",
    tags=["studies"],
    dependencies=[Depends(current_tenant), Depends(known_query)],
    responses={401: _err("No valid API key."), 422: _err("A parameter or the body is not valid.")},
)
NOT_FOUND = {404: _err("No such study for this key's tenant.")}


def _job_name(prefix: str, run: studies.Run) -> str:
    parts = [prefix, studies.combo_label(run.cell), f"seed={run.seed}"]
    return " ".join(p for p in parts if p)[:200]


def _check_limits(ctx: AppContext, tenant: str, runs: list[studies.Run]) -> None:
    """The operator's limits (as POST /v1/jobs applies them), once per cell: seeds change no size."""
    seen = set()
    for run in runs:
        key = json.dumps(run.cell, sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        try:
            limits.check_spec(ctx, tenant, run.spec)
        except Invalid as e:
            where = ".".join(str(p) for p in e.loc[1:])
            hits = [p for p in run.cell if where == p or where.startswith(p + ".") or p.startswith(where + ".")]
            loc = ["body", "axes", hits[0]] if hits else ["body", "spec", *e.loc[1:]]
            label = studies.combo_label(run.cell)
            raise Invalid(loc, f"combination {label}: {e.message}" if label else e.message, e.kind) from e


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyOut,
    responses={
        413: _err("The JSON body is larger than max_json_bytes."),
        429: _err("The study's jobs do not fit the tenant's active jobs or submissions; see Retry-After."),
    },
)
def submit_study(body: StudyIn, ctx: Ctx, tenant: TenantId, response: Response, request_id: RequestId) -> StudyOut:
    """Validate every combination up front, then store the study and one queued job per combination
    and seed, all or none: a study whose jobs do not fit the tenant's limits is refused whole."""
    settings = ctx.settings
    try:
        runs = studies.expand(
            body.spec, body.seeds, body.axes, max_jobs=settings.max_study_jobs, limit_name="ALIGNAHEAD_MAX_STUDY_JOBS"
        )
    except studies.StudyError as e:
        raise Invalid(["body", *e.loc], e.message) from e
    _check_limits(ctx, tenant, runs)
    for what, limit, setting in (
        ("queued or running jobs", settings.max_active_jobs, "MAX_ACTIVE_JOBS"),
        ("submissions per minute", settings.max_submissions_per_minute, "MAX_SUBMISSIONS_PER_MINUTE"),
    ):
        if len(runs) > limit:  # could never fit, however long one waits: not a 429
            raise Invalid(["body", "axes"], f"the study has {len(runs)} jobs, more than the tenant's limit of "
                          f"{limit:g} {what} (ALIGNAHEAD_{setting}); use fewer seeds or values")  # fmt: skip
    prefix = body.name or runs[0].spec.name or "study"
    specs: list[JobSpec] = [r.spec.model_copy(update={"name": _job_name(prefix, r)}) for r in runs]
    with ctx.tx() as s:
        study, jobs = repo.create_study(
            s,
            tenant,
            name=body.name or runs[0].spec.name,  # unnamed: the spec's name, as its jobs are
            spec=body.spec,
            seeds=studies.seed_list(body.seeds),
            axes=studies.normalized_axes(runs),
            jobs=specs,
            max_active=settings.max_active_jobs,
            per_minute=settings.max_submissions_per_minute,
            time_limit_seconds=settings.max_job_seconds,
            request_id=request_id,
        )
        out = views.study_detail(study, jobs)
        sends = [(j.id, j.queue) for j in jobs]
    for job_id, queue in sends:
        if not dispatch.send(ctx.tx, ctx.celery, settings, job_id, queue):
            break  # the broker is down: the dispatcher sends the rest when it is back
    response.headers["Location"] = f"/v1/studies/{out.id}"
    return out


@router.get("", response_model=StudyPage)
def list_studies(
    ctx: Ctx,
    tenant: TenantId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page.")] = None,
) -> StudyPage:
    """This tenant's studies, newest first, a page at a time, with their jobs counted per status."""
    with ctx.read() as s:
        page, next_cursor = repo.list_studies(s, tenant, limit=limit, cursor=cursor)
        return StudyPage(studies=[views.study_summary(st, counts) for st, counts in page], next_cursor=next_cursor)


@router.get("/{study_id}", response_model=StudyOut, responses=NOT_FOUND)
def get_study(study_id: StudyId, ctx: Ctx, tenant: TenantId) -> StudyOut:
    """Status counts and the results table: per cell and student position, n, mean and sample std of
    test_at_best and best_val over seeds, and against the 'none' cell with the other axes equal, the
    mean paired difference, its 95% t interval and the paired t-test's p-value."""
    with ctx.read() as s:
        study = repo.get_study(s, tenant, study_id)
        return views.study_detail(study, repo.study_jobs(s, study_id))


@router.get(
    "/{study_id}/table.csv",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "One line per cell and student."}, **NOT_FOUND},
)
def study_csv(study_id: StudyId, ctx: Ctx, tenant: TenantId) -> Response:
    """The results table as CSV: the axes' values, student, jobs, then per metric n, mean, std and the
    comparison with the 'none' cell (empty where there is none)."""
    with ctx.read() as s:
        study = repo.get_study(s, tenant, study_id)
        rows = views.study_rows(study, repo.study_jobs(s, study_id))
        text = studies.table_csv(rows, list(study.axes))
    headers = {"Content-Disposition": f'attachment; filename="study-{study_id}.csv"'}
    return Response(text, media_type="text/csv", headers=headers)


@router.post("/{study_id}/cancel", response_model=StudyOut, responses=NOT_FOUND)
def cancel_study(study_id: StudyId, ctx: Ctx, tenant: TenantId) -> StudyOut:
    """Cancel every queued or running job: queued ones at once, running ones within their epoch.
    Finished jobs stay as they are."""
    with ctx.tx() as s:
        study, asked = repo.cancel_study(s, tenant, study_id)
    for job_id in asked:
        ctx.poll_cache.forget(job_id)
    with ctx.read() as s:
        return views.study_detail(repo.get_study(s, tenant, study_id), repo.study_jobs(s, study_id))


@router.delete(
    "/{study_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: _err("Some of its jobs are still queued or running.")},
)
def delete_study(study_id: StudyId, ctx: Ctx, tenant: TenantId) -> Response:
    """Delete a study whose jobs have all finished, with its jobs, their metrics and checkpoints (as
    DELETE /v1/jobs/{id} does for one job); cancel it first otherwise."""
    with ctx.tx() as s:
        deleted = repo.delete_study(s, tenant, study_id)
    for job_id in deleted:
        ctx.poll_cache.forget(job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
