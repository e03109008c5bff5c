"""The schema comes from Alembic alone, on SQLite and PostgreSQL, and matches the ORM models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect
from svc_helpers import PG_ADMIN_URL, migrate, temporary_postgres_database

from service.db import make_engine
from service.models import Base


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    import psycopg

    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    try:
        psycopg.connect(admin, connect_timeout=3).close()
    except Exception as e:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} ({type(e).__name__}: {e}); CI provides it")
    with temporary_postgres_database("alignahead_mig") as url:
        yield url


def test_upgrade_head_builds_the_models_schema(empty_database: str) -> None:
    cfg = migrate(empty_database)
    command.check(cfg)  # raises if the models and the migrated schema differ
    engine = make_engine(empty_database)
    try:
        tables = set(inspect(engine).get_table_names())
        assert set(Base.metadata.tables) <= tables
        indexes = {i["name"] for i in inspect(engine).get_indexes("metrics")}
        assert "ix_metrics_job_seq" in indexes
        assert "ix_jobs_status_created" in {i["name"] for i in inspect(engine).get_indexes("jobs")}
    finally:
        engine.dispose()
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")  # and back: the downgrade is real
