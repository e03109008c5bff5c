"""A job's live events as Server-Sent Events: `GET /v1/jobs/{id}/events`.

    event: metric   id: <seq>   data: one metric row, as GET /v1/jobs/{id}/metrics shows it
    event: status   id: <seq>   data: the job, as GET /v1/jobs/{id} shows it (after the rows stored so
                                far, then whenever it changes)
    event: end                  data: {"status": ...}, after the last status; then the stream closes

Every metric row with seq > the resume point (the `Last-Event-ID` header or `?since=`, whichever is
larger) is sent once, in seq order; the `id` of every event is the seq of the last row sent before
it, so a client (or a browser's EventSource) that reconnects with it misses nothing and gets nothing
twice. The job is read before its rows each round, so when a finished status is seen every row it
stored is sent before that status. A status event goes out when anything of the job but its
heartbeat changes.

The stream reads the database every `events_poll_seconds` (no broker or notification channel needed,
the same on SQLite and PostgreSQL). sse-starlette's EventSourceResponse writes the events, says
`: ping` every `events_ping_seconds` and stops the stream when the client goes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent

from service import repository as repo
from service import views
from service.context import AppContext
from service.enums import FINISHED
from service.errors import NotFound
from service.schemas import JobOut, MetricOut

PAGE = 1000  # metric rows per read; a stream far behind catches up a page per round, without sleeping
RETRY_MS = 1000  # the reconnection delay suggested to EventSource clients
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def response(ctx: AppContext, tenant: str, job_id: str, since: int) -> EventSourceResponse:
    """The stream of the job's events after metric seq `since`."""
    return EventSourceResponse(
        stream(ctx, tenant, job_id, since),
        headers=HEADERS,
        ping=ctx.settings.events_ping_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        sep="\n",
    )


def _json(model: BaseModel) -> str:
    return model.__pydantic_serializer__.to_json(model).decode()


def read(ctx: AppContext, tenant: str, job_id: str, since: int) -> tuple[JobOut | None, list[MetricOut], bool]:
    """(the job, or None once it is gone; its rows after `since`; whether more rows may follow)."""
    with ctx.read() as s:
        try:
            job = views.job_detail(repo.get_job(s, tenant, job_id))
            rows = repo.list_metrics(s, tenant, job_id, since=since, student=None, limit=PAGE)
        except NotFound:  # deleted meanwhile
            return None, [], False
        return job, views.metric_page(job_id, rows, since).rows, len(rows) == PAGE


async def stream(ctx: AppContext, tenant: str, job_id: str, since: int) -> AsyncIterator[ServerSentEvent]:
    ctx.event_streams += 1
    try:
        yield ServerSentEvent(retry=RETRY_MS)  # said once, first
        async for event in _events(ctx, tenant, job_id, since):
            yield event
    finally:  # also when the client went away: the stream is cancelled then
        ctx.event_streams -= 1


async def _events(ctx: AppContext, tenant: str, job_id: str, since: int) -> AsyncIterator[ServerSentEvent]:
    cursor = since
    shown: dict | None = None  # the last job sent, without its heartbeat
    while True:
        job, rows, more = await anyio.to_thread.run_sync(read, ctx, tenant, job_id, cursor)
        if job is None:
            yield ServerSentEvent('{"status":null,"reason":"the job was deleted"}', event="end", id=str(cursor))
            return
        finished = job.status in FINISHED
        state = job.model_dump(exclude={"heartbeat_at"})
        if state != shown and not finished:  # a live job: its status first, then what it stored
            yield ServerSentEvent(_json(job), event="status", id=str(cursor))
            shown = state
        for row in rows:
            cursor = row.seq
            yield ServerSentEvent(_json(row), event="metric", id=str(cursor))
        if not more and state != shown:  # a finished job: its status after every row it stored
            yield ServerSentEvent(_json(job), event="status", id=str(cursor))
            shown = state
        if more:
            continue  # far behind: the rest without a pause
        if finished:
            end = json.dumps({"status": job.status}, separators=(",", ":"))
            yield ServerSentEvent(end, event="end", id=str(cursor))
            return
        await anyio.sleep(ctx.settings.events_poll_seconds)
