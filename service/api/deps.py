"""The dependencies routes declare, as Annotated aliases: one place that says what a route may need."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from service.api.auth import current_tenant
from service.api.context import AppContext, get_context
from service.core import repository as repo
from service.core.logs import current_request, new_request_id
from service.core.models import Job, Study


async def request_id() -> str:
    """The request's id (service.core.logs.RequestIds made or took it); async: no hop to the thread pool."""
    ctx = current_request()
    return ctx.request_id if ctx is not None and ctx.request_id else new_request_id()


Ctx = Annotated[AppContext, Depends(get_context)]
TenantId = Annotated[str, Depends(current_tenant)]
RequestId = Annotated[str, Depends(request_id)]

_ID_HELP = "The {}'s id, or a unique start of it (at least 6 characters, as the CLI and the dashboard show ids)."


def _resolved(ctx: AppContext, model: type[Job | Study], tenant: str, given: str, name: str) -> str:
    if not repo.is_prefix(given):
        return given
    with ctx.read() as s:
        return repo.resolve_prefix(s, model, tenant, given, ["path", name])


def _job_id(
    job_id: Annotated[str, Path(max_length=64, description=_ID_HELP.format("job"))], ctx: Ctx, tenant: TenantId
) -> str:
    return _resolved(ctx, Job, tenant, job_id, "job_id")


def _study_id(
    study_id: Annotated[str, Path(max_length=64, description=_ID_HELP.format("study"))], ctx: Ctx, tenant: TenantId
) -> str:
    return _resolved(ctx, Study, tenant, study_id, "study_id")


JobId = Annotated[str, Depends(_job_id)]  # the full id, also when the path gives a unique prefix
StudyId = Annotated[str, Depends(_study_id)]
