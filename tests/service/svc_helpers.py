"""Helpers of the job-service tests: specs, npz files, worker processes, an API client wrapper.

The fixtures that use them are in conftest.py; the backends are described there.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine

from service.core import keys
from service.core.db import make_engine, make_sessionmaker, transaction
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("ALIGNAHEAD_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ALIGNAHEAD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FINISHED = ("succeeded", "failed", "cancelled")

# Short intervals so crash recovery is observable within seconds.
FAST = {
    "heartbeat_seconds": 0.5,
    "stale_after_seconds": 4.0,
    "sweep_interval_seconds": 1.0,
    "queued_grace_seconds": 60.0,
    "state_every_epochs": 1,
    "state_every_seconds": 0.0,
    # tests read what a worker or the test itself just wrote; the poll cache has tests of its own
    "poll_cache_seconds": 0.0,
    "events_poll_seconds": 0.1,  # event streams see worker writes within this long
}


def small_spec(epochs: int = 5, **training: Any) -> dict[str, Any]:
    return {
        "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 200, "num_features": 16}},
        "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 16}],
        "training": {"epochs": epochs, "device": "cpu", **training},
    }


def long_spec(epochs: int = 300, num_nodes: int = 1500, width: int = 32) -> dict[str, Any]:
    return {
        "dataset": {"name": "synthetic", "synthetic": {"num_nodes": num_nodes, "num_features": width}},
        "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": width}],
        "training": {"epochs": epochs, "device": "cpu"},
    }


def npz_bytes(n: int = 60, classes: int = 3, seed: int = 0, **extra: Any) -> bytes:
    """A valid graph in the GNN-benchmark npz layout: a ring plus chords, CSR features."""
    rng = np.random.default_rng(seed)
    rows = np.concatenate([np.arange(n), np.arange(n)])
    cols = np.concatenate([(np.arange(n) + 1) % n, (np.arange(n) + 7) % n])
    adj = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    attr = sp.csr_matrix(rng.random((n, 8)).astype(np.float32))
    arrays = {
        "adj_data": adj.data,
        "adj_indices": adj.indices,
        "adj_indptr": adj.indptr,
        "adj_shape": np.array(adj.shape),
        "attr_data": attr.data,
        "attr_indices": attr.indices,
        "attr_indptr": attr.indptr,
        "attr_shape": np.array(attr.shape),
        "labels": np.arange(n) % classes,
        **extra,
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


TEST_SECRET = "test-secret-not-for-production"
EMPTY_DATA_DIR = tempfile.mkdtemp(prefix="alignahead-test-datasets-")


def settings_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGNAHEAD_")}
    env["ALIGNAHEAD_COMPILE"] = os.environ["ALIGNAHEAD_COMPILE"]  # the tests' kernel policy (conftest), as in-process
    for name, value in settings.model_dump().items():
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        if value is not None:
            env[f"ALIGNAHEAD_{name.upper()}"] = str(value)
    # the library's runtime settings (alignahead.runtime) for the processes tests start: one torch
    # thread (two cores are shared with the test process and whatever else runs), and an empty
    # dataset folder, so a built-in dataset is not found offline rather than read from a user's cache
    env.update(ALIGNAHEAD_TORCH_THREADS="1", OMP_NUM_THREADS="1", ALIGNAHEAD_DATA_DIR=EMPTY_DATA_DIR)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@contextmanager
def temporary_postgres_database(prefix: str) -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database (its SQLAlchemy URL), dropped afterwards."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_key(settings: Settings, tenant: str) -> str:
    """A new API key for `tenant` (created if new), straight in the database."""
    engine = make_engine(settings.database_url)
    try:
        with transaction(make_sessionmaker(engine)) as s:
            return keys.create_key(s, keys.server_secret(settings), tenant)[1]
    finally:
        engine.dispose()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def migrate(database_url: str) -> Config:
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.attributes["database_url"] = database_url
    cfg.attributes["configure_logger"] = False
    command.upgrade(cfg, "head")
    return cfg


class Worker:
    """`celery -A worker.app worker` as a subprocess, its log in a file."""

    def __init__(self, settings: Settings, log_path: Path, name: str, queues: tuple[str, ...] = ("cpu", "gpu")) -> None:
        self.log_path = log_path
        served = ",".join(settings.queue_name(q) for q in queues)
        argv = [sys.executable, "-m", "celery", "-A", "worker.app", "worker", "-Q", served, "--pool", "solo",
                "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "INFO",
                "-n", f"{name}@%h"]  # fmt: skip
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no message handed back; as a crash or the OOM killer would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM: a warm shutdown, as `docker stop` or Ctrl-C does."""
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self._log.close()
        return code

    def stop(self) -> None:
        """At teardown nothing needs a graceful exit (an idle warm shutdown costs seconds on SQL)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if not self._log.closed:
            self._log.close()


@dataclass
class Service:
    """An API client over one backend, with helpers to submit and wait."""

    name: str
    settings: Settings
    client: TestClient
    engine: Engine
    workdir: Path
    workers: list[Worker] = field(default_factory=list)
    key: str = ""  # the key this client sends (set by authorize), for clients of its own that tests make

    def authorize(self, tenant: str = "tests") -> str:
        """Make a key for `tenant` and send it with every request of this client from now on."""
        key = make_key(self.settings, tenant)
        self.client.headers.update(bearer(key))
        self.key = key
        return key

    def authorize_other(self, tenant: str) -> str:
        """A key of another tenant, for requests that pass it explicitly."""
        return make_key(self.settings, tenant)

    def submit(self, spec: dict[str, Any]) -> dict[str, Any]:
        r = self.client.post("/v1/jobs", json=spec)
        assert r.status_code == 201, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, job_id: str, until: Any = FINISHED, timeout: float = 120.0) -> dict[str, Any]:
        """Poll until the job's status is in `until` (or `until(job)` is true)."""
        check = until if callable(until) else (lambda j: j["status"] in until)
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if check(job):
                return job
            if time.monotonic() > deadline:
                logs = "\n".join(w.log()[-3000:] for w in self.workers)
                raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s: {job}\n{logs}")
            time.sleep(0.1)

    def metrics(self, job_id: str, **params: Any) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}/metrics", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, data: bytes, filename: str = "graph.npz") -> Any:
        return self.client.post("/v1/datasets", files={"file": (filename, data, "application/octet-stream")})


