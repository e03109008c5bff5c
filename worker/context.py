"""Per-process worker resources (settings, database, Celery app), built on first use.

Keyed by process id: a prefork child must not reuse the pooled connections of the parent it was
forked from.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.core.broker import make_celery
from service.core.db import make_engine, make_sessionmaker, transaction
from service.core.jobcore import Lease
from service.core.settings import Settings


@dataclass
class WorkerContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    celery: Celery
    name: str  # host:pid, stored on the jobs this process runs
    lease: Lease  # the liveness this worker promises for the jobs it claims

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session


_contexts: dict[int, WorkerContext] = {}

# Set when this worker process begins a warm shutdown (SIGTERM, Ctrl-C): a running job then stops at
# its next step and goes back to the queue, to resume elsewhere from its last saved state.
shutting_down = threading.Event()


def get_worker_context(celery: Celery | None = None) -> WorkerContext:
    pid = os.getpid()
    ctx = _contexts.get(pid)
    if ctx is None:
        settings = Settings()
        from alignahead.runtime import set_torch_threads  # ALIGNAHEAD_TORCH_THREADS, the library's setting

        set_torch_threads()
        engine = make_engine(settings.database_url, idle_transaction_seconds=settings.stale_after_seconds)
        ctx = WorkerContext(
            settings=settings,
            engine=engine,
            sessions=make_sessionmaker(engine),
            celery=celery or make_celery(settings),
            name=f"{socket.gethostname()}:{pid}",
            lease=Lease(settings.stale_after_seconds, settings.stall_after_seconds),
        )
        for inherited in _contexts.values():  # forked from a parent that had one
            inherited.engine.dispose(close=False)  # leave the parent's connections alone
        _contexts.clear()
        _contexts[pid] = ctx
    return ctx
