"""What every route needs, built once per app from Settings and reached through a dependency."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
from celery import Celery
from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.auth import KeyCache
from service.api.feeds import Feeds
from service.api.polling import PollCache
from service.core import keys
from service.core.broker import make_celery
from service.core.db import make_engine, make_sessionmaker, transaction
from service.core.settings import Settings

if TYPE_CHECKING:
    from service.api.monitoring import ApiMetrics

T = TypeVar("T")
HOT_THREADS = 4  # threads for the hot reads; a read takes a millisecond or two: thousands a second


def hot_engine(database_url: str, idle_transaction_seconds: float) -> Engine | None:
    """PostgreSQL: a pool of its own for the hot reads, one connection per hot thread, without the ping
    that the main engine sends before each use (half the round trips of a poll); a read that finds its
    connection dead fails, and its caller falls back (the routes answer the poll, the feed reads again
    next round). None elsewhere (SQLite has no server to ping)."""
    if not database_url.startswith("postgresql"):
        return None
    return make_engine(database_url, idle_transaction_seconds=idle_transaction_seconds, pool_pre_ping=False,
                       pool_size=HOT_THREADS, max_overflow=0)  # fmt: skip


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    readers: sessionmaker[Session]  # autocommit: a read is one round trip, no BEGIN/COMMIT around it
    celery: Celery
    secret: bytes  # the server secret API keys are hashed under (empty when auth is disabled)
    key_cache: KeyCache
    poll_cache: PollCache
    hot: Engine | None = None  # what `reading` uses (None: `readers`)
    local_tenant_id: str = field(default="")  # every request's tenant when auth is disabled
    event_streams: int = 0  # open GET /v1/jobs/{id}/events streams of this process
    metrics: ApiMetrics | None = None  # GET /metrics, when the operator's token is set
    feeds: Feeds = field(init=False)  # what the streams read: one reader per watched job

    def __post_init__(self) -> None:
        self.feeds = Feeds(self.reading, self.settings.events_poll_seconds)
        self._hot_threads: anyio.CapacityLimiter | None = None  # made on first use, in the event loop
        self._hot_readers = self.readers
        if self.hot is not None:
            self._hot_readers = make_sessionmaker(self.hot.execution_options(isolation_level="AUTOCOMMIT"))

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        idle = settings.stale_after_seconds
        engine = make_engine(settings.database_url, idle_transaction_seconds=idle)
        secret = b"" if settings.auth_disabled else keys.server_secret(settings)
        readers = make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
        return cls(
            settings,
            engine,
            make_sessionmaker(engine),
            readers,
            make_celery(settings),
            secret,
            KeyCache(settings.auth_cache_seconds),
            PollCache(settings.poll_cache_seconds),
            hot_engine(settings.database_url, idle),
        )

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """For requests that only read: each statement sees committed data, without a transaction."""
        with self.readers() as session:
            yield session

    async def reading(self, fn: Callable[[Session], T]) -> T:
        """`fn(session)` on a read session (see `read`), for the hot reads that the event loop serves
        itself (the polling fast path, the event feeds): in at most HOT_THREADS threads of their own,
        so that however many polls miss the cache they queue on the loop, cheaply, instead of filling
        the thread pool and taking the GIL from the requests that run there (submissions)."""
        if self._hot_threads is None:
            self._hot_threads = anyio.CapacityLimiter(HOT_THREADS)
        readers = self._hot_readers

        def run() -> T:
            with readers() as s:
                return fn(s)

        return await anyio.to_thread.run_sync(run, limiter=self._hot_threads)

    def close(self) -> None:
        if self.hot is not None:
            self.hot.dispose()
        self.engine.dispose()
        self.celery.close()


def get_context(request: Request) -> AppContext:
    return request.app.state.context