@contextmanager
def api_without_worker(name: str, folder: Path, **overrides: Any) -> Iterator[Service]:
    """The API (in-process) over a migrated embedded database in `folder`, with no worker: jobs stay
    queued; authorised for tenant 'tests'."""
    from service.api.app import create_app  # the API's modules only where a test serves it

    settings = embedded_settings(folder, **overrides)
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    try:
        with TestClient(create_app(settings)) as client:
            svc = Service(name, settings, client, engine, folder)
            svc.authorize()
            yield svc
    finally:
        engine.dispose()


def embedded_settings(folder: Path, **overrides: Any) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    values = {
        "database_url": f"sqlite:///{folder / 'alignahead.db'}",
        "broker_url": f"sqla+sqlite:///{folder / 'broker.db'}",
        "queue_prefix": f"t{uuid.uuid4().hex[:8]}.",
        "auth_secret": TEST_SECRET,
        **FAST,
        **overrides,
    }
    return Settings(**values)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiServer:
    """The API as a real uvicorn process on a free port, killable and restartable on the same port."""

    def __init__(self, settings: Settings, log_path: Path, key: str | None = None, workers: int = 1) -> None:
        self.settings, self.log_path, self.workers = settings, log_path, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = bearer(key) if key else {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        argv = [sys.executable, "-m", "uvicorn", "--factory", "service.api.app:app_from_env", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", "warning", "--workers", str(self.workers)]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=settings_env(self.settings), stdout=log,
                                         stderr=subprocess.STDOUT)  # fmt: skip

    def wait_ready(self, timeout: float = 90) -> None:
        import httpx

        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"API not up after {timeout} s:\n{self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: uvicorn shuts down, its worker processes too (SIGKILL would orphan them)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()
        self.wait_ready()

    def client(self, **kwargs: Any) -> Any:
        import httpx

        kwargs.setdefault("timeout", 30)
        return httpx.Client(base_url=self.url, headers=self.headers, **kwargs)


def zip_bomb(unpacked: int, member: str = "attr_matrix.npy") -> bytes:
    """A valid npz whose one member, a float32 .npy of zeros, inflates to about `unpacked` bytes while the
    file stays ~1/1000 of that: built from one deflated block repeated (full flushes reset the
    compressor, so the blocks are identical), in about a second for 2 GB."""
    import struct
    import zlib

    rows = (unpacked - 128) // 4000
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (rows, 1000)})
    head = header.getvalue()
    size = len(head) + rows * 4000
    chunk = bytes(4000 * 16384)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [comp.compress(head), comp.flush(zlib.Z_FULL_FLUSH)]
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    full, rest = divmod(rows * 4000, len(chunk))
    for _ in range(full):
        parts.append(block)
        crc = zlib.crc32(chunk, crc)
    if rest:
        parts.append(comp.compress(chunk[:rest]))
        crc = zlib.crc32(chunk[:rest], crc)
    parts.append(comp.flush())
    data, name = b"".join(parts), member.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name),
                          0, 0, 0, 0, 0, 0) + name  # fmt: skip
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end
