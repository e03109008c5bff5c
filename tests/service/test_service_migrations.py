"""The schema comes from Alembic alone, on SQLite and PostgreSQL, and matches the ORM models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect
from svc_helpers import PG_ADMIN_URL, migrate, temporary_postgres_database

from service.core.db import make_engine
from service.core.models import Base


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


def test_existing_rows_go_to_a_default_tenant(empty_database: str) -> None:
    """Jobs and uploads stored before tenants existed belong to tenant 'default' after the upgrade."""
    from sqlalchemy import text

    cfg = migrate(empty_database)
    command.downgrade(cfg, "0001")
    engine = make_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO jobs (id, status, queue, spec, created_at, attempts, epochs_done, epochs_total)"
                " VALUES ('old', 'succeeded', 'cpu', '{}', '2026-01-01 00:00:00', 1, 3, 3)"
            ))  # fmt: skip
        command.upgrade(cfg, "head")
        with engine.connect() as conn:
            row = conn.execute(text(
                "SELECT t.name, j.worker_losses FROM jobs j JOIN tenants t ON t.id = j.tenant_id WHERE j.id = 'old'"
            )).one()  # fmt: skip
        assert tuple(row) == ("default", 0)
    finally:
        engine.dispose()


def test_the_worker_imports_no_api_internals() -> None:
    import subprocess
    import sys

    code = (
        "import sys, worker.tasks, worker.sweep\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')\n"
        "             or m.startswith('service.api') or m == 'service.core.repository')\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
