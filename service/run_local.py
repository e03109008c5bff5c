"""One command for a laptop: migrate, start one Celery worker, serve the API; Ctrl-C stops both.

    python -m service.run_local [--host 127.0.0.1] [--port 8000]     (make run [HOST=...] [PORT=...])

Uses the same ALIGNAHEAD_* settings as everything else; the defaults keep the database and the
broker in SQLite files under ./var, so nothing else needs to run. On first start it creates an API
key for tenant 'local' and keeps it in ./var/local-api-key (ALIGNAHEAD_LOCAL_KEY_FILE).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import uvicorn
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import make_url

from alignahead.enums import Queue
from service.api.app import create_app
from service.core import keys
from service.core.broker import declare_queues, is_sqla_broker, make_celery
from service.core.db import make_engine, make_sessionmaker, transaction
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("alignahead.run_local")


def upgrade_database(settings: Settings) -> None:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = settings.database_url
    command.upgrade(cfg, "head")


def worker_command(settings: Settings) -> list[str]:
    queues = ",".join(settings.queue_name(q) for q in Queue)
    argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", queues,
            "--pool", "solo", "--loglevel", "INFO", "-n", "local@%h"]  # fmt: skip
    if is_sqla_broker(settings.broker_url):  # no fanout on the SQL transport
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    return argv


def _absolute_sqlite(url: str) -> str:
    """The same URL with an absolute SQLite path, so the API and the worker open the same file."""
    prefix, rest = url.split("+", 1) if is_sqla_broker(url) else ("", url)
    parsed = make_url(rest)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    path = Path(parsed.database).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    absolute = parsed.set(database=str(path)).render_as_string(hide_password=False)
    return f"{prefix}+{absolute}" if prefix else absolute


def ensure_local_key(settings: Settings) -> Path | None:
    """Tenant 'local' and a key for it, made once and kept (mode 0600) in settings.local_key_file."""
    if settings.auth_disabled:
        return None
    path = Path(settings.local_key_file)
    if path.is_file() and path.read_text().strip():
        return path
    secret = keys.server_secret(settings)
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_sessionmaker(engine)) as s:
            _, key = keys.create_key(s, secret, keys.LOCAL_TENANT, label="made by make run")
    finally:
        engine.dispose()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return path


def stop(worker: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    if worker.poll() is not None:
        return
    worker.terminate()  # warm shutdown: a running job finishes its step and is re-sent later
    try:
        worker.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=settings.api_host)
    parser.add_argument("--port", type=int, default=settings.api_port)
    parser.add_argument("--no-worker", action="store_true", help="serve the API only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    settings = settings.model_copy(
        update={
            "database_url": _absolute_sqlite(settings.database_url),
            "broker_url": _absolute_sqlite(settings.broker_url),
        }
    )
    upgrade_database(settings)
    declare_queues(make_celery(settings), settings)
    key_file = ensure_local_key(settings)
    # printed, not logged: Alembic's logging configuration has raised the root level by now
    if key_file is None:
        print("ALIGNAHEAD_AUTH_DISABLED: the API answers anyone who can reach it, without a key", flush=True)
    else:
        print(f"API key of tenant 'local' kept in {key_file}; send it as: "
              f'-H "Authorization: Bearer $(cat {key_file})", or for the client and the CLI: '
              f"export ALIGNAHEAD_API_KEY=$(cat {key_file})", flush=True)  # fmt: skip
    worker = None
    if not args.no_worker:
        env = {
            **os.environ,
            "DGLBACKEND": "pytorch",
            "ALIGNAHEAD_DATABASE_URL": settings.database_url,
            "ALIGNAHEAD_BROKER_URL": settings.broker_url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        worker = subprocess.Popen(worker_command(settings), env=env)
        print(f"worker started (pid {worker.pid})", flush=True)
    url = f"http://{args.host}:{args.port}"
    print(f"dashboard {url}/, API docs {url}/docs; for the CLI and the client: export ALIGNAHEAD_URL={url}",
          flush=True)  # fmt: skip
    # uvicorn re-raises the SIGTERM it shut down on: as SystemExit here, so that the worker is stopped too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # log_format json: uvicorn leaves its loggers to the root's handler, which create_app made JSON
        log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_config=log_config)
    finally:
        if worker is not None:
            stop(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
