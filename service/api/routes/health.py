"""Liveness (the process answers) and readiness (its database and broker answer).

Both answer without a key (probes have none), so readiness names the dependency that is down and no
more: its address and error text go to the API's log, where the operator looks.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.api.context import AppContext
from service.api.deps import Ctx
from service.api.schemas import HealthOut
from service.core.broker import is_sqla_broker
from service.core.db import make_engine

log = logging.getLogger("alignahead.service")
router = APIRouter(tags=["health"])
UNREACHABLE = "unreachable"
BROKER_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "A dependency is down: `checks` says which (the log why)."}},
)
def readyz(ctx: Ctx) -> JSONResponse:
    """`checks`: 'ok' or 'unreachable' for the database and the broker."""
    checks = {"database": _check_database(ctx), "broker": _check_broker(ctx)}
    ok = all(v == "ok" for v in checks.values())
    body = HealthOut(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _check_database(ctx: AppContext) -> str:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception:
        log.warning("readiness: the database is unreachable", exc_info=True)
        return UNREACHABLE


def _check_broker(ctx: AppContext) -> str:
    url = ctx.settings.broker_url
    try:
        if is_sqla_broker(url):  # kombu would not touch the database until a message moves
            engine = make_engine(url.split("+", 1)[1])
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
            finally:
                engine.dispose()
        else:
            with ctx.celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)
        return "ok"
    except Exception:
        log.warning("readiness: the broker is unreachable", exc_info=True)
        return UNREACHABLE
