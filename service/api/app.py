"""The FastAPI application factory: `create_app(settings)`; uvicorn serves `service.api.app:app_from_env`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from service.api import guards, handlers
from service.api.context import AppContext
from service.api.monitoring import ApiMetrics, JobGauges, RequestMetrics
from service.api.polling import PollingFastPath
from service.api.routes import compare, datasets, health, jobs, monitoring, pages, studies
from service.core import keys, logs
from service.core import repository as repo
from service.core.dispatch import Dispatcher
from service.core.errors import ServiceError
from service.core.settings import Settings

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
    logs.configure_api(settings.log_format)
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
    app.include_router(compare.router)
    app.include_router(datasets.router)
    app.include_router(health.router)
    app.include_router(monitoring.router)
    # the dashboard at /, the API docs at /docs and /redoc, their files at /static
    app.include_router(pages.router)
    app.mount("/static", pages.static_files(), name="static")
    generate_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with what the guards answer and every error answer as JSON."""
        if app.openapi_schema is None:
            app.openapi_schema = guards.document(handlers.document_errors(generate_openapi()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_exception_handler(ServiceError, handlers.service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, handlers.validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, handlers.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, handlers.unexpected_error)
    app.add_middleware(PollingFastPath, context=context)  # innermost: after the guards and CORS
    app.add_middleware(guards.Guards, settings=settings)
    if settings.cors_origins:  # outside the guards: answers preflights before they look
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "If-None-Match", "X-Request-ID"],
            expose_headers=["Location", "Retry-After", "ETag", "Content-Disposition", "X-Request-ID"],
        )
    if settings.metrics_token is not None:  # counts every request, preflights and refusals included
        context.metrics = _metrics(context)
        app.add_middleware(RequestMetrics, metrics=context.metrics, routes=app.router.routes)
    app.add_middleware(logs.RequestIds)  # outermost: every answer says its request id
    return app


def _metrics(context: AppContext) -> ApiMetrics:
    def read() -> repo.JobTally:
        with context.read() as s:
            return repo.job_tally(s)

    gauges = JobGauges(read, context.settings.metrics_cache_seconds)
    return ApiMetrics.build(gauges, context.settings.metrics_dir)


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.api.app:app_from_env`: settings from ALIGNAHEAD_* variables."""
    return create_app(Settings())
