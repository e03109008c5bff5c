"""The FastAPI application factory: `create_app(settings)`; uvicorn serves `service.app:app_from_env`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service import handlers, keys
from service.context import AppContext
from service.dispatch import Dispatcher
from service.errors import ServiceError
from service.guards import Guards
from service.polling import PollingFastPath
from service.routes import datasets, health, jobs, pages, studies
from service.settings import Settings

log = logging.getLogger("alignahead.service")

DESCRIPTION = """Train graph neural networks by online Alignahead distillation (Guo et al., IJCNN 2022).

Every `/v1` request needs an API key: `Authorization: Bearer KEY` (`alignahead-admin keys create
--tenant NAME` makes one; `make run` makes one for tenant `local` and says where it keeps it). A key
sees only its tenant's jobs and uploads; another tenant's id is a 404.

Submit a job (`POST /v1/jobs`, body: the job spec), poll it (`GET /v1/jobs/{id}`, new metric rows with
`GET /v1/jobs/{id}/metrics?since=SEQ`), download the trained students
(`GET /v1/jobs/{id}/checkpoints/{student}/{kind}`; `alignahead.load_student` loads them).
Own graphs: upload an npz with `POST /v1/datasets`, then use `{"name": "upload", "upload_id": ...}`.
Seeds and a grid of settings: `POST /v1/studies` runs one job per combination and seed, and
`GET /v1/studies/{id}` compares the cells (mean, std, paired difference with strategy 'none').

Every error answer is `{"detail": "<what is wrong and how to fix it>", "errors": [{"loc", "msg", "type"}]}`;
limits answer 413/422/429 naming the setting that holds them.
"""


def operation_id(route: APIRoute) -> str:
    """A route's operation id is its function's name (`submit_job`, `list_jobs`, ...): what generated
    clients call their methods."""
    return route.name


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    context = AppContext.build(settings)
    dispatcher = Dispatcher(context.tx, context.celery, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.auth_disabled:
            log.warning("ALIGNAHEAD_AUTH_DISABLED is set: every request acts as tenant %r without a key",
                        keys.LOCAL_TENANT)  # fmt: skip
            with context.tx() as s:
                context.local_tenant_id = keys.ensure_tenant(s, keys.LOCAL_TENANT).id
        dispatcher.start()
        yield
        dispatcher.stop()
        context.close()

    app = FastAPI(
        title="alignahead",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
        # FastAPI's own docs pages load from a CDN; routes/pages.py serves them from here
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    app.include_router(jobs.router)
    app.include_router(studies.router)
    app.include_router(datasets.router)
    app.include_router(health.router)
    # the dashboard at /, the API docs at /docs and /redoc, their files at /static
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    app.add_exception_handler(ServiceError, handlers.service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, handlers.validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, handlers.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handlers.unexpected_error)
    app.add_middleware(PollingFastPath, context=context)  # innermost: after the guards and CORS
    app.add_middleware(Guards, settings=settings)
    if settings.cors_origins:  # outermost: answers preflights before the guards look
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match"],
            expose_headers=["Location", "Retry-After", "ETag", "Content-Disposition"],
        )
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.app:app_from_env`: settings from ALIGNAHEAD_* variables."""
    return create_app(Settings())
