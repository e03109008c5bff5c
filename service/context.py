"""What every route needs, built once per app from Settings and reached through a dependency."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from celery import Celery
from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service import keys
from service.auth import KeyCache
from service.broker import make_celery
from service.db import make_engine, make_sessionmaker, transaction
from service.polling import PollCache
from service.settings import Settings


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
    local_tenant_id: str = field(default="")  # every request's tenant when auth is disabled
    event_streams: int = 0  # open GET /v1/jobs/{id}/events streams of this process (each polls the database)

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        engine = make_engine(settings.database_url, idle_transaction_seconds=settings.stale_after_seconds)
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

    def close(self) -> None:
        self.engine.dispose()
        self.celery.close()


def get_context(request: Request) -> AppContext:
    return request.app.state.context
