"""/v1/datasets: upload npz graphs (validated, never unpickled) and list what a job can train on."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from alignahead.datasets import DatasetError, inspect_npz, list_datasets
from service.api import views
from service.api.auth import current_tenant, known_query
from service.api.context import AppContext
from service.api.deps import Ctx, TenantId
from service.api.schemas import BuiltinDataset, DatasetList, ErrorOut, UploadOut
from service.api.uploads import check_unpacked_size, read_file_field
from service.core import limits
from service.core import repository as repo
from service.core.errors import Invalid

log = logging.getLogger("alignahead.service")


def _err(description: str) -> dict:
    return {"model": ErrorOut, "description": description}


router = APIRouter(
    prefix="/v1/datasets",
    tags=["datasets"],
    dependencies=[Depends(current_tenant), Depends(known_query)],
    responses={401: _err("No valid API key."), 422: _err("A parameter or the file is not valid.")},
)
NOT_FOUND = {404: _err("No such upload for this key's tenant.")}
UploadId = Annotated[str, Path(max_length=64, description="The upload's id.")]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "An .npz graph in the GNN-benchmark layout (Shchur et al.).",
                        }
                    },
                }
            }
        },
    }
}


def _inspect(data: bytes, max_unpacked: int) -> dict[str, Any]:
    check_unpacked_size(data, max_unpacked)  # declared sizes first: nothing is inflated past the cap
    try:
        return inspect_npz(data, max_bytes=max_unpacked)
    except DatasetError as e:
        raise Invalid(["body", "file"], str(e)) from e
    except Exception as e:  # any other parse failure is still the file's fault, not the server's
        log.warning("upload rejected by an unexpected %s", type(e).__name__, exc_info=True)
        raise Invalid(["body", "file"], f"not a readable npz graph: {type(e).__name__}: {e}") from e


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadOut,
    openapi_extra=_UPLOAD_BODY,
    responses={413: _err("Larger than max_upload_bytes, or unpacks to more than max_unpacked_bytes.")},
)
async def upload_dataset(request: Request, ctx: Ctx, tenant: TenantId) -> UploadOut:
    """Store an npz graph for this tenant; use it in a job as `{"name": "upload", "upload_id": <id>}`.
    Refused unless it is within the same limits a worker applies (sizes, unpacked bytes)."""
    settings = ctx.settings
    data, filename = await read_file_field(request, settings.max_upload_bytes)
    summary = await run_in_threadpool(_inspect, data, settings.max_unpacked_bytes)
    size = limits.upload_size(summary)
    limits.check_dataset(size, settings, ["body", "file"])
    limits.check_dense_features(size, settings)
    return await run_in_threadpool(_store, ctx, tenant, data, filename, summary)


def _store(ctx: AppContext, tenant: str, data: bytes, filename: str | None, summary: dict[str, Any]) -> UploadOut:
    with ctx.tx() as s:
        return views.upload_out(repo.create_upload(s, tenant, data, filename, summary))


@router.get("", response_model=DatasetList, name="list_datasets")
def list_all(
    ctx: Ctx,
    tenant: TenantId,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=500, description="next_cursor of the previous page.")] = None,
) -> DatasetList:
    """This tenant's uploads (newest first, paged) and the dataset names a job spec accepts."""
    with ctx.read() as s:
        uploads, next_cursor = repo.list_uploads(s, tenant, limit=limit, cursor=cursor)
        out = [views.upload_out(u) for u in uploads]
    builtin = [
        BuiltinDataset(name=d.name, kind=d.kind, description=d.description)
        for d in list_datasets()
        if d.name != "npz"  # a server-side path: not offered over the API
    ]
    return DatasetList(uploads=out, next_cursor=next_cursor, builtin=builtin)


@router.get("/{upload_id}", response_model=UploadOut, responses=NOT_FOUND)
def get_upload(upload_id: UploadId, ctx: Ctx, tenant: TenantId) -> UploadOut:
    with ctx.read() as s:
        return views.upload_out(repo.get_upload(s, tenant, upload_id))


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: _err("A queued or running job uses it.")},
)
def delete_upload(upload_id: UploadId, ctx: Ctx, tenant: TenantId) -> Response:
    with ctx.tx() as s:
        repo.delete_upload(s, tenant, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
