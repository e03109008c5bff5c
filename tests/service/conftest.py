"""Fixtures for the job service: real databases, real brokers, real Celery worker processes.

Two backends, each a session-scoped fixture parameter so that one worker serves all its tests:
- embedded: SQLite job database + kombu's SQLAlchemy transport on SQLite, in a temporary folder;
- postgres: a fresh PostgreSQL database per session + Redis with a unique key prefix (skipped, with
  the reason, only when PostgreSQL or Redis cannot be reached).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from svc_helpers import (
    FAST,
    PG_ADMIN_URL,
    REDIS_URL,
    TEST_SECRET,
    Service,
    Worker,
    api_without_worker,
    embedded_settings,
    migrate,
    temporary_postgres_database,
)

from service.api.app import create_app
from service.core.db import make_engine
from service.core.settings import Settings

# shared fixtures serve many tests' submissions; quotas are tested on apps of their own
ROOMY = {"max_active_jobs": 10_000, "max_submissions_per_minute": 10_000}


def _postgres_and_redis_or_skip() -> None:
    import psycopg
    import redis

    try:
        url = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
        psycopg.connect(url, connect_timeout=3).close()
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({type(e).__name__}: {e}); CI provides it")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as e:
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({type(e).__name__}: {e}); CI provides it")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The test process trains too (reference runs); keep it off the worker's core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database for this session, dropped afterwards."""
    _postgres_and_redis_or_skip()
    with temporary_postgres_database("alignahead_test") as url:
        yield url


def _redis_cleanup(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session", params=["embedded", "postgres"])
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Migrated database + broker + one worker + an in-process API client, for the whole session."""
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "embedded":
        settings = embedded_settings(folder, **ROOMY)
        cleanup = None
    else:
        database_url = request.getfixturevalue("postgres_database")
        prefix = f"t{uuid.uuid4().hex[:8]}."
        settings = Settings(
            database_url=database_url,
            broker_url=REDIS_URL,
            queue_prefix=prefix,
            auth_secret=TEST_SECRET,
            **FAST,
            **ROOMY,
        )
        cleanup = prefix
    migrate(settings.database_url)
    worker = Worker(settings, folder / "worker.log", f"w-{request.param}")
    engine = make_engine(settings.database_url)
    try:
        worker.wait_ready()
        with TestClient(create_app(settings)) as client:
            svc = Service(request.param, settings, client, engine, folder, [worker])
            svc.authorize()
            yield svc
    finally:
        worker.stop()
        engine.dispose()
        if cleanup:
            _redis_cleanup(cleanup)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The API over a migrated embedded database with no worker: jobs stay queued."""
    with api_without_worker("api", tmp_path_factory.mktemp("api"), max_upload_bytes=50_000, **ROOMY) as svc:
        yield svc
