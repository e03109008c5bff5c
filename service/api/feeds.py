"""One reader per watched job in each API process, shared by every event stream that watches it.

Why: a stream that read the database itself cost a round of queries per stream every
`events_poll_seconds`, so the database's load grew with the number of watchers (a dashboard left open
by 1,000 users was 3,500 commits a second). Now the first stream on a job starts a `JobFeed`, which
reads the job and its new metric rows once a round and publishes what it read as a `Snapshot`; every
stream on that job (of that tenant) takes its events from the snapshots, and the feed stops when its
last stream goes. A stream costs memory, not queries.

A snapshot holds the job (serialised once for all streams), a version that changes when anything of
the job but its heartbeat changes, and the rows read since the feed started: the latest `WINDOW` of
them, each already encoded as its `metric` event. Rows below the window (a stream resuming from far
back, or one whose client reads slower than the job writes) are read from the database by that stream
itself, a page at a time, until it reaches the window. Every stream picks rows by seq > its own
cursor, so none misses a row or sees one twice.

Each round reads the job first and then every row after the last seq read, so a snapshot whose job has
finished holds every row that job stored.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from sse_starlette import ServerSentEvent

from alignahead.enums import FINISHED
from service.api import views
from service.api.schemas import JobOut
from service.core import repository as repo
from service.core.errors import NotFound
from service.core.models import MetricRow

log = logging.getLogger("alignahead.service")

PAGE = 1000  # metric rows per read
WINDOW = 1000  # rows a feed keeps in memory for its streams
T = TypeVar("T")
Reader = Callable[[Callable[[Session], T]], Awaitable[T]]  # runs a read on a session, off the event loop


def encode(data: str, event: str, seq: int) -> bytes:
    """One SSE event; its `id` is the metric seq a client resumes after."""
    return ServerSentEvent(data, event=event, id=str(seq)).encode()


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    event: bytes  # the row's `metric` event, encoded once for every stream


@dataclass(eq=False)
class Snapshot:
    """What a feed read in one round. `next` is set when a newer snapshot replaces this one."""

    job: JobOut | None  # None: the job is gone
    version: int  # changes when anything of the job but its heartbeat changes
    rows: tuple[Row, ...]  # the rows with base < seq <= top, in seq order
    base: int
    top: int
    next: anyio.Event = field(default_factory=anyio.Event)
    _status: dict[int, bytes] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.job is not None and self.job.status in FINISHED

    def rows_after(self, seq: int) -> tuple[Row, ...]:
        return self.rows[bisect.bisect_right(self.rows, seq, key=lambda r: r.seq) :]

    def status_event(self, seq: int) -> bytes:
        """The job's `status` event with id `seq` (most streams share one cursor: encoded once for them)."""
        event = self._status.get(seq)
        if event is None:
            assert self.job is not None
            data = self.job.__pydantic_serializer__.to_json(self.job).decode()
            event = self._status[seq] = encode(data, "status", seq)
        return event


def read_start(s: Session, tenant: str, job_id: str) -> tuple[JobOut | None, int]:
    """The job and the last seq it stored so far: where a new feed starts."""
    try:
        job = views.job_detail(repo.get_job(s, tenant, job_id))
    except NotFound:
        return None, 0
    return job, s.scalar(select(func.coalesce(func.max(MetricRow.id), 0)).where(MetricRow.job_id == job_id)) or 0


def read_round(s: Session, tenant: str, job_id: str, since: int) -> tuple[JobOut | None, list[Row]]:
    """The job, then every row it stored after `since` (the job first: a finished job's rows are all there)."""
    try:
        job = views.job_detail(repo.get_job(s, tenant, job_id))
        rows: list[Row] = []
        while True:
            page = read_page(s, tenant, job_id, since)
            rows += page
            if len(page) < PAGE:
                return job, rows
            since = page[-1].seq
    except NotFound:
        return None, []


def read_page(s: Session, tenant: str, job_id: str, since: int) -> list[Row]:
    """Up to PAGE rows after `since`, encoded (NotFound once the job is gone)."""
    stored = repo.list_metrics(s, tenant, job_id, since=since, student=None, limit=PAGE)
    page = views.metric_page(job_id, stored, since)
    return [Row(r.seq, encode(r.model_dump_json(), "metric", r.seq)) for r in page.rows]


