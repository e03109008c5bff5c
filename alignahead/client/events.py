"""A job's live events: its status changes and new metric rows, until it ends.

From the service's Server-Sent Events stream `GET /v1/jobs/{id}/events` when it has one:
`event: status` carries the job as `GET /v1/jobs/{id}` shows it, `event: metric` one metric row with
`id: <seq>`; a dropped stream is reopened with `Last-Event-ID: <last seq>`, so no row is missed, and
rows are passed on once each even if a server repeats one. Where the service has no such endpoint
(404/405, or an answer that is not `text/event-stream`), the same events come from polling
`GET /v1/jobs/{id}` and `GET /v1/jobs/{id}/metrics?since=`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from httpx_sse import EventSource, SSEError

from alignahead import enums
from alignahead.client.errors import APIError, ServiceUnavailable
from alignahead.client.transport import Http

FINISHED = frozenset(enums.FINISHED)
STREAM_READ_TIMEOUT = 90.0  # the server sends a keep-alive comment well within this


@dataclass(frozen=True)
class Event:
    kind: Literal["status", "metric"]
    data: dict[str, Any]  # the job (status) or one metric row (metric)


@dataclass
class _Cursor:
    seq: int  # last metric seq passed on
    status: str | None = None


class _NoStream(Exception):
    """The service offers no event stream for jobs."""


def metric_pages(http: Http, job_id: str, since: int = 0, page: int = 1000, **params: Any) -> Iterator[dict[str, Any]]:
    """Every metric row with seq > since, a page at a time, in increasing seq."""
    while True:
        body = http.json("GET", f"/v1/jobs/{job_id}/metrics", params={"since": since, "limit": page, **params})
        rows = body["rows"]
        yield from rows
        if len(rows) < page:
            return
        since = body["next_since"]


def follow(
    http: Http, job_id: str, *, since: int = 0, poll_interval: float = 1.0, timeout: float | None = None
) -> Iterator[Event]:
    """Events of one job until it ends (its last event is a status whose status is finished).

    `timeout`: raise TimeoutError after that many seconds, whether or not events come meanwhile.
    """
    cursor = _Cursor(since)
    deadline = None if timeout is None else time.monotonic() + timeout
    if http.events_supported:
        try:
            yield from _stream(http, job_id, cursor, deadline)
            return
        except _NoStream:
            http.events_supported = False  # remembered for this client's later jobs
    yield from _poll(http, job_id, cursor, poll_interval, deadline)


def _check_deadline(job_id: str, cursor: _Cursor, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise TimeoutError(f"job {job_id} still {cursor.status or 'unfinished'} when the wait timed out")


def _check_job_exists(http: Http, job_id: str) -> None:
    """After a 404 from the events URL: raises NotFound if the job is what is missing (else the route is)."""
    http.json("GET", f"/v1/jobs/{job_id}")


def _stream(http: Http, job_id: str, cursor: _Cursor, deadline: float | None) -> Iterator[Event]:
    failures = 0
    while True:
        _check_deadline(job_id, cursor, deadline)
        read = STREAM_READ_TIMEOUT if deadline is None else min(STREAM_READ_TIMEOUT, deadline - time.monotonic())
        timeout = httpx.Timeout(http.client.timeout.connect, read=max(read, 0.05))
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if cursor.seq:
            headers["Last-Event-ID"] = str(cursor.seq)
        try:
            with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                for sse in EventSource(response).iter_sse():
                    failures = 0
                    if sse.event == "metric":
                        row = sse.json()
                        if row["seq"] > cursor.seq:
                            cursor.seq = row["seq"]
                            yield Event("metric", row)
                    elif sse.event == "status":
                        job = sse.json()
                        cursor.status = job["status"]
                        yield Event("status", job)
                        if cursor.status in FINISHED:
                            return
        except SSEError as e:
            raise _NoStream from e
        except APIError as e:
            if e.status_code not in (404, 405):
                raise
            if e.status_code == 404:
                _check_job_exists(http, job_id)
            raise _NoStream from e
        except httpx.ReadTimeout:
            _check_deadline(job_id, cursor, deadline)
            continue  # quiet for STREAM_READ_TIMEOUT: reopen from the last seq
        except (httpx.TransportError, httpx.StreamError):
            pass  # dropped mid-stream: reopen from the last seq
        # the stream closed (or dropped) before the job ended: reconnect, backing off if nothing came
        failures += 1
        if failures >= http.retry.attempts:
            raise ServiceUnavailable(
                f"the event stream of job {job_id} at {http.url} kept closing without events "
                f"({failures} times in a row)"
            )
        http.retry.sleep(http.retry.delay(failures))


def _poll(http: Http, job_id: str, cursor: _Cursor, interval: float, deadline: float | None) -> Iterator[Event]:
    last: dict[str, Any] | None = None
    while True:
        job = http.json("GET", f"/v1/jobs/{job_id}")  # read first: rows stored before it ended follow
        for row in metric_pages(http, job_id, since=cursor.seq):
            cursor.seq = row["seq"]
            yield Event("metric", row)
        if job != last:
            last = job
            cursor.status = job["status"]
            yield Event("status", job)
        if job["status"] in FINISHED:
            return
        _check_deadline(job_id, cursor, deadline)
        http.retry.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
