"""What every route needs, built once per app from Settings and reached through a dependency."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from celery import Celery
from fastapi import Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.broker import make_celery
from service.db import make_engine, make_sessionmaker, transaction
from service.settings import Settings


@dataclass
class AppContext:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    celery: Celery

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        engine = make_engine(settings.database_url)
        return cls(settings, engine, make_sessionmaker(engine), make_celery(settings))

    @contextmanager
    def tx(self) -> Iterator[Session]:
        with transaction(self.sessions) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()
        self.celery.close()


def get_context(request: Request) -> AppContext:
    return request.app.state.context
