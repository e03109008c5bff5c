"""The FastAPI application factory: `create_app(settings)`; uvicorn serves `service.app:app_from_env`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.context import AppContext
from service.errors import Invalid, ServiceError
from service.routes import datasets, health, jobs
from service.settings import Settings

log = logging.getLogger("alignahead.service")

DESCRIPTION = """Train graph neural networks by online Alignahead distillation (Guo et al., IJCNN 2022).

Submit a job (`POST /v1/jobs`, body: the job spec), poll it (`GET /v1/jobs/{id}`, new metric rows with
`GET /v1/jobs/{id}/metrics?since=SEQ`), download the trained students
(`GET /v1/jobs/{id}/checkpoints/{student}/{kind}`; `alignahead.load_student` loads them).
Own graphs: upload an npz with `POST /v1/datasets`, then use `{"name": "upload", "upload_id": ...}`.
Errors are JSON: `detail` says what is wrong and how to fix it.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    context = AppContext.build(settings or Settings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        context.close()

    app = FastAPI(title="alignahead", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.context = context
    app.include_router(jobs.router)
    app.include_router(datasets.router)
    app.include_router(health.router)
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.app:app_from_env`: settings from ALIGNAHEAD_* variables."""
    return create_app(Settings())


def _summary(errors: list[dict[str, Any]]) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)


def _unprocessable(errors: list[dict[str, Any]]) -> JSONResponse:
    # FastAPI's shape (detail: a list with loc/msg/type) plus one readable line for scripts
    return JSONResponse({"detail": errors, "message": _summary(errors)}, status_code=422)


async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
    if isinstance(exc, Invalid):
        return _unprocessable([{"loc": exc.loc, "msg": exc.message, "type": "value_error"}])
    return JSONResponse({"detail": exc.message}, status_code=exc.status_code)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = []
    for e in exc.errors():
        msg = str(e.get("msg", ""))
        loc = list(e.get("loc", ()))
        if e.get("type") == "extra_forbidden":
            msg = f"unknown field {loc[-1]!r}; remove it or check its spelling (see the JobSpec schema)"
        elif e.get("type") == "json_invalid":
            msg = f"the body is not valid JSON ({e.get('ctx', {}).get('error', msg)})"
        # the offending input is left out: it may be a whole (large) body
        errors.append({"loc": loc, "msg": msg, "type": e.get("type", "value_error")})
    return _unprocessable(errors)
