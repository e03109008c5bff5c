"""Liveness (the process answers) and readiness (its database and broker answer)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service.broker import is_sqla_broker
from service.context import AppContext
from service.db import make_engine
from service.deps import Ctx
from service.schemas import HealthOut

router = APIRouter(tags=["health"])
BROKER_TIMEOUT_S = 5.0


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get("/readyz", response_model=HealthOut, responses={503: {"model": HealthOut}})
def readyz(ctx: Ctx) -> JSONResponse:
    checks = {"database": _check_database(ctx), "broker": _check_broker(ctx)}
    ok = all(v == "ok" for v in checks.values())
    body = HealthOut(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _check_database(ctx: AppContext) -> str:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as e:
        return f"unreachable: {type(e).__name__}: {e}"


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
    except Exception as e:
        return f"unreachable: {type(e).__name__}: {e}"
