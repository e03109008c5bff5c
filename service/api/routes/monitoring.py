"""GET /metrics: Prometheus's text format, for the operator's token only (service.api.monitoring says why)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from service.api.auth import bearer_key
from service.api.deps import Ctx
from service.api.monitoring import CONTENT_TYPE
from service.core.errors import NotFound, Unauthorized

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = ctx.settings.metrics_token
    if token is None or ctx.metrics is None:
        raise NotFound("metrics are off: the operator serves them by setting ALIGNAHEAD_METRICS_TOKEN")
    sent = bearer_key(authorization or "")
    if sent is None or not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
        raise Unauthorized(
            "GET /metrics needs the operator's token: send 'Authorization: Bearer <ALIGNAHEAD_METRICS_TOKEN>'"
        )
    body = await run_in_threadpool(ctx.metrics.exposition)  # may read the job table
    return Response(body, media_type=CONTENT_TYPE)
