"""Engine and session factory, shared by the API and the workers, and the database's clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, DateTime, Engine, Float, TypeDecorator, create_engine, event, literal, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.functions import FunctionElement

SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, *, idle_transaction_seconds: float | None = None, **kwargs: Any) -> Engine:
    """An engine tuned for its backend.

    SQLite: the API and several workers write the same file at once, so WAL (readers never block the
    writer) and a long busy_timeout (writers queue instead of failing with 'database is locked').
    PostgreSQL: `idle_transaction_seconds` ends a session that sits in an open transaction that long,
    so a frozen process (SIGSTOP, a hung driver) cannot hold a job's row lock and stall everyone else.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kwargs.setdefault("pool_pre_ping", True)  # a restarted PostgreSQL must not cost the next request
    if parsed.get_backend_name() == "postgresql":
        connect_args: dict[str, Any] = {"connect_timeout": 10}
        if idle_transaction_seconds:
            ms = max(1000, int(idle_transaction_seconds * 1000))
            connect_args["options"] = f"-c idle_in_transaction_session_timeout={ms}"
        kwargs.setdefault("connect_args", connect_args)
    return create_engine(url, **kwargs)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects returned by the repository stay readable after commit
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any exception."""
    with factory() as session, session.begin():
        yield session


# --- the database's clock ------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite keeps no zone), always handed back timezone-aware."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class db_now(FunctionElement[datetime]):  # noqa: N801 - reads as the SQL function it stands for
    """The database server's current UTC time, shifted by `seconds` (a number or a SQL expression).

    Every liveness and deadline decision compares against this, never against a process's own clock:
    the API and workers on several machines then judge a heartbeat by one clock. PostgreSQL: now()
    (the transaction's start; our transactions are short); SQLite: 'now' to the millisecond, rendered
    in the same text format as SQLAlchemy's bound datetimes so that comparisons stay exact.
    """

    type = UTCDateTime()
    inherit_cache = True
    name = "db_now"

    def __init__(self, seconds: float | ColumnElement[Any] | Any = 0.0) -> None:
        offset = literal(float(seconds), Float()) if isinstance(seconds, int | float) else seconds
        super().__init__(offset)


@compiles(db_now, "postgresql")
def _now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(list(element.clauses)[0], **kw)
    return f"((now() AT TIME ZONE 'utc') + make_interval(secs => CAST({offset} AS double precision)))"


@compiles(db_now, "sqlite")
def _now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    offset = compiler.process(list(element.clauses)[0], **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', {offset}))"


def db_time(session: Session) -> datetime:
    """The database's clock, as a value: for rows inserted with timestamps the API shows and pages by."""
    return session.execute(select(db_now())).scalar_one()
