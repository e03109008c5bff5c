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
the same on SQLite and PostgreSQL), says `: ping` after `events_ping_seconds` of silence, and stops
when the client goes (Starlette cancels it).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
from pydantic import BaseModel

from service import repository as repo
from service import views
from service.context import AppContext
from service.enums import FINISHED
from service.errors import NotFound
from service.schemas import JobOut, MetricOut

PAGE = 1000  # metric rows per read; a stream far behind catches up a page per round, without sleeping
RETRY_MS = 1000  # the reconnection delay suggested to EventSource clients
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def frame(event: str, data: bytes, event_id: int | None = None) -> bytes:
    """One SSE event: `id`, `event`, a `data` line per line of data, a blank line."""
    head = b"" if event_id is None else b"id: %d\n" % event_id
    body = b"".join(b"data: " + line + b"\n" for line in (data.splitlines() or [b""]))
    return head + b"event: " + event.encode() + b"\n" + body + b"\n"


def _json(model: BaseModel) -> bytes:
    return model.__pydantic_serializer__.to_json(model)


def read(ctx: AppContext, tenant: str, job_id: str, since: int) -> tuple[JobOut | None, list[MetricOut], bool]:
    """(the job, or None once it is gone; its rows after `since`; whether more rows may follow)."""
    with ctx.read() as s:
        try:
            job = views.job_detail(repo.get_job(s, tenant, job_id))
            rows = repo.list_metrics(s, tenant, job_id, since=since, student=None, limit=PAGE)
        except NotFound:  # deleted meanwhile
            return None, [], False
        return job, views.metric_page(job_id, rows, since).rows, len(rows) == PAGE


def status_frame(job: JobOut, cursor: int, *, first: bool) -> bytes:
    retry = b"retry: %d\n" % RETRY_MS if first else b""  # said once, with the first event
    return retry + frame("status", _json(job), cursor)


async def stream(ctx: AppContext, tenant: str, job_id: str, since: int) -> AsyncIterator[bytes]:
    ctx.event_streams += 1
    try:
        async for chunk in _events(ctx, tenant, job_id, since):
            yield chunk
    finally:  # also when the client went away: Starlette cancels the stream then
        ctx.event_streams -= 1


async def _events(ctx: AppContext, tenant: str, job_id: str, since: int) -> AsyncIterator[bytes]:
    settings = ctx.settings
    cursor = since
    shown: dict | None = None  # the last job sent, without its heartbeat
    quiet_since = time.monotonic()
    while True:
        job, rows, more = await anyio.to_thread.run_sync(read, ctx, tenant, job_id, cursor)
        if job is None:
            yield frame("end", b'{"status":null,"reason":"the job was deleted"}', cursor)
            return
        finished = job.status in FINISHED
        state = job.model_dump(exclude={"heartbeat_at"})
        out: list[bytes] = []
        if state != shown and not finished:  # a live job: its status first, then what it stored
            out.append(status_frame(job, cursor, first=shown is None))
            shown = state
        for row in rows:
            cursor = row.seq
            out.append(frame("metric", _json(row), cursor))
        if not more and state != shown:  # a finished job: its status after every row it stored
            out.append(status_frame(job, cursor, first=shown is None))
            shown = state
        if out:
            yield b"".join(out)
            quiet_since = time.monotonic()
        if more:
            continue  # far behind: the rest without a pause
        if finished:
            yield frame("end", b'{"status":"%s"}' % job.status.encode(), cursor)
            return
        if time.monotonic() - quiet_since >= settings.events_ping_seconds:
            yield b": ping\n\n"
            quiet_since = time.monotonic()
        await anyio.sleep(settings.events_poll_seconds)