class JobFeed:
    """Reads one job every `interval` seconds (sooner when poked) for all the streams that watch it."""

    def __init__(self, reader: Reader, tenant: str, job_id: str, interval: float) -> None:
        self.reader, self.tenant, self.job_id, self.interval = reader, tenant, job_id, interval
        self.watchers = 0
        self.rounds = 0  # reads so far: what the tests count
        self.latest: Snapshot | None = None
        self._first = anyio.Event()
        self._wake = anyio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state: dict[str, Any] | None = None  # the job as last read, but its heartbeat
        self._versions = 0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"feed {self.job_id}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def poke(self) -> None:
        """Read now (this process just changed the job); callable from any thread (routes run in the pool)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(lambda: self._wake.set())

    async def first(self) -> Snapshot:
        await self._first.wait()
        assert self.latest is not None
        return self.latest

    async def read_page(self, since: int) -> list[Row] | None:
        """A stream's own read of rows below the window; None once the job is gone."""
        try:
            return await self.reader(lambda s: read_page(s, self.tenant, self.job_id, since))
        except NotFound:
            return None

    async def _run(self) -> None:
        while self.latest is None:
            try:
                job, top = await self.reader(lambda s: read_start(s, self.tenant, self.job_id))
            except Exception:  # the database may be away for a moment: the streams wait for the next round
                log.warning("event feed of job %s: read failed; retrying", self.job_id, exc_info=True)
                await self._pause()
                continue
            self.rounds += 1
            self._publish(Snapshot(job, self._version(job), (), top, top))
        while self.latest.job is not None and not self.latest.finished:  # then nothing more will come
            await self._pause()
            since = self.latest.top
            try:
                job, rows = await self.reader(lambda s: read_round(s, self.tenant, self.job_id, since))  # noqa: B023
            except Exception:
                log.warning("event feed of job %s: read failed; retrying", self.job_id, exc_info=True)
                continue
            self.rounds += 1
            self._publish(self._advance(self.latest, job, self._version(job), rows))

    async def _pause(self) -> None:
        with anyio.move_on_after(self.interval):
            await self._wake.wait()
        self._wake = anyio.Event()

    def _version(self, job: JobOut | None) -> int:
        state = None if job is None else job.model_dump(exclude={"heartbeat_at"})
        if state != self._state or self._versions == 0:
            self._state, self._versions = state, self._versions + 1
        return self._versions

    @staticmethod
    def _advance(last: Snapshot, job: JobOut | None, version: int, new: list[Row]) -> Snapshot:
        rows, base = last.rows + tuple(new), last.base
        if len(rows) > WINDOW:
            base, rows = rows[-WINDOW - 1].seq, rows[-WINDOW:]
        return Snapshot(job, version, rows, base, new[-1].seq if new else last.top)

    def _publish(self, snapshot: Snapshot) -> None:
        last, self.latest = self.latest, snapshot
        if last is None:
            self._first.set()
        else:
            last.next.set()


class Feeds:
    """The feeds of one API process, by (tenant, job id)."""

    def __init__(self, reader: Reader, interval: float) -> None:
        self.reader, self.interval = reader, interval
        self._feeds: dict[tuple[str, str], JobFeed] = {}

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self) -> Iterator[JobFeed]:
        return iter(list(self._feeds.values()))

    def get(self, tenant: str, job_id: str) -> JobFeed | None:
        return self._feeds.get((tenant, job_id))

    def poke(self, tenant: str, job_id: str) -> None:
        feed = self._feeds.get((tenant, job_id))
        if feed is not None:
            feed.poke()

    @asynccontextmanager
    async def watch(self, tenant: str, job_id: str) -> AsyncIterator[JobFeed]:
        """The job's feed, started by its first watcher and stopped when its last one leaves."""
        key = (tenant, job_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = JobFeed(self.reader, tenant, job_id, self.interval)
            feed.start()
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0:
                feed.stop()
                if self._feeds.get(key) is feed:
                    del self._feeds[key]
