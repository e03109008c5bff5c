"""/v1/metrics.csv: the metric rows of several jobs in one table, to compare runs side by side (the
dashboard's compare view links to it; pandas, R or a spreadsheet read it as it is)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import StringConstraints

from service.api import views
from service.api.auth import current_tenant, known_query
from service.api.deps import Ctx, TenantId
from service.api.schemas import MAX_COMPARE_JOBS, ErrorOut
from service.core import repository as repo


def _err(description: str) -> dict:
    return {"model": ErrorOut, "description": description}


router = APIRouter(
    prefix="/v1",
    tags=["jobs"],
    dependencies=[Depends(current_tenant), Depends(known_query)],
    responses={401: _err("No valid API key."), 422: _err("A parameter is not valid.")},
)
# an id's characters (a job id is 32 hex digits): anything else is a 422 before the database sees it
JobIdItem = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@router.get(
    "/metrics.csv",
    response_class=Response,
    responses={
        200: {"content": {"text/csv": {}}, "description": "One line per job, student and epoch."},
        404: _err("One of the jobs does not exist for this key's tenant."),
    },
)
def compare_metrics_csv(
    ctx: Ctx,
    tenant: TenantId,
    job: Annotated[
        list[JobIdItem],
        Query(
            min_length=1,
            max_length=MAX_COMPARE_JOBS,
            description=f"A job's id; repeat it (`?job=A&job=B`) for up to {MAX_COMPARE_JOBS} jobs.",
        ),
    ],
) -> Response:
    """Every metric row of the jobs named, job by job in the order given (a repeated id once): `job_id`,
    `job_name`, `student`, `arch`, then the fields of GET /v1/jobs/{id}/metrics. A job this tenant does
    not have is a 404, and nothing is returned."""
    job_ids = list(dict.fromkeys(job))
    with ctx.read() as s:
        text = views.metrics_csv(repo.metrics_of_jobs(s, tenant, job_ids))
    name = "-".join(j[:8] for j in job_ids)
    headers = {"Content-Disposition": f'attachment; filename="metrics-{name}.csv"'}
    return Response(text, media_type="text/csv", headers=headers)
