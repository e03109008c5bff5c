"""A job's live events as Server-Sent Events: `GET /v1/jobs/{id}/events`.

    event: metric   id: <seq>   data: one metric row, as GET /v1/jobs/{id}/metrics shows it
    event: status   id: <seq>   data: the job, as GET /v1/jobs/{id} shows it (after the rows stored so
                                far, then whenever it changes)
    event: end                  data: {"status": ...}, after the last status; then the stream closes.
                                {"status": null, "reason": ...} when the job was deleted or the key
                                that opened the stream was revoked

Every metric row with seq > the resume point (the `Last-Event-ID` header or `?since=`, whichever is
larger) is sent once, in seq order; the `id` of every event is the seq of the last row sent before
it, so a client (or a browser's EventSource) that reconnects with it misses nothing and gets nothing
twice. A status event goes out when anything of the job but its heartbeat changes; a finished job's
status comes after every row it stored.

The events come from the job's feed (service/api/feeds.py): one reader per job and API process, every
`events_poll_seconds`, however many streams watch the job. The stream checks its key again whenever
the auth cache would (`auth_cache_seconds`), so it ends when its key is revoked as the key's requests
start failing. sse-starlette's EventSourceResponse writes the events (a round's events in one
write), says `: ping` every `events_ping_seconds` and stops the stream when the client goes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api.auth import KeyWatch
from service.api.context import AppContext
from service.api.feeds import JobFeed, Row, Snapshot

RETRY_MS = 1000  # the reconnection delay suggested to EventSource clients
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream
DELETED = "the job was deleted"
REVOKED = "the API key was revoked; open the stream again with a valid key"


def response(ctx: AppContext, tenant: str, job_id: str, since: int, key: str | None) -> EventSourceResponse:
    """The stream of the job's events after metric seq `since`, for as long as `key` stays valid."""
    watch = None if key is None else KeyWatch(ctx, key, tenant, floor=ctx.settings.events_poll_seconds)
    return EventSourceResponse(
        stream(ctx, tenant, job_id, since, watch),
        headers=HEADERS,
        ping=ctx.settings.events_ping_seconds,
        ping_message_factory=lambda: ServerSentEvent(comment="ping"),
        sep="\n",
    )


def _end(status: str | None, cursor: int, reason: str | None = None) -> ServerSentEvent:
    data = {"status": status} if reason is None else {"status": status, "reason": reason}
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), event="end", id=str(cursor))


async def stream(
    ctx: AppContext, tenant: str, job_id: str, since: int, watch: KeyWatch | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    ctx.event_streams += 1
    try:
        yield ServerSentEvent(retry=RETRY_MS)  # said once, first
        async with ctx.feeds.watch(tenant, job_id) as feed:
            async for event in _events(feed, since, watch):
                yield event
    finally:  # also when the client went away: the stream is cancelled then
        ctx.event_streams -= 1


async def _events(feed: JobFeed, since: int, watch: KeyWatch | None) -> AsyncIterator[ServerSentEvent | bytes]:
    cursor = since
    shown = 0  # the version of the job last sent (feeds count from 1)
    snap = await feed.first()
    while True:
        if snap.job is None:
            yield _end(None, cursor, DELETED)
            return
        if cursor < snap.base:  # behind the feed's window: this stream reads those rows itself
            page = await feed.read_page(cursor)
            if page is None:
                yield _end(None, cursor, DELETED)
                return
            rows: Sequence[Row] = page
        else:
            rows = snap.rows_after(cursor)
        out = []
        if snap.version != shown and not snap.finished:  # a live job: its status first, then its rows
            out.append(snap.status_event(cursor))
            shown = snap.version
        for row in rows:
            out.append(row.event)
            cursor = row.seq
        more = cursor < snap.top and bool(rows)  # a page read, the snapshot's rows not all sent yet
        if not more and snap.version != shown:  # a finished job: its status after every row it stored
            out.append(snap.status_event(cursor))
            shown = snap.version
        if out:
            yield b"".join(out)
        if more:
            continue  # far behind: the rest without a pause
        if snap.finished:
            yield _end(snap.job.status, cursor)
            return
        if not await _newer(snap, watch):
            yield _end(None, cursor, REVOKED)
            return
        snap = feed.latest or snap


async def _newer(snap: Snapshot, watch: KeyWatch | None) -> bool:
    """Wait until the feed has read again (True), checking the key whenever it falls due: False once
    it is no longer valid."""
    while True:
        with anyio.move_on_after(watch.seconds_left() if watch is not None else float("inf")):
            await snap.next.wait()
        if watch is not None and not await watch.still_valid():
            return False
        if snap.next.is_set():
            return True
