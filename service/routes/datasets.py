"""/v1/datasets: upload npz graphs (validated, never unpickled) and list what a job can train on."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from alignahead.datasets import DatasetError, inspect_npz, list_datasets
from service import repository as repo
from service import views
from service.context import AppContext, get_context
from service.errors import Invalid
from service.schemas import BuiltinDataset, DatasetList, ErrorOut, UploadOut
from service.uploads import read_file_field

log = logging.getLogger("alignahead.service")

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
Ctx = Annotated[AppContext, Depends(get_context)]
NOT_FOUND = {404: {"model": ErrorOut, "description": "No such upload."}}

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


def _inspect(data: bytes) -> dict[str, Any]:
    try:
        return inspect_npz(data)
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
    responses={413: {"model": ErrorOut, "description": "Larger than max_upload_bytes."}},
)
async def upload_dataset(request: Request, ctx: Ctx) -> UploadOut:
    """Store an npz graph; use it in a job as `{"name": "upload", "upload_id": <id>}`."""
    data, filename = await read_file_field(request, ctx.settings.max_upload_bytes)
    summary = await run_in_threadpool(_inspect, data)
    return await run_in_threadpool(_store, ctx, data, filename, summary)


def _store(ctx: AppContext, data: bytes, filename: str | None, summary: dict[str, Any]) -> UploadOut:
    with ctx.tx() as s:
        return views.upload_out(repo.create_upload(s, data, filename, summary))


@router.get("", response_model=DatasetList)
def list_all(
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> DatasetList:
    """Uploads (newest first, paged) and the dataset names a job spec accepts."""
    with ctx.tx() as s:
        uploads, next_cursor = repo.list_uploads(s, limit=limit, cursor=cursor)
        out = [views.upload_out(u) for u in uploads]
    builtin = [
        BuiltinDataset(name=d.name, kind=d.kind, description=d.description)
        for d in list_datasets()
        if d.name != "npz"  # a server-side path: not offered over the API
    ]
    return DatasetList(uploads=out, next_cursor=next_cursor, builtin=builtin)


@router.get("/{upload_id}", response_model=UploadOut, responses=NOT_FOUND)
def get_upload(upload_id: str, ctx: Ctx) -> UploadOut:
    with ctx.tx() as s:
        return views.upload_out(repo.get_upload(s, upload_id))


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={**NOT_FOUND, 409: {"model": ErrorOut, "description": "A queued or running job uses it."}},
)
def delete_upload(upload_id: str, ctx: Ctx) -> Response:
    with ctx.tx() as s:
        repo.delete_upload(s, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
